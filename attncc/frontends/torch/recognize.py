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
from attncc.frontends.torch.position_masks import (
    HIDING_FILL,
    MaskKind,
    MaskPredicate,
    mask_predicate,
    rows_without_keys,
)
from attncc.frontends.torch.positions import NotPositional, symbolic
from attncc.frontends.torch.reference import position_mask
from attncc.frontends.torch.spec import AttentionSpec, EmptyRow, MaskTensor

_FLOATS = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


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
    head_dim: int | None
    value_dim: int | None


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
        except _Mismatch as mismatch:
            found.append(Rejected(node, describe_node(node), str(mismatch)))
        except Exception as error:
            # A graph shape no rule foresaw is a bug in attncc, not in the model: the site
            # stays PyTorch's, and the reason says so.
            why = f"internal error in attncc: {type(error).__name__}: {error}"
            found.append(Rejected(node, describe_node(node), why))
    return found


def _sdpa(node: fx.Node, op: NodeOp) -> Site:
    q, k, v = op.arg(0, "query"), op.arg(1, "key"), op.arg(2, "value")
    mask = op.arg(3, "attn_mask")
    if op.arg(4, "dropout_p", 0.0) != 0.0:
        raise _Mismatch(f"dropout_p={op.arg(4, 'dropout_p')}: attncc has no attention dropout")
    causal = op.arg(5, "is_causal", False)
    scale = op.arg(6, "scale")
    if not isinstance(causal, bool) or not (scale is None or isinstance(scale, int | float)):
        raise _Mismatch("is_causal or scale is not a constant")
    if op.arg(7, "enable_gqa", False) not in (True, False):
        raise _Mismatch("enable_gqa is not a constant")
    spec = AttentionSpec(scale=None if scale is None else float(scale), causal=causal)
    kind = MaskKind.VISIBLE if _dtype(mask) == torch.bool else MaskKind.ADDITIVE
    return _site(node, q, k, v, spec, mask, kind)


def _decomposed(softmax: fx.Node, op: NodeOp) -> Site:
    scores_in = op.arg(0, "input")
    shape = _shape(scores_in, "the softmax input")
    dim = op.arg(1, "dim")
    if dim not in (-1, len(shape) - 1):
        raise _Mismatch(f"softmax over dim {dim}, not the last (key) dim")
    output, v = _probabilities_times_v(softmax)
    scores, scale, mask = _peel_scores(scores_in)
    product = node_op(scores)
    if product is None or product.name != "matmul":
        raise _Mismatch("the scores are not a matrix product")
    q, k_transposed = _operands(product)
    q, scale = _prescaled(q, scale)
    k = _untransposed(k_transposed)
    # Written out, a row that sees no key is softmax over -inf only: NaN, as in eager.
    spec = AttentionSpec(scale=scale, empty_row=EmptyRow.NAN)
    if mask is None:
        return _site(output, q, k, v, spec, None, MaskKind.ADDITIVE)
    return _site(output, q, k, v, spec, mask.tensor, mask.kind, fill=mask.fill)


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
        if op.name == "matmul" and _operands(op)[0] is node:
            return user, _operands(op)[1]
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


@dataclass(frozen=True)
class _Mask:
    """The mask on the scores: the tensor, how it acts, and the value hidden keys take."""

    tensor: fx.Node
    kind: MaskKind
    fill: float = float("-inf")


def _peel_scores(node: Any) -> tuple[fx.Node, float, _Mask | None]:
    """Peel constant factors and one mask off the softmax input: the q k^T node, the product
    of the factors, and the mask (added, or a masked_fill condition)."""
    scale, mask = 1.0, None
    while isinstance(node, fx.Node):
        op = node_op(node)
        if op is None:
            break
        if op.kwargs.get("alpha", 1) != 1 or op.kwargs.get("rounding_mode") is not None:
            raise _Mismatch(f"{op.name} with alpha or rounding_mode on the scores")
        a, b = (*op.args, None, None)[:2]
        if op.name in ("mul", "div") and isinstance(b, int | float):
            if op.name == "div" and b == 0:
                raise _Mismatch("the scores are divided by 0")
            scale = scale * b if op.name == "mul" else scale / b
        elif op.name == "mul" and isinstance(a, int | float):
            scale, a = scale * a, b
        elif op.name in ("add", "masked_fill") and mask is None:
            if scale != 1.0:
                raise _Mismatch("the mask is added before the scale: attncc would scale it too")
            a, mask = _mask_of(op, a, b)
        elif op.name != "cast" or not _float_cast(op):
            break
        node = a
    if not isinstance(node, fx.Node):
        raise _Mismatch("the scores are a constant")
    return node, scale, mask


