"""Finding softmax attention in a torch-mlir module (torch dialect) and stating it as an
`AttentionSpec`.

Two shapes are recognized. (a) `torch.aten.scaled_dot_product_attention`, read from its
operands (is_causal, attn_mask, scale, enable_gqa; dropout_p must be 0). (b) The softmax written
out: every `aten.softmax.int` / `aten._softmax` over the last dimension is followed back through
scales (multiplication or division by a constant), masks (an added tensor, masked_fill or where
with -inf) and layout no-ops to a product of queries and keys (matmul or bmm with transposed
keys, or an einsum), and forward through dropout in eval mode to the product of the weights
with the values. In both, keys and values repeated per query head (LLaMA's repeat_kv,
repeat_interleave; `mlir_layout`) are read as grouped-query attention, and a mask computed from
positions becomes a predicate (`position_masks`); any other mask stays a tensor input of the
cascade. A softmax that does not fit is reported with the
reason. Shapes are static (torch.export specializes them), so every check here is exact.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from torch_mlir import ir

from attncc.frontends.torch.mlir_layout import (
    NoMatch,
    SiteDims,
    key_value,
    looks_through,
    peel,
    product,
    product_uses,
    shape_of,
    site_dims,
    swaps_last_two,
)
from attncc.frontends.torch.mlir_ops import (
    NotConstant,
    constant,
    constant_or,
    function_ops,
    is_float_tensor,
    normalize_dim,
    producer,
    shape,
)
from attncc.frontends.torch.mlir_symbolic import scalar_constant, symbolic
from attncc.frontends.torch.position_masks import (
    HIDING_FILL,
    MaskKind,
    MaskPredicate,
    Symbolic,
    fold,
    mask_predicate,
)
from attncc.frontends.torch.spec import AttentionSpec, MaskTensor, attention_cascade
from attncc.ir import Call, Cascade, Const, Coord, Expr

SDPA = "torch.aten.scaled_dot_product_attention"
SOFTMAX = ("torch.aten.softmax.int", "torch.aten._softmax")
CAUSAL = Call("le", (Coord("m"), Coord("p")))

_SCALES = {
    "torch.aten.mul.Scalar",
    "torch.aten.div.Scalar",
    "torch.aten.mul.Tensor",
    "torch.aten.div.Tensor",
}


@dataclass(frozen=True)
class MaskTerm:
    """A mask that stays a tensor: `value` acts on scores of shape `scores_shape` as `kind`
    says; an additive mask is multiplied by `scale` (the scale applied after it was added)."""

    value: ir.Value
    kind: MaskKind
    scale: float
    scores_shape: tuple[int, ...]
    finite_fill: bool = False
    """A boolean mask applied with a large finite value (-1e9) in place of -inf."""


@dataclass(frozen=True)
class AttentionSite:
    """One recognized attention: `op` is the SDPA call or the softmax, at `position` in the
    function. `query` is [..., p, e], `key` [..., m, e] (or [..., e, m] when `key_transposed`),
    `value` [..., m, f] with the key/value heads before any repeat, `output` [..., p, f]: the
    values whose data the cascade's Q, K, V and AV are."""

    op: ir.Operation
    position: int
    spec: AttentionSpec
    dims: SiteDims
    query: ir.Value
    key: ir.Value
    key_transposed: bool
    value: ir.Value
    output: ir.Value
    masks: tuple[MaskTerm, ...] = ()
    notes: tuple[str, ...] = ()

    def cascade(self) -> Cascade:
        return attention_cascade(
            self.spec, head_dim=self.dims.head_dim, value_dim=self.dims.value_dim
        )


@dataclass(frozen=True)
class Unrecognized:
    """A softmax or SDPA call that is not compiled, and why."""

    op: ir.Operation
    position: int
    reason: str


def find_attention(module: ir.Module) -> tuple[list[AttentionSite], list[Unrecognized]]:
    """Every attention site of the module's function, in program order, and every softmax or
    SDPA call that was not recognized."""
    sites: list[AttentionSite] = []
    skipped: list[Unrecognized] = []
    for position, op in enumerate(function_ops(module)):
        if op.name not in (SDPA, *SOFTMAX):
            continue
        try:
            site = _sdpa(op, position) if op.name == SDPA else _softmax(op, position)
        except NoMatch as reason:
            skipped.append(Unrecognized(op, position, str(reason)))
        else:
            sites.append(site)
    return sites, skipped


