"""Finding softmax attention in a torch-mlir module (torch dialect) and stating it as an
`AttentionSpec`.

Two shapes are recognized. (a) `torch.aten.scaled_dot_product_attention`, read from its
operands (is_causal, attn_mask, scale, enable_gqa; dropout_p must be 0). (b) The softmax written
out: every `aten.softmax.int` / `aten._softmax` over the last dimension is followed back through
scales (multiplication or division by a constant), masks (an added tensor, masked_fill or where
with -inf) and layout no-ops to a matmul/bmm of queries and transposed keys, and forward
through dropout in eval mode to the matmul of the weights with the values. In both, keys and
values repeated per query head (LLaMA's repeat_kv, repeat_interleave) are read as grouped-query
attention, and a mask computed from positions becomes a predicate (`mlir_symbolic`); any other
mask stays a tensor input of the cascade. A softmax that does not fit is reported with the
reason. Shapes are static (torch.export specializes them), so every check here is exact.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from torch_mlir import ir

from attncc.frontends.torch.mlir_ops import (
    constant_or,
    function_ops,
    is_float_tensor,
    normalize_dim,
    producer,
    shape,
    users,
)
from attncc.frontends.torch.mlir_symbolic import (
    HIDING_FILL,
    MaskKind,
    MaskPredicate,
    Symbolic,
    fold,
    mask_predicate,
    permutation,
    scalar_constant,
    symbolic,
)
from attncc.frontends.torch.spec import AttentionSpec, MaskTensor, attention_cascade
from attncc.ir import Call, Cascade, Const, Coord, Expr

SDPA = "torch.aten.scaled_dot_product_attention"
SOFTMAX = ("torch.aten.softmax.int", "torch.aten._softmax")
MATMUL = ("torch.aten.matmul", "torch.aten.bmm")
CAUSAL = Call("le", (Coord("m"), Coord("p")))

# Operations that leave every element where it was: looked through in both directions.
_SAME_DATA = {
    "torch.aten.clone",
    "torch.aten.contiguous",
    "torch.aten.detach",
    "torch.aten.alias",
    "torch.aten.to.dtype",
    "torch.aten.to.dtype_layout",
    "torch.aten._to_copy",
    "torch.aten.type_as",
    "torch.prims.convert_element_type",
}
# Reshapes that keep the last two dimensions (what a bmm's batch flattening does).
_BATCH_VIEWS = {"torch.aten.view", "torch.aten.reshape", "torch.aten._unsafe_view"}
_SCALES = {"torch.aten.mul.Scalar", "torch.aten.div.Scalar", "torch.aten.mul.Tensor"}
_SCALES |= {"torch.aten.div.Tensor"}


class NoMatch(Exception):
    """The pattern does not apply; the message says why, for the report."""


@dataclass(frozen=True)
class MaskTerm:
    """A mask that stays a tensor: `value` acts on scores of shape `scores_shape` as `kind`
    says; an additive mask is multiplied by `scale` (the scale applied after it was added)."""

    value: ir.Value
    kind: MaskKind
    scale: float
    scores_shape: tuple[int, ...]


@dataclass(frozen=True)
class SiteDims:
    """Sizes of a site, with leading dimensions folded into one batch: query heads H, key/value
    heads G (H / group under GQA), P queries, M keys, head dimensions E and F."""

    batch: int
    heads: int
    kv_heads: int
    queries: int
    keys: int
    head_dim: int
    value_dim: int


@dataclass(frozen=True)
class AttentionSite:
    """One recognized attention. `query` is [..., p, e], `key` [..., m, e] (or [..., e, m] when
    `key_transposed`), `value` [..., m, f] with the key/value heads before any repeat, `output`
    [..., p, f]: the values whose data the cascade's Q, K, V and AV are."""

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
    dropout_p = constant_or(dropout, math.nan)
    if dropout_p != 0.0:
        raise NoMatch(
            f"dropout_p={dropout_p}: attncc compiles attention without dropout "
            "(put the model in eval mode, or pass dropout_p=0 outside training)"
        )
    is_causal, scale_value = constant_or(causal, None), constant_or(scale, math.nan)
    if not isinstance(is_causal, bool) or not isinstance(constant_or(gqa, None), bool):
        raise NoMatch("is_causal and enable_gqa must be constants")
    if scale_value is not None and not isinstance(scale_value, int | float):
        raise NoMatch("the scale must be a constant")
    key, value = _key_value(q, k, v, key_transposed=False)
    dims = _dims(q, key, value, key_transposed=False)
    terms = []
    if shape(mask) is not None:
        kind = MaskKind.ADDITIVE if is_float_tensor(mask) else MaskKind.VISIBLE
        terms.append(MaskTerm(mask, kind, 1.0, (*_shape_of(q)[:-1], dims.keys)))
    scale_float = None if scale_value is None else float(scale_value)
    return _site(
        op, position, dims, (q, key, value, op.result), False, scale_float, is_causal, terms
    )


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
    weighted = _weighted_sum(op.result)
    chain = _Chain()
    product = _scores(scores_in, chain)
    a, a_scale = _unscaled(product.operands[0])
    b, b_scale = _unscaled(product.operands[1])
    key, key_transposed = b, True
    b_op = producer(b)
    if b_op is not None and _swaps_last_two(b_op):
        key, key_transposed = b_op.operands[0], False
    key, value = _key_value(a, key, weighted.operands[1], key_transposed=key_transposed)
    dims = _dims(a, key, value, key_transposed=key_transposed)
    scale = chain.scale * a_scale * b_scale
    tensors = (a, key, value, weighted.result)
    return _site(weighted, position, dims, tensors, key_transposed, scale, False, chain.masks)


