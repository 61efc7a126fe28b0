"""Finding attention in a Dynamo FX graph.

Every `scaled_dot_product_attention` call and every softmax is a candidate site. A candidate
becomes a `Site` when the graph around it is softmax attention attncc states exactly:

    sdpa(q, k, v, attn_mask, is_causal, scale, enable_gqa), dropout_p = 0
    matmul(softmax(matmul(q, k^T) * c [+ mask | masked_fill]), v)   (dropout off, casts)

with GQA's repeat_kv (`k[:, :, None].expand(...).reshape(...)`, or repeat_interleave) read
back as shared key/value heads, and masks computed from positions read back as predicates
(positions.py). Otherwise it is `Rejected`, with the reason, and stays PyTorch's.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import fx

from attncc.frontends.torch.graph_ops import NodeOp, describe_node, example, node_op
from attncc.frontends.torch.positions import (
    NotPositional,
    additive_predicate,
    boolean_predicate,
)
from attncc.frontends.torch.reference import visible
from attncc.frontends.torch.spec import AttentionSpec, MaskTensor
from attncc.ir import Call, Expr

_FLOATS = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
_HIDDEN_FILL = -1e30
_ROW_CHECK_LIMIT = 1 << 24
"""Masks with a finite fill are proven to hide no whole query row up to this many points."""


@dataclass(frozen=True)
class Site:
    """An attention to replace: `output` becomes attention(query, key, value, mask)."""

    output: fx.Node
    query: fx.Node
    key: fx.Node
    value: fx.Node
    mask: fx.Node | None
    spec: AttentionSpec
    where: str
    head_dim: int
    value_dim: int


@dataclass(frozen=True)
class Rejected:
    """A softmax or SDPA call left to PyTorch, and why."""

    node: fx.Node
    where: str
    reason: str


class _Mismatch(Exception):
    """The graph around a candidate is not an attention attncc states; says why."""


def find_sites(graph: fx.Graph) -> list[Site | Rejected]:
    """Every candidate in `graph`, in graph order."""
    found: list[Site | Rejected] = []
    for node in graph.nodes:
        op = node_op(node)
        if op is None or op.name not in ("sdpa", "softmax"):
            continue
        try:
            found.append(_sdpa(node, op) if op.name == "sdpa" else _decomposed(node, op))
        except _Mismatch as reason:
            found.append(Rejected(node, describe_node(node), str(reason)))
    return found


def _sdpa(node: fx.Node, op: NodeOp) -> Site:
    q, k, v = op.args[:3]
    mask = op.arg(3, "attn_mask")
    if op.arg(4, "dropout_p", 0.0) != 0.0:
        raise _Mismatch(f"dropout_p={op.arg(4, 'dropout_p')}: attncc has no attention dropout")
    causal = op.arg(5, "is_causal", False)
    scale = op.arg(6, "scale")
    if not isinstance(causal, bool) or not (scale is None or isinstance(scale, int | float)):
        raise _Mismatch("is_causal or scale is not a constant")
    spec = AttentionSpec(scale=None if scale is None else float(scale), causal=causal)
    return _site(node, q, k, v, spec, mask, additive=None)


def _decomposed(softmax: fx.Node, op: NodeOp) -> Site:
    scores_in = op.args[0]
    shape = _shape(scores_in, "the softmax input")
    dim = op.arg(1, "dim")
    if dim not in (-1, len(shape) - 1):
        raise _Mismatch(f"softmax over dim {dim}, not the last (key) dim")
    output, v = _probabilities_times_v(softmax)
    scores, scale, mask, masked_fill, fill = _peel_scores(scores_in)
    product = node_op(scores)
    if product is None or product.name != "matmul":
        raise _Mismatch("the scores are not a matrix product")
    q, k_transposed = product.args[:2]
    q, scale = _prescaled(q, scale)
    k = _untransposed(k_transposed)
    spec = AttentionSpec(scale=scale)
    if masked_fill is not None:
        return _site(output, q, k, v, spec, masked_fill, additive=False, fill=fill)
    return _site(output, q, k, v, spec, mask, additive=True)


def _probabilities_times_v(softmax: fx.Node) -> tuple[fx.Node, Any]:
    """The matmul(probabilities, v) the softmax feeds (through eval dropout and casts), and
    its v."""
    node = softmax
    while True:
        users = list(node.users)
        if len(users) != 1:
            raise _Mismatch(
                f"the attention probabilities ({node.name}) are used "
                f"{'nowhere' if not users else 'outside the attention (output_attentions?)'}"
            )
        (user,) = users
        op = node_op(user)
        if op is None:
            raise _Mismatch(f"the probabilities feed {user.name} ({user.target})")
        if op.name == "matmul" and op.args[0] is node:
            return user, op.args[1]
        if op.name == "dropout":
            p, training = op.arg(1, "p", 0.5), op.arg(2, "training", True)
            if p != 0 and training:
                raise _Mismatch(f"dropout p={p} in training mode on the probabilities")
        elif op.name != "cast" or not _float_cast(op):
            raise _Mismatch(f"the probabilities feed {op.name} ({user.name})")
        node = user


def _float_cast(op: NodeOp) -> bool:
    targets = [*op.args[1:], *op.kwargs.values()]
    return all(not isinstance(t, torch.dtype) or t in _FLOATS for t in targets)


def _peel_scores(
    node: Any,
) -> tuple[fx.Node, float, fx.Node | None, fx.Node | None, float]:
    """Peel scale factors and one mask off the softmax input: the q k^T node, the product of
    the constant factors, an additive mask, and a masked_fill condition (hidden where true)
    with its fill."""
    scale, mask, hidden, fill = 1.0, None, None, float("-inf")
    while isinstance(node, fx.Node):
        op = node_op(node)
        if op is None:
            break
        a, b = (*op.args, None, None)[:2]
        if op.name in ("mul", "div") and isinstance(b, int | float):
            scale = scale * b if op.name == "mul" else scale / b
        elif op.name == "mul" and isinstance(a, int | float):
            scale, a = scale * a, b
        elif op.name in ("add", "masked_fill") and mask is None and hidden is None:
            if scale != 1.0:
                raise _Mismatch("the mask is added before the scale: attncc would scale it too")
            if op.name == "add":
                a, mask = (a, b) if _leads_to_matmul(a) else (b, a)
            else:
                fill = op.arg(2, "value")
                if not isinstance(fill, int | float) or fill > _HIDDEN_FILL:
                    raise _Mismatch(f"masked_fill with {fill!r}, not -inf or finfo.min")
                hidden = b
        elif op.name != "cast" or not _float_cast(op):
            break
        node = a
    if not isinstance(node, fx.Node):
        raise _Mismatch("the scores are a constant")
    return node, scale, mask, hidden, fill


def _leads_to_matmul(node: Any) -> bool:
    while isinstance(node, fx.Node):
        op = node_op(node)
        if op is None:
            return False
        if op.name == "matmul":
            return True
        if op.name not in ("mul", "div", "cast"):
            return False
        node = op.args[0] if isinstance(op.args[0], fx.Node) else op.args[1]
    return False


def _prescaled(q: Any, scale: float) -> tuple[Any, float]:
    """q * c (queries scaled before the product) as q with the scale c."""
    op = node_op(q) if isinstance(q, fx.Node) else None
    if op is not None and op.name == "mul":
        a, b = op.args[:2]
        if isinstance(b, int | float):
            return a, scale * b
        if isinstance(a, int | float):
            return b, scale * a
    return q, scale


def _untransposed(node: Any) -> Any:
    op = node_op(node) if isinstance(node, fx.Node) else None
    shape = _shape(node, "the keys")
    last = {len(shape) - 1, -1}, {len(shape) - 2, -2}
    if op is not None and op.name == "transpose":
        dims = op.args[1:3]
        if len(dims) == 2 and (
            (dims[0] in last[0] and dims[1] in last[1])
            or (dims[0] in last[1] and dims[1] in last[0])
        ):
            return op.args[0]
    if op is not None and op.name == "permute":
        order = op.args[1] if isinstance(op.args[1], tuple | list) else op.args[1:]
        if list(order) == [*range(len(shape) - 2), len(shape) - 1, len(shape) - 2]:
            return op.args[0]
    raise _Mismatch("the scores are not q @ k.transpose(-2, -1)")


def _repeated_kv(node: Any) -> tuple[Any, int | None]:
    """repeat_kv's k[:, :, None].expand(B, G, R, M, D).reshape(B, G*R, M, D), or
    repeat_interleave(R, dim=1), as the key/value heads and the group size R."""
    op = node_op(node) if isinstance(node, fx.Node) else None
    if op is None:
        return node, None
    if op.name == "repeat_interleave":
        repeats, dim = op.arg(1, "repeats"), op.arg(2, "dim")
        if isinstance(repeats, int) and dim in (1, -3):
            return op.args[0], repeats
    if op.name != "reshape":
        return node, None
    expanded = op.args[0]
    expand = node_op(expanded) if isinstance(expanded, fx.Node) else None
    if expand is None or expand.name != "expand":
        return node, None
    inserted = expand.args[0]
    getitem = node_op(inserted) if isinstance(inserted, fx.Node) else None
    whole = slice(None, None, None)
    if getitem is None or getitem.name != "getitem":
        return node, None
    if getitem.args[1] != (whole, whole, None, whole, whole):
        return node, None
    shape = _shape(expanded, "the repeated keys")
    return getitem.args[0], int(shape[2])


def _site(
    output: fx.Node,
    q: Any,
    k: Any,
    v: Any,
    spec: AttentionSpec,
    mask: Any,
    *,
    additive: bool | None,
    fill: float = float("-inf"),
) -> Site:
    k, k_group = _repeated_kv(k)
    v, v_group = _repeated_kv(v)
    if k_group != v_group:
        raise _Mismatch("keys and values are repeated differently")
    qs, ks, vs = (_shape(t, name) for t, name in ((q, "q"), (k, "k"), (v, "v")))
    if not len(qs) == len(ks) == len(vs) == 4:
        raise _Mismatch(f"q, k, v have shapes {qs}, {ks}, {vs}: attncc takes [B, H, L, E]")
    dtypes = {_dtype(t) for t in (q, k, v)}
    if len(dtypes) != 1 or not dtypes <= set(_FLOATS):
        raise _Mismatch(f"q, k, v have dtypes {sorted(map(str, dtypes))}")
    if ks[:2] != vs[:2] or ks[2] != vs[2] or ks[3] != qs[3] or qs[0] != ks[0]:
        raise _Mismatch(f"q, k, v shapes {qs}, {ks}, {vs} do not fit together")
    heads, kv_heads = int(qs[1]), int(ks[1])
    group = k_group or (heads // kv_heads if heads != kv_heads else None)
    if heads != kv_heads * (k_group or 1) and heads % kv_heads:
        raise _Mismatch(f"{heads} query heads cannot share {kv_heads} key/value heads")
    spec = replace(spec, gqa_group=group)
    scores = (int(qs[0]), heads, int(qs[2]), int(ks[2]))
    spec, mask = _with_mask(spec, mask, additive, fill, scores)
    return Site(output, q, k, v, mask, spec, describe_node(output), int(qs[3]), int(vs[3]))


def _with_mask(
    spec: AttentionSpec,
    mask: Any,
    additive: bool | None,
    masked_fill: float,
    scores: tuple[int, int, int, int],
) -> tuple[AttentionSpec, fx.Node | None]:
    """`spec` with the mask as a predicate when positions compute it, else as a tensor
    input. `additive` None means its dtype decides (SDPA's attn_mask); False means a
    masked_fill condition (hidden where true) with fill `masked_fill`."""
    if mask is None:
        return spec, None
    shape = _shape(mask, "the mask")
    if len(shape) > 4 or any(
        n not in (1, full) for n, full in zip(reversed(shape), reversed(scores), strict=False)
    ):
        raise _Mismatch(f"a mask of shape {tuple(shape)} does not broadcast to {scores}")
    boolean = _dtype(mask) == torch.bool
    queries, keys = scores[2], scores[3]
    predicate: Expr
    try:
        if additive is False:
            # masked_fill hides where its condition is true.
            hidden = boolean_predicate(mask, queries, keys)
            predicate, fill = _negated(hidden), masked_fill
        elif boolean:
            predicate, fill = boolean_predicate(mask, queries, keys), float("-inf")
        else:
            predicate, fill = additive_predicate(mask, queries, keys)
        candidate = replace(spec, predicate=predicate)
        if fill != float("-inf") and not _every_row_sees_a_key(candidate, queries, keys):
            raise NotPositional("the mask hides whole rows, which a finite fill averages over")
        return candidate, None
    except NotPositional:
        if additive is False:
            raise _Mismatch("masked_fill with a data condition") from None
        kind = MaskTensor.BOOLEAN if boolean else MaskTensor.ADDITIVE
        return replace(spec, mask_tensor=kind), mask


def _negated(expr: Expr) -> Expr:
    # masked_fill(~causal, -inf) hides where not causal: visible where causal.
    if isinstance(expr, Call) and expr.op == "not":
        return expr.args[0]
    return Call("not", (expr,))


def _every_row_sees_a_key(spec: AttentionSpec, queries: int, keys: int) -> bool:
    """Whether no query row is wholly hidden: then a fill of finfo.min (HF's choice) and
    -inf give the same softmax, and the predicate may stand for the additive mask."""
    if queries * keys > _ROW_CHECK_LIMIT:
        return False
    keep = visible(spec, queries, keys, torch.device("cpu"))
    return keep is None or bool(keep.any(dim=-1).all())


def _shape(node: Any, what: str) -> tuple[int, ...]:
    value = example(node)
    if value is None:
        raise _Mismatch(f"{what} has no recorded shape")
    return tuple(value.shape)


def _dtype(node: Any) -> torch.dtype | None:
    value = example(node)
    return value.dtype if value is not None else None