# -- (a) scaled_dot_product_attention ------------------------------------------------------------


def _sdpa(op: ir.Operation, position: int) -> AttentionSite:
    if len(op.operands) != 8:
        raise NoMatch(f"scaled_dot_product_attention with {len(op.operands)} operands, not 8")
    q, k, v, mask, dropout, causal, scale, gqa = op.operands
    try:
        dropout_p, is_causal, scale_value = constant(dropout), constant(causal), constant(scale)
        constant(gqa)  # enable_gqa is read from the shapes
    except NotConstant:
        raise NoMatch("dropout_p, is_causal, scale and enable_gqa must be constants") from None
    if dropout_p != 0.0:
        raise NoMatch(
            f"dropout_p={dropout_p}: attncc compiles attention without dropout "
            "(put the model in eval mode, or pass dropout_p=0 outside training)"
        )
    key, value = key_value(q, k, v, key_transposed=False)
    dims = site_dims(q, key, value, key_transposed=False)
    terms = []
    if shape(mask) is not None:
        kind = MaskKind.ADDITIVE if is_float_tensor(mask) else MaskKind.VISIBLE
        terms.append(MaskTerm(mask, kind, 1.0, (*shape_of(q)[:-1], dims.keys)))
    scale_float = None if scale_value is None else float(scale_value)
    tensors = (q, key, value, op.result)
    return _site(op, position, dims, tensors, False, scale_float, bool(is_causal), terms)


# -- (b) the softmax written out -------------------------------------------------------------


@dataclass
class _Chain:
    """What lies between the softmax and the product of queries and keys."""

    scale: float = 1.0
    masks: list[MaskTerm] = field(default_factory=list)


def _softmax(op: ir.Operation, position: int) -> AttentionSite:
    scores_in = op.operands[0]
    scores = shape(scores_in)
    dim = constant_or(op.operands[1], None)
    if scores is None or len(scores) < 2:
        raise NoMatch("the softmax's input is not a tensor of static shape with 2 or more dims")
    if not isinstance(dim, int) or normalize_dim(dim, len(scores)) != len(scores) - 1:
        raise NoMatch(
            f"the softmax runs over dim {dim} of a {list(scores)} tensor, not over the last "
            "(key) dimension"
        )
    weighted, values = _weighted_sum(op.result)
    chain = _Chain()
    a, b, b_transposed = _scores(scores_in, chain)
    a, a_scale = _unscaled(a)
    b, b_scale = _unscaled(b)
    # The key tensor is laid out [.., e, m] (the cascade's K[e, m]) as a matmul's right operand
    # is, unless that operand transposes [.., m, e] keys or the einsum reads them so.
    key, key_transposed = b, not b_transposed
    b_op = producer(b)
    if not b_transposed and b_op is not None and swaps_last_two(b_op):
        # Keys are not peeled through reshapes here: key_value looks for a repeat there.
        key, key_scale = _unscaled(b_op.operands[0], views=False)
        key_transposed, b_scale = False, b_scale * key_scale
    key, value = key_value(a, key, values, key_transposed=key_transposed)
    dims = site_dims(a, key, value, key_transposed=key_transposed)
    scale = chain.scale * a_scale * b_scale
    tensors = (a, key, value, weighted.result)
    return _site(op, position, dims, tensors, key_transposed, scale, False, chain.masks)