def _mask_of(op: NodeOp, a: Any, b: Any) -> tuple[Any, _Mask]:
    """The scores operand of an `add` or `masked_fill` on them, and the mask it applies."""
    if op.name == "add":
        scores, tensor = (a, b) if _leads_to_matmul(a) else (b, a)
        if not isinstance(tensor, fx.Node) or _dtype(tensor) == torch.bool:
            raise _Mismatch("a boolean or constant added to the scores (it adds 0 or 1)")
        return scores, _Mask(tensor, MaskKind.ADDITIVE)
    fill = op.arg(2, "value")
    if not isinstance(fill, int | float) or fill > HIDING_FILL:
        raise _Mismatch(f"masked_fill with {fill!r}, not -inf or at most {HIDING_FILL:g}")
    if not isinstance(b, fx.Node):
        raise _Mismatch("masked_fill with a constant condition")
    return a, _Mask(b, MaskKind.HIDDEN, float(fill))


def _operands(op: NodeOp) -> tuple[Any, Any]:
    """The two factors of a matrix product, however they were passed."""
    return op.arg(0, "input"), op.arg(1, "other", op.kwargs.get("mat2"))


def _leads_to_matmul(node: Any) -> bool:
    while isinstance(node, fx.Node):
        op = node_op(node)
        if op is None:
            return False
        if op.name == "matmul":
            return True
        if op.name not in ("mul", "div", "cast") or not op.args:
            return False
        node = op.args[0] if isinstance(op.args[0], fx.Node) else op.args[-1]
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
    kind: MaskKind,
    *,
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
    if ks[3] != qs[3] or ks[:3] != vs[:3] or qs[0] != ks[0]:
        raise _Mismatch(f"q, k, v shapes {qs}, {ks}, {vs} do not fit together")
    group = k_group
    if group is None and qs[1] != ks[1]:
        # Head counts are fixed in a model: int() specializes them (Dynamo guards on it).
        heads, kv_heads = int(qs[1]), int(ks[1])
        if heads % kv_heads:
            raise _Mismatch(f"{heads} query heads cannot share {kv_heads} key/value heads")
        group = heads // kv_heads
    spec = replace(spec, gqa_group=group)
    spec, mask = _with_mask(spec, mask, kind, fill, (qs[0], qs[1], qs[2], ks[2]))
    # Under dynamic shapes Dynamo gives every dim of one size one symbol: reading E as an int
    # would fix the sequence lengths too. A symbolic head dim stays symbolic in the cascade.
    head_dim, value_dim = (n if isinstance(n, int) else None for n in (qs[3], vs[3]))
    return Site(output, q, k, v, mask, spec, describe_node(output), head_dim, value_dim)


def _with_mask(
    spec: AttentionSpec,
    mask: Any,
    kind: MaskKind,
    fill: float,
    scores: tuple[Any, ...],
) -> tuple[AttentionSpec, fx.Node | None]:
    """`spec` with the mask as a predicate when positions compute it (so its empty tiles are
    skipped), else as a tensor input. `fill` is what a masked_fill puts at hidden keys."""
    if mask is None:
        return spec, None
    found = _positional(mask, kind, scores)
    if isinstance(found, MaskPredicate):
        candidate = replace(spec, predicate=found.predicate)
        finite = found.finite_fill or fill != float("-inf")
        if not finite or _no_row_hidden(candidate, scores):
            return candidate, None
        reason = "its finite fill averages over rows that see no key, where -inf would not"
    else:
        reason = found
    if kind is MaskKind.HIDDEN:
        # masked_fill replaces scores; as a tensor attncc can only add to them.
        raise _Mismatch(f"a masked_fill attncc cannot state as a predicate: {reason}")
    tensor = MaskTensor.BOOLEAN if kind is MaskKind.VISIBLE else MaskTensor.ADDITIVE
    return replace(spec, mask_tensor=tensor), mask


def _positional(mask: Any, kind: MaskKind, scores: tuple[Any, ...]) -> MaskPredicate | str:
    """What the mask hides, proved from positions, or why it is data."""
    if not all(isinstance(n, int) for n in scores):
        return f"the scores have a symbolic shape {scores}"
    try:
        return mask_predicate(symbolic(mask), scores, kind)
    except NotPositional as reason:
        return str(reason)


def _no_row_hidden(spec: AttentionSpec, scores: tuple[Any, ...]) -> bool:
    predicate = position_mask(spec)
    return predicate is None or rows_without_keys(predicate, scores[2], scores[3]) is False


def _shape(node: Any, what: str) -> tuple[Any, ...]:
    value = example(node)
    if value is None:
        raise _Mismatch(f"{what} has no recorded shape")
    return tuple(value.shape)


def _dtype(node: Any) -> torch.dtype | None:
    value = example(node)
    return value.dtype if value is not None else None