def _weighted_sum(weights: ir.Value) -> ir.Operation:
    """The matmul/bmm that multiplies the softmax's weights (its first operand) with values,
    through dropout in eval mode, copies and batch reshapes."""
    pending, seen = [weights], set()
    while pending:
        value = pending.pop()
        for use in users(value):
            name = use.op.name
            if name in MATMUL and use.index == 0:
                return use.op
            if name == "torch.aten.dropout" and constant_or(use.op.operands[2], True) is True:
                raise NoMatch(
                    "dropout is on after the softmax (training mode): attncc compiles "
                    "inference; call model.eval() in the factory"
                )
            if _looks_through(use.op) or name == "torch.aten.dropout":
                result = use.op.result
                if result not in seen:
                    seen.add(result)
                    pending.append(result)
    raise NoMatch("the softmax's weights are not multiplied with a value tensor (matmul or bmm)")


def _scores(x: ir.Value, chain: _Chain) -> ir.Operation:
    """Follow the softmax's input back to the matmul of queries and keys, collecting scales
    and masks into `chain`."""
    for _ in range(64):
        x = _peel(x)
        op = producer(x)
        name = op.name if op is not None else "a function argument"
        if op is None:
            break
        if name in MATMUL:
            return op
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
        mask, kind, x = masked
        chain.masks.append(MaskTerm(mask, kind, 1.0, _shape_of(x)))
    raise NoMatch(
        f"the softmax's input comes from {name}, not from a scaled and masked product of "
        "queries and keys (matmul or bmm)"
    )


def _added_mask(op: ir.Operation, chain: _Chain) -> ir.Operation:
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
        term = MaskTerm(mask, MaskKind.ADDITIVE, chain.scale, _shape_of(op.result))
        chain.scale = inner.scale
        chain.masks += [term, *inner.masks]
        return found
    raise NoMatch(reasons[0])


def _masking(op: ir.Operation) -> tuple[ir.Value, MaskKind, ir.Value] | None:
    """(mask, kind, scores) for masked_fill(scores, mask, -inf) and where(mask, scores, -inf)."""
    args = list(op.operands)
    if op.name in ("torch.aten.masked_fill.Scalar", "torch.aten.masked_fill.Tensor"):
        fill = _number_or_scalar(args[2])
        _check_fill(fill, "masked_fill")
        return args[1], MaskKind.HIDDEN, args[0]
    if op.name.startswith("torch.aten.where."):
        yes, no = _number_or_scalar(args[1]), _number_or_scalar(args[2])
        if no is not None and no <= HIDING_FILL:
            return args[0], MaskKind.VISIBLE, args[1]
        if yes is not None and yes <= HIDING_FILL:
            return args[0], MaskKind.HIDDEN, args[2]
        raise NoMatch("a where() before the softmax replaces scores with something other than -inf")
    return None


def _check_fill(fill: float | None, what: str) -> None:
    if fill is None or fill > HIDING_FILL:
        raise NoMatch(
            f"{what} fills scores with {fill if fill is not None else 'a tensor'}: only -inf "
            f"(or a constant at most {HIDING_FILL:g}) hides a key"
        )


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