def _weighted_sum(weights: ir.Value) -> tuple[ir.Operation, ir.Value]:
    """The product of the softmax's weights with values (weights @ values, by matmul, bmm or
    einsum), through dropout in eval mode, copies and batch reshapes; and the values."""
    pending, seen, consumers = [weights], set(), set()
    while pending:
        value = pending.pop()
        for use in product_uses(value):
            name = use.op.name
            consumers.add(name)
            multiplied = product(use.op) if use.index == 0 else None
            if multiplied is not None and not multiplied[2]:
                return use.op, multiplied[1]
            if name == "torch.aten.dropout" and constant_or(use.op.operands[2], True) is True:
                raise NoMatch(
                    "dropout is on after the softmax (training mode): attncc compiles "
                    "inference; call model.eval() in the factory"
                )
            if looks_through(use.op) or name == "torch.aten.dropout":
                result = use.op.result
                if result not in seen:
                    seen.add(result)
                    pending.append(result)
    used = f" (they go to {', '.join(sorted(consumers))})" if consumers else ""
    raise NoMatch(
        "the softmax's weights are not multiplied with a value tensor by matmul, bmm or "
        f"einsum{used}"
    )


def _scores(x: ir.Value, chain: _Chain) -> tuple[ir.Value, ir.Value, bool]:
    """Follow the softmax's input back to the product of queries and keys (`product`),
    collecting scales and masks into `chain`."""
    for _ in range(64):
        x = peel(x)
        op = producer(x)
        name = op.name if op is not None else "a function argument"
        if op is None:
            break
        multiplied = product(op)
        if multiplied is not None:
            return multiplied
        factor = _scale_factor(op)
        if factor is not None:
            chain.scale *= factor[0]
            x = factor[1]
            continue
        if name == "torch.aten.add.Tensor" and constant_or(op.operands[2], None) == 1:
            return _added_mask(op, chain)
        masked = _masking(op)
        if masked is None:
            break
        if chain.scale <= 0:
            raise NoMatch("a mask hides keys with -inf before a negative scale")
        mask, kind, x, fill = masked
        chain.masks.append(MaskTerm(mask, kind, 1.0, shape_of(x), math.isfinite(fill)))
    raise NoMatch(
        f"the softmax's input comes from {name}, not from a scaled and masked product of "
        "queries and keys (matmul, bmm or einsum)"
    )


def _added_mask(op: ir.Operation, chain: _Chain) -> tuple[ir.Value, ir.Value, bool]:
    """`scores + mask`: whichever side leads back to a product of queries and keys is the
    scores, the other the mask."""
    a, b = op.operands[0], op.operands[1]
    reasons = []
    for scores, mask in ((a, b), (b, a)):
        inner = _Chain(chain.scale)
        try:
            found = _scores(scores, inner)
        except NoMatch as reason:
            reasons.append(str(reason))
            continue
        # The scale applied after the addition scales the mask too.
        term = MaskTerm(mask, MaskKind.ADDITIVE, chain.scale, shape_of(op.result))
        chain.scale = inner.scale
        chain.masks += [term, *inner.masks]
        return found
    raise NoMatch(reasons[0])


def _masking(op: ir.Operation) -> tuple[ir.Value, MaskKind, ir.Value, float] | None:
    """(mask, kind, scores, fill) for masked_fill(scores, mask, -inf) and
    where(mask, scores, -inf); a fill of at most HIDING_FILL also hides a key."""
    args = list(op.operands)
    if op.name in ("torch.aten.masked_fill.Scalar", "torch.aten.masked_fill.Tensor"):
        fill = _number_or_scalar(args[2])
        if fill is None or fill > HIDING_FILL:
            raise NoMatch(
                f"masked_fill fills scores with {fill if fill is not None else 'a tensor'}: only "
                f"-inf (or a constant at most {HIDING_FILL:g}) hides a key"
            )
        return args[1], MaskKind.HIDDEN, args[0], fill
    if op.name.startswith("torch.aten.where."):
        yes, no = _number_or_scalar(args[1]), _number_or_scalar(args[2])
        if no is not None and no <= HIDING_FILL:
            return args[0], MaskKind.VISIBLE, args[1], no
        if yes is not None and yes <= HIDING_FILL:
            return args[0], MaskKind.HIDDEN, args[2], yes
        raise NoMatch("a where() before the softmax replaces scores with something other than -inf")
    return None


def _number_or_scalar(value: ir.Value) -> float | None:
    if shape(value) is not None:
        return scalar_constant(value)
    number = constant_or(value, None)
    return (
        float(number) if isinstance(number, int | float) and not isinstance(number, bool) else None
    )


