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
positions becomes a predicate (`mlir_masks`); any other mask stays a tensor input of the
cascade. A softmax that does not fit is reported with the reason. Scales are kept as the model
writes them: `/ math.sqrt(16)` is 0.25, as the FX frontend reads it, and None (1/sqrt(E)) only
where SDPA is given no scale. Shapes are static (torch.export specializes them), so every
check here is exact.
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
from attncc.frontends.torch.mlir_masks import MaskTerm, read_masks
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
from attncc.frontends.torch.mlir_symbolic import scalar_constant
from attncc.frontends.torch.position_masks import HIDING_FILL, MaskKind
from attncc.frontends.torch.spec import AttentionSpec, EmptyRow, attention_cascade
from attncc.ir import Cascade

SDPA = "torch.aten.scaled_dot_product_attention"
SOFTMAX = ("torch.aten.softmax.int", "torch.aten._softmax")

_SCALES = {
    "torch.aten.mul.Scalar",
    "torch.aten.div.Scalar",
    "torch.aten.mul.Tensor",
    "torch.aten.div.Tensor",
}


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

    @property
    def empty_row(self) -> float:
        """What the module gives a query row that sees no key (every score -inf)."""
        return 0.0 if self.spec.empty_row is EmptyRow.ZERO else math.nan


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
        terms.append(MaskTerm(mask, kind, (*shape_of(q)[:-1], dims.keys)))
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
            # dropout(x, p, train); torch.export writes dropout in training as native_dropout.
            training = name == "torch.aten.native_dropout" or (
                name == "torch.aten.dropout" and constant_or(use.op.operands[2], True) is not False
            )
            if training:
                raise NoMatch(
                    "dropout is on after the softmax (training mode): attncc compiles "
                    "inference (the module runs in eval mode; give F.dropout "
                    "training=self.training)"
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
            chain.scale = factor.applied(chain.scale)
            x = factor.tensor
            continue
        if name == "torch.aten.add.Tensor" and constant_or(op.operands[2], None) == 1:
            return _added_mask(op, chain)
        masked = _masking(op, chain.scale)
        if masked is None:
            break
        term, x = masked
        chain.masks.append(term)
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
        term = MaskTerm(mask, MaskKind.ADDITIVE, shape_of(op.result), scale=chain.scale)
        chain.scale = inner.scale
        chain.masks += [term, *inner.masks]
        return found
    raise NoMatch(reasons[0])


_MASKED_FILL = ("torch.aten.masked_fill.Scalar", "torch.aten.masked_fill.Tensor")
_HIDES = (
    f"only -inf (or a constant at most {HIDING_FILL:g}, after the scales that follow) hides a key"
)


def _masking(op: ir.Operation, scale: float) -> tuple[MaskTerm, ir.Value] | None:
    """(mask, scores) for masked_fill(scores, mask, fill) and where(mask, scores, fill), where
    the fill, times the `scale` that the scores get after it, hides a key (-inf, or at most
    HIDING_FILL); None for other operations."""
    args = list(op.operands)
    where = op.name.startswith("torch.aten.where.")
    if op.name not in _MASKED_FILL and not where:
        return None
    if scale <= 0:
        # Scores scaled by a negative number after the mask: its hidden keys would win.
        raise NoMatch(f"a mask hides keys before a negative scale ({scale:g})")
    scores = shape_of(op.result)
    if not where:
        fill = _number_or_scalar(args[2])
        if fill is None or fill * scale > HIDING_FILL:
            raise NoMatch(f"masked_fill fills scores with {_fill_text(fill, scale)}: {_HIDES}")
        return MaskTerm(args[1], MaskKind.HIDDEN, scores, scale, fill), args[0]
    yes, no = _number_or_scalar(args[1]), _number_or_scalar(args[2])
    if no is not None and no * scale <= HIDING_FILL:
        return MaskTerm(args[0], MaskKind.VISIBLE, scores, scale, no), args[1]
    if yes is not None and yes * scale <= HIDING_FILL:
        return MaskTerm(args[0], MaskKind.HIDDEN, scores, scale, yes), args[2]
    shown = " or ".join(_fill_text(f, scale) for f in (yes, no) if f is not None) or "a tensor"
    raise NoMatch(f"a where() before the softmax replaces scores with {shown}: {_HIDES}")


def _fill_text(fill: float | None, scale: float) -> str:
    if fill is None:
        return "a tensor"
    if scale == 1.0:
        return f"{fill:g}"
    return f"{fill:g} (times the scale {scale:g} that follows: {fill * scale:g})"


def _number_or_scalar(value: ir.Value) -> float | None:
    if shape(value) is not None:
        return scalar_constant(value)
    number = constant_or(value, None)
    return (
        float(number) if isinstance(number, int | float) and not isinstance(number, bool) else None
    )


@dataclass(frozen=True)
class _Factor:
    """Multiplication (or division) of `tensor` by the constant `value`."""

    value: float
    divide: bool
    tensor: ir.Value

    def applied(self, scale: float) -> float:
        # Divided, not multiplied by 1/value: the FX frontend reads the same number.
        return scale / self.value if self.divide else scale * self.value


def _scale_factor(op: ir.Operation) -> _Factor | None:
    """Multiplication or division of a tensor by a constant."""
    if op.name not in _SCALES:
        return None
    a, b = op.operands[0], op.operands[1]
    divide = op.name.startswith("torch.aten.div")
    for tensor, other in ((a, b), (b, a)) if not divide else ((a, b),):
        if shape(tensor) is None or shape(tensor) != shape(op.result):
            continue
        c = _number_or_scalar(other)
        if c is not None and c != 0 and math.isfinite(c):
            return _Factor(c, divide, tensor)
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
        total = factor.applied(total)
        x = factor.tensor
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
    """The site of queries, keys, values and output `tensors`, with its spec: `scale` as the
    model gives it (None only where the model uses SDPA's default), predicates for the masks
    computed from positions (`read_masks`), the rest as tensors."""
    masks = read_masks(terms, causal=causal, queries=dims.queries, keys=dims.keys)
    spec = AttentionSpec(
        scale=scale,
        causal=masks.causal,
        predicate=masks.predicate,
        mask_tensor=masks.mask_tensor,
        gqa_group=dims.heads // dims.kv_heads if dims.kv_heads != dims.heads else None,
        # SDPA gives 0 (torch 2.13) to a row that sees no key; a softmax written out 0/0 = NaN.
        empty_row=EmptyRow.ZERO if op.name == SDPA else EmptyRow.NAN,
    )
    q, key, value, output = tensors
    return AttentionSite(
        op, position, spec, dims, q, key, key_transposed, value, output, masks.tensors, masks.notes
    )