def _unscaled(x: ir.Value) -> tuple[ir.Value, float]:
    """A matmul operand with its constant scales and layout no-ops peeled off."""
    total = 1.0
    for _ in range(16):
        x = _peel(x)
        op = producer(x)
        factor = _scale_factor(op) if op is not None else None
        if factor is None:
            break
        total *= factor[0]
        x = factor[1]
    return x, total


def _swaps_last_two(op: ir.Operation) -> bool:
    rank = len(shape(op.operands[0]) or ())
    if rank < 2 or op.name not in (
        "torch.aten.transpose.int",
        "torch.aten.permute",
        "torch.aten.t",
        "torch.aten.numpy_T",
    ):
        return False
    order = permutation(op, rank)
    return order == [*range(rank - 2), rank - 1, rank - 2]


def _looks_through(op: ir.Operation, *, views: bool = True) -> bool:
    """Copies, dtype conversions, identity expands and slices, and (with `views`) reshapes of
    the leading dims."""
    if not op.operands or len(op.results) != 1:
        return False
    before, after = shape(op.operands[0]), shape(op.result)
    if op.name in _SAME_DATA:
        return before == after
    if op.name == "torch.aten.expand":
        return before == after
    if op.name == "torch.aten.slice.Tensor":
        return _identity_slice(op)
    if views and op.name in _BATCH_VIEWS and before is not None and after is not None:
        return len(before) >= 2 and len(after) >= 2 and before[-2:] == after[-2:]
    return False


def _identity_slice(op: ir.Operation) -> bool:
    start, step = constant_or(op.operands[2], None), constant_or(op.operands[4], None)
    return shape(op.operands[0]) == shape(op.result) and start in (0, None) and step == 1


def _peel(x: ir.Value, *, views: bool = True) -> ir.Value:
    for _ in range(64):
        op = producer(x)
        if op is None or not _looks_through(op, views=views):
            return x
        x = op.operands[0]
    return x


def _shape_of(x: ir.Value) -> tuple[int, ...]:
    dims = shape(x)
    if dims is None:
        raise NoMatch("a tensor on the way has no static shape")
    return dims


# -- Grouped-query attention: keys and values repeated per query head. ---------------------------


def _key_value(
    q: ir.Value, k: ir.Value, v: ir.Value, *, key_transposed: bool
) -> tuple[ir.Value, ir.Value]:
    """The key and value tensors before a repeat over the head dimension that both went
    through with the same factor (grouped-query attention); otherwise, of each, the tensor
    furthest back through copies and batch reshapes whose leading dims pair with the queries'
    (always correct: the cascade then reads the repeated heads)."""
    q_lead = _shape_of(q)[:-2]
    if not key_transposed:
        k_source, v_source = _first_repeat(k), _first_repeat(v)
        if k_source is not None and v_source is not None and k_source[1] == v_source[1]:
            return k_source[0], v_source[0]
    return _pairing(k, q_lead), _pairing(v, q_lead)


def _chain(x: ir.Value) -> list[ir.Value]:
    """`x`, and what it is a copy or a batch reshape of, one step at a time."""
    found = [x]
    for _ in range(64):
        op = producer(found[-1])
        if op is None or not _looks_through(op):
            break
        found.append(op.operands[0])
    return found


def _pairing(x: ir.Value, q_lead: tuple[int, ...]) -> ir.Value:
    paired = [c for c in _chain(x) if (s := shape(c)) and len(s) >= 2 and _pairs(q_lead, s[:-2])]
    return paired[-1] if paired else x


def _pairs(lead: tuple[int, ...], kv_lead: tuple[int, ...]) -> bool:
    """Whether keys with leading dims `kv_lead` serve queries with `lead`: the same batch, and
    key/value heads dividing the query heads."""
    if len(kv_lead) != len(lead) or kv_lead[:-1] != lead[:-1]:
        return False
    return not lead or lead[-1] % kv_lead[-1] == 0


def _first_repeat(x: ir.Value) -> tuple[ir.Value, int] | None:
    for candidate in _chain(x):
        found = _repeat_source(candidate)
        if found is not None:
            return found
    return None


