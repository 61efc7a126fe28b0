"""Canonicalize: the clean-up a kernel writer does by hand, as five small rewrites.

    fold    rsqrt(E) * X[m] * 2    ->  X[m] * 0.25               (rank E = 64)
    exp2    exp(QK[m,p] - GM[p])   ->  exp2(QK[m,p] - GM[p])     QK, GM computed in log2 units
    scale   QK[m,p] = Q[e,p] * K[e,m] * c   ->   QS[e,p] = Q[e,p] * c
                                                 QK[m,p] = QS[e,p] * K[e,m]
    cse     B[p] = X[m,p] where A[p] = X[m,p] came first   ->   readers of B read A
    dce     Einsums no output depends on are dropped

`exp2` is FlashAttention-2's (and Triton's tutorial's) trick: exp(x) = 2^(x*log2(e)), and when
the exponent is a difference of scores and of their running max, multiplying the scores by
log2(e) where they are computed (max commutes with a positive scale) puts the whole softmax in
base 2; `scale` then moves that constant, with the 1/sqrt(E) softmax scale, onto Q, read once:
E*P multiplies instead of M*P. Each rewrite is exact in real arithmetic; in floating point they
reassociate products (`(q*k)*c` becomes `(q*c)*k`) and round log2(e), so results agree to a few
ulps, not bit for bit. Folding keeps IEEE identities: `x + 0` is kept (-0 + 0 is +0, not -0),
and so are `x - x` and `x * 0` (NaN when x is infinite); constants fold only to a nonzero real
value (so the sign of a zero never depends on the folding). The rewrites repeat until nothing
changes, so the pass is idempotent. Run it after the pipelines that match `exp` (running-reduce
does).

The fold rules live in `folding.py`, exp2 and scale in `base2.py`; cse and dce are here.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from attncc.ir import (
    Access,
    Call,
    Cascade,
    Einsum,
    Expr,
    map_expressions,
    rename_tensors,
)
from attncc.passes.base import CascadePass, PassResult
from attncc.passes.base2 import fold_scales, to_exp2
from attncc.passes.dce import DeadCodeElimination
from attncc.passes.folding import concrete_sizes, fold_expr, map_cascade
from attncc.passes.registry import register


@register
@dataclass(frozen=True)
class Canonicalize(CascadePass):
    """Each option switches one rewrite of the module docstring on or off."""

    name = "canonicalize"
    fold: bool = True
    scale: bool = True
    exp2: bool = True
    cse: bool = True
    dce: bool = True

    def apply(self, cascade: Cascade) -> PassResult:
        remarks: list[str] = []
        # A round that changes the cascade removes an exp, or an Einsum, or moves the constant
        # factors of a contraction onto an input (one Einsum more, one such contraction fewer;
        # nothing puts them back), so the loop ends: usually the second round finds nothing.
        while True:
            rewritten = self._round(cascade, remarks)
            if rewritten == cascade:
                return PassResult(cascade, tuple(dict.fromkeys(remarks)))
            cascade = rewritten

    def _round(self, cascade: Cascade, remarks: list[str]) -> Cascade:
        # cse and dce come before scale: the reads they remove would make it refuse an input.
        sizes = concrete_sizes(cascade)
        if self.fold:
            cascade = map_cascade(cascade, lambda e: fold_expr(e, sizes))
        if self.cse:
            cascade = _eliminate_common(cascade, remarks)
        if self.dce:
            cascade = _eliminate_dead(cascade, remarks)
        if self.exp2:
            cascade = to_exp2(cascade, self.scale, remarks)
            if self.fold:
                cascade = map_cascade(cascade, lambda e: fold_expr(e, sizes))
        if self.scale:
            cascade = fold_scales(cascade, remarks)
        return cascade


# ----------------------------------------------------------------------------- cse


def _signature(einsum: Einsum) -> Einsum:
    """`einsum` with its own name blanked, so that running updates compare by structure."""

    def blank(expr: Expr) -> Expr:
        if isinstance(expr, Access) and expr.tensor == einsum.tensor:
            return Access("", expr.indices)
        if isinstance(expr, Call):
            return Call(expr.op, tuple(blank(a) for a in expr.args))
        return expr

    return replace(map_expressions(einsum, blank), tensor="")


def _eliminate_common(cascade: Cascade, remarks: list[str]) -> Cascade:
    # A[p] = X[m,p];  B[p] = X[m,p];  Y = B[p]   ->   A[p] = X[m,p];  Y = A[p]
    outputs = set(cascade.output_names())
    while True:
        first: dict[Einsum, str] = {}
        pair = None
        for einsum in cascade.einsums:
            key = _signature(einsum)
            earlier = first.setdefault(key, einsum.tensor)
            if earlier == einsum.tensor:
                continue
            if earlier in outputs and einsum.tensor in outputs:
                remarks.append(f"cse: outputs {earlier} and {einsum.tensor} are equal; both kept")
                continue
            # an output keeps its name: the temporary equal to it goes, whichever came first
            pair = (
                (einsum.tensor, earlier) if einsum.tensor in outputs else (earlier, einsum.tensor)
            )
            break
        if pair is None:
            return cascade
        kept, dropped = pair
        remarks.append(f"cse: {dropped} computes what {kept} does; its readers read {kept}")
        remaining = tuple(e for e in cascade.einsums if e.tensor != dropped)
        cascade = rename_tensors(replace(cascade, einsums=remaining), {dropped: kept})


def _eliminate_dead(cascade: Cascade, remarks: list[str]) -> Cascade:
    result = DeadCodeElimination().apply(cascade)
    remarks += [f"dce: {remark}" for remark in result.remarks]
    return result.cascade