def _scale_factor(op: ir.Operation) -> tuple[float, ir.Value] | None:
    """(factor, scaled tensor) for multiplication or division by a constant."""
    if op.name not in _SCALES:
        return None
    a, b = op.operands[0], op.operands[1]
    divide = op.name.startswith("torch.aten.div")
    for tensor, other in ((a, b), (b, a)) if not divide else ((a, b),):
        if shape(tensor) is None or shape(tensor) != shape(op.result):
            continue
        c = _number_or_scalar(other)
        if c is not None and c != 0 and math.isfinite(c):
            return (1.0 / c if divide else c), tensor
    return None


def _unscaled(x: ir.Value, *, views: bool = True) -> tuple[ir.Value, float]:
    """A matmul operand with its constant scales and layout no-ops (with `views`, batch
    reshapes too) peeled off."""
    total = 1.0
    for _ in range(16):
        x = peel(x, views=views)
        op = producer(x)
        factor = _scale_factor(op) if op is not None else None
        if factor is None:
            break
        total *= factor[0]
        x = factor[1]
    return x, total


# -- Putting a site together. --------------------------------------------------------------------


def _site(
    op: ir.Operation,
    position: int,
    dims: SiteDims,
    tensors: tuple[ir.Value, ir.Value, ir.Value, ir.Value],
    key_transposed: bool,
    scale: float | None,
    causal: bool,
    terms: list[MaskTerm],
) -> AttentionSite:
    """The site of queries, keys, values and output `tensors`, with its spec: `scale` None
    when it is 1/sqrt(E), predicates for the masks computed from positions, the rest as
    tensors."""
    if scale is not None and math.isclose(scale, 1 / math.sqrt(dims.head_dim), rel_tol=1e-12):
        scale = None
    predicates: list[Expr] = [CAUSAL] if causal else []
    masked: list[MaskTerm] = []
    notes: list[str] = []
    finite = any(term.finite_fill for term in terms)
    for term in terms:
        found = _predicate(term)
        if isinstance(found, MaskPredicate):
            if found.predicate is not None:
                predicates.extend(_conjuncts(found.predicate))
            finite |= found.finite_fill
            continue
        if found is not None:
            notes.append(f"a mask computed from positions stays a tensor: {found}")
        masked.append(term)
    if finite:
        notes.append(
            "a mask hides keys with a large finite value where the cascade uses -inf: the "
            "same result unless a query sees no key at all"
        )
    # A causal conjunct is said as `causal`; the rest, in order, is the predicate.
    rest = [p for i, p in enumerate(predicates) if p != CAUSAL and p not in predicates[:i]]
    predicate = None
    for p in rest:
        predicate = p if predicate is None else Call("and", (predicate, p))
    kind = MaskTensor.NONE
    if masked:
        boolean = all(t.kind is not MaskKind.ADDITIVE for t in masked)
        kind = MaskTensor.BOOLEAN if boolean else MaskTensor.ADDITIVE
    group = dims.heads // dims.kv_heads if dims.kv_heads != dims.heads else None
    spec = AttentionSpec(
        scale=scale,
        causal=CAUSAL in predicates,
        predicate=predicate,
        mask_tensor=kind,
        gqa_group=group,
    )
    q, key, value, output = tensors
    return AttentionSite(
        op, position, spec, dims, q, key, key_transposed, value, output, tuple(masked), tuple(notes)
    )


def _conjuncts(predicate: Expr) -> list[Expr]:
    if isinstance(predicate, Call) and predicate.op == "and":
        return [c for arg in predicate.args for c in _conjuncts(arg)]
    return [predicate]


def _predicate(term: MaskTerm) -> MaskPredicate | str | None:
    """The predicate a mask computes from positions; a reason when it is computed from
    positions but is not a predicate; None when it depends on data."""
    sym = symbolic(term.value)
    if sym is None:
        return None
    if term.kind is MaskKind.ADDITIVE and term.scale != 1.0:
        sym = Symbolic(sym.shape, fold(Call("mul", (sym.expr, Const(term.scale)))))
    return mask_predicate(sym, term.scores_shape, term.kind)
