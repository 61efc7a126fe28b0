"""Deferred division (FuseMax Section IV-C, from FlashAttention-2): move a division by a value
that does not vary along the reduced indices past the reduction.

    A[m,p] = SN[m,p] / SD[p]             SNV[f,p] = SN[m,p] * V[f,m]
    AV[f,p] = A[m,p] * V[f,m]      ->    AV[f,p] = SNV[f,p] / SD[p]

sum_m (SN/SD)*V = (sum_m SN*V) / SD holds because SD does not depend on m: F*P divisions
instead of M*P, and the division no longer needs SD before the sum, which removes a pass.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from attncc.ir import (
    Access,
    Call,
    Cascade,
    Einsum,
    Expr,
    ReduceOp,
    format_expr,
    indices_used,
    product,
    product_factors,
    substitute,
)
from attncc.passes.base import CascadePass, PassResult
from attncc.passes.dce import live_tensors
from attncc.passes.names import fresh_name, taken_names
from attncc.passes.registry import register


@register
@dataclass(frozen=True)
class DeferDivision(CascadePass):
    name = "defer-div"

    def apply(self, cascade: Cascade) -> PassResult:
        remarks: list[str] = []
        original = cascade
        while True:
            rewritten = _defer_one(cascade, remarks)
            if rewritten is None:
                break
            cascade = rewritten
        if not remarks and cascade == original:
            remarks.append("no sum of products reads a quotient (A = N / D)")
        return PassResult(cascade, tuple(dict.fromkeys(remarks)))


def _is_sum(einsum: Einsum) -> bool:
    return einsum.reduce is ReduceOp.SUM and einsum.filter is None and einsum.init is None


def _division(cascade: Cascade, factor: Expr) -> tuple[Einsum, Expr, Expr] | None:
    """(A, numerator, divisor) when `factor` reads an Einsum A = numerator / divisor, with the
    operands in the reader's indices."""
    if not isinstance(factor, Access):
        return None
    writer = cascade.writer(factor.tensor)
    if writer is None or writer.reduce or writer.filter or writer.init is not None:
        return None
    if not (isinstance(writer.expr, Call) and writer.expr.op == "div"):
        return None
    mapping = {
        str(index): read
        for index, read in zip(writer.indices, factor.indices, strict=True)
        if index.is_Symbol
    }
    numerator, divisor = (substitute(e, mapping) for e in writer.expr.args)
    return writer, numerator, divisor


def _defer_one(cascade: Cascade, remarks: list[str]) -> Cascade | None:
    for position, consumer in enumerate(cascade.einsums):
        if not _is_sum(consumer) or consumer.iterative_index is not None:
            continue
        factors = product_factors(consumer.expr)
        for k, factor in enumerate(factors):
            found = _division(cascade, factor)
            if found is None:
                continue
            quotient, numerator, divisor = found
            varying = indices_used(divisor) & consumer.reduced
            if varying:
                remarks.append(
                    f"{consumer.tensor}: {quotient.tensor}'s divisor {format_expr(divisor)} "
                    f"varies with {', '.join(sorted(varying))}, which {consumer.tensor} sums "
                    "over: the division cannot move past the sum"
                )
                continue
            replaced = [*factors[:k], numerator, *factors[k + 1 :]]
            return _rewrite(cascade, position, replaced, divisor, quotient.tensor)
    return None


def _rewrite(
    cascade: Cascade, position: int, factors: list[Expr], divisor: Expr, quotient: str
) -> Cascade:
    consumer = cascade.einsums[position]
    taken = taken_names(cascade)
    base = "".join(f.tensor for f in factors if isinstance(f, Access)) or consumer.tensor
    numerator = Einsum(
        tensor=fresh_name(base, taken),
        indices=consumer.indices,
        expr=product(factors),
        reduce=ReduceOp.SUM,
        span=consumer.span,
    )
    divided = replace(consumer, expr=Call("div", (numerator.output, divisor)), reduce=None)
    einsums = [*cascade.einsums[:position], numerator, divided, *cascade.einsums[position + 1 :]]
    rewritten = replace(cascade, einsums=tuple(einsums))
    # The quotient goes when nothing reads it any more; other dead code is dce's business.
    if quotient in live_tensors(rewritten):
        return rewritten
    return replace(rewritten, einsums=tuple(e for e in einsums if e.tensor != quotient))