def _repeat_source(x: ir.Value) -> tuple[ir.Value, int] | None:
    """(source [b, g, s, d], r) when `x` is [b, g*r, s, d], each head repeated r times in a row:
    repeat_kv's unsqueeze + expand + reshape, or repeat_interleave over dim 1."""
    op = producer(x)
    out = shape(x)
    if op is None or out is None or len(out) != 4:
        return None
    if op.name == "torch.aten.repeat_interleave.self_int":
        repeats, dim = constant_or(op.operands[1], None), constant_or(op.operands[2], None)
        source = op.operands[0]
        if isinstance(repeats, int) and isinstance(dim, int) and normalize_dim(dim, 4) == 1:
            return source, repeats
        return None
    if op.name not in _BATCH_VIEWS:
        return None
    expanded = _peel(op.operands[0], views=False)
    expand = producer(expanded)
    grid = shape(expanded)
    if expand is None or expand.name != "torch.aten.expand" or grid is None or len(grid) != 5:
        return None
    unsqueezed = _peel(expand.operands[0], views=False)
    unsqueeze = producer(unsqueezed)
    if unsqueeze is None or unsqueeze.name != "torch.aten.unsqueeze":
        return None
    if constant_or(unsqueeze.operands[1], None) not in (2, -3):
        return None
    source = unsqueeze.operands[0]
    b, g, r, s, d = grid
    if shape(source) != (b, g, s, d) or out != (b, g * r, s, d):
        return None
    return source, r


# -- Putting a site together. --------------------------------------------------------------------


def _dims(q: ir.Value, key: ir.Value, value: ir.Value, *, key_transposed: bool) -> SiteDims:
    q_shape, k_shape, v_shape = shape(q), shape(key), shape(value)
    if q_shape is None or k_shape is None or v_shape is None:
        raise NoMatch("queries, keys and values need static shapes")
    if min(len(q_shape), len(k_shape), len(v_shape)) < 2:
        raise NoMatch("queries, keys and values need at least 2 dims")
    lead, k_lead, v_lead = q_shape[:-2], k_shape[:-2], v_shape[:-2]
    p, e_q = q_shape[-2:]
    e, m = k_shape[-2:] if key_transposed else reversed(k_shape[-2:])
    m_v, f = v_shape[-2:]
    if e != e_q or m != m_v:
        raise NoMatch(
            f"queries {list(q_shape)}, keys {list(k_shape)} and values {list(v_shape)} do not "
            "multiply as attention"
        )
    if k_lead != v_lead:
        raise NoMatch(f"keys have leading dims {list(k_lead)} and values {list(v_lead)}")
    batch = math.prod(lead[:-1]) if lead else 1
    heads = lead[-1] if lead else 1
    kv_heads = k_lead[-1] if k_lead else 1
    if not _pairs(lead, k_lead):
        raise NoMatch(
            f"keys with leading dims {list(k_lead)} do not pair with queries' {list(lead)} "
            "(the same batch, and key/value heads dividing the query heads)"
        )
    return SiteDims(batch, heads, kv_heads, p, m, e, f)


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
    for term in terms:
        found = _predicate(term)
        if isinstance(found, MaskPredicate):
            if found.predicate is not None:
                predicates.append(found.predicate)
            if found.finite_fill:
                notes.append("a mask hides keys with a large finite value; the cascade uses -inf")
            continue
        if found is not None:
            notes.append(f"a mask computed from positions stays a tensor: {found}")
        masked.append(term)
    is_causal = CAUSAL in predicates
    rest = [p for p in predicates if p != CAUSAL]
    predicate = None
    for p in rest:
        predicate = p if predicate is None else Call("and", (predicate, p))
    kind = MaskTensor.NONE
    if masked:
        boolean = all(t.kind is not MaskKind.ADDITIVE for t in masked)
        kind = MaskTensor.BOOLEAN if boolean else MaskTensor.ADDITIVE
    group = dims.heads // dims.kv_heads if dims.kv_heads != dims.heads else None
    spec = AttentionSpec(
        scale=scale, causal=is_causal, predicate=predicate, mask_tensor=kind, gqa_group=group
    )
    q, key, value, output = tensors
    return AttentionSite(
        op, position, spec, dims, q, key, key_transposed, value, output, tuple(masked), tuple(notes)
    )


def _predicate(term: MaskTerm) -> MaskPredicate | str | None:
    """The predicate a mask computes from positions; a reason when it is computed from
    positions but is not a predicate; None when it depends on data."""
    sym = symbolic(term.value)
    if sym is None:
        return None
    if term.kind is MaskKind.ADDITIVE and term.scale != 1.0:
        sym = Symbolic(sym.shape, fold(Call("mul", (sym.expr, Const(term.scale)))))
    return mask_predicate(sym, term.scores_shape, term.kind)
