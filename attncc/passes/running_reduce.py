"""Running reduction (FuseMax Section IV-D, FlashAttention-2): over the outer rank of a
partition, replace a max that feeds exp() by a running max, and rescale the sums of that exp
whenever the max grows, so that the cascade needs one traversal of the tiles.

    GM[p] = max(m0, m1) S[m1,m0,p]          LM[m1,p] = max(m0) S[m1,m0,p]
                                            RM[m1+1,p] = max(RM[m1,p], LM[m1,p])
    SN[m1,m0,p] = exp(S - GM[p])       ->   SN[m1,m0,p] = exp(S - RM[m1+1,p])     (*)
    SD[p] = SN[m1,m0,p]                     SLD[m1,p] = SN[m1,m0,p]           (sum over m0)
                                            PRM[m1,p] = exp(RM[m1,p] - RM[m1+1,p])
                                            SPD[m1,p] = RD[m1,p] * PRM[m1,p]
                                            RD[m1+1,p] = SLD[m1,p] + SPD[m1,p]
    readers of SD[p]                   ->   read RD[M1,p]; readers of GM read RM[M1,p]

(*) SN and PRM are guarded: while RM is still -inf (a masked first tile), SN is 0 and PRM 1
rather than exp(-inf - -inf) = NaN.

Correct because exp(s - max_new) = exp(s - max_old) * exp(max_old - max_new): a running sum of
exp(s - RM) stays exact if it is multiplied by PRM each time RM grows. The pass applies when
(1) GM reduces exactly the outer and inner rank with max, (2) every Einsum that iterates the
tiles and reads GM computes exp(x - GM) elementwise, and (3) every reader of such an exp is a
sum over both tile ranks of a product with that exp as one factor.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace

import sympy

from attncc.errors import PassError
from attncc.ir import (
    Access,
    Call,
    Cascade,
    Const,
    Einsum,
    Expr,
    Partition,
    ReduceOp,
    index_symbol,
    map_expressions,
    product_factors,
    replace_accesses,
    size_symbol,
    tensors_read,
    walk,
)
from attncc.passes.base import CascadePass, PassResult
from attncc.passes.names import fresh_name, taken_names
from attncc.passes.registry import register


@register
@dataclass(frozen=True)
class RunningReduce(CascadePass):
    """`rank`: the outer rank of a partition to run over (default: every partition's)."""

    name = "running-reduce"
    rank: str | None = None

    def apply(self, cascade: Cascade) -> PassResult:
        parts = [p for p in cascade.partitions if self.rank in (None, p.outer)]
        if self.rank is not None and not parts:
            outers = ", ".join(p.outer for p in cascade.partitions) or "none"
            raise PassError(
                f"running-reduce: {self.rank} is not the outer rank of a partition "
                f"(outer ranks: {outers}); partition the rank first"
            )
        if not parts:
            return PassResult(cascade, ("no partitioned rank; run partition first",))
        remarks: list[str] = []
        for part in parts:
            maxima = [e for e in cascade.einsums if _is_tile_max(e, part)]
            if not maxima:
                tiles = f"{part.outer.lower()} and {part.inner.lower()}"
                remarks.append(f"no unfiltered max over both {tiles} to run over {part.outer}")
            for maximum in maxima:
                current = cascade.writer(maximum.tensor)
                assert current is not None, "the max is rewritten only once"
                refusal = _refusal(cascade, current, part)
                if refusal:
                    remarks.append(f"{maximum.tensor} kept as a full max: {refusal}")
                else:
                    cascade = _rewrite(cascade, current, part)
        return PassResult(cascade, tuple(remarks))


def _is_tile_max(einsum: Einsum, part: Partition) -> bool:
    tiles = {part.outer.lower(), part.inner.lower()}
    return (
        einsum.reduce is ReduceOp.MAX
        and einsum.reduced == tiles
        and einsum.filter is None
        and einsum.init is None
    )


def _exp_of_difference(expr: Expr, maximum: str) -> bool:
    """`exp(x - GM[...])` with GM read nowhere in x."""
    if not (isinstance(expr, Call) and expr.op == "exp"):
        return False
    (argument,) = expr.args
    if not (isinstance(argument, Call) and argument.op == "sub"):
        return False
    minuend, subtrahend = argument.args
    reads_max = any(isinstance(n, Access) and n.tensor == maximum for n in walk(minuend))
    return isinstance(subtrahend, Access) and subtrahend.tensor == maximum and not reads_max


def _readers(cascade: Cascade, tensor: str) -> list[Einsum]:
    return [e for e in cascade.einsums if tensor in e.reads]


def _refusal(cascade: Cascade, maximum: Einsum, part: Partition) -> str | None:
    tiles = {part.outer.lower(), part.inner.lower()}
    for reader in _readers(cascade, maximum.tensor):
        if not (tiles & reader.space):
            continue
        if reader.tensor in cascade.output_names():
            return f"{reader.tensor} is an output: its values would change to be relative to RM"
        reads = [a for a in reader.read_accesses() if a.tensor == maximum.tensor]
        if not (
            _exp_of_difference(reader.expr, maximum.tensor)
            and reader.reduce is None
            and reader.filter is None
            and reader.init is None
            and tiles <= reader.lhs_vars
            and all(a.indices == maximum.indices for a in reads)
        ):
            return f"{reader.tensor} reads it but is not an elementwise exp(x - {maximum.tensor})"
        for consumer in _readers(cascade, reader.tensor):
            factors = product_factors(consumer.expr)
            if not (
                consumer.reduce is ReduceOp.SUM
                and tiles <= consumer.reduced
                and maximum.lhs_vars <= consumer.lhs_vars
                and consumer.filter is None
                and sum(reader.tensor in tensors_read(f) for f in factors) == 1
                and any(isinstance(f, Access) and f.tensor == reader.tensor for f in factors)
                and not any(maximum.tensor in tensors_read(f) for f in factors)
            ):
                return (
                    f"{consumer.tensor} reads {reader.tensor} but is not a sum over "
                    f"{part.outer.lower()}, {part.inner.lower()} of a product with it as a factor"
                )
    return None


def _with_outer(indices: tuple[sympy.Expr, ...], outer: sympy.Expr) -> tuple[sympy.Expr, ...]:
    """Indices with the outer tile index before the last (LM[h,m1,p] from GM[h,p])."""
    if not indices:
        return (outer,)
    return (*indices[:-1], outer, indices[-1])


def _exp_difference(a: Access, b: Access) -> Expr:
    return Call("exp", (Call("sub", (a, b)),))


def _unless_empty(running: Access, value: Expr, otherwise: float) -> Expr:
    """`value`, or `otherwise` while the running max is still -inf (every key so far masked):
    exp(-inf - -inf) would be NaN and would poison the running sums for good."""
    empty = Call("eq", (running, Const(-math.inf)))
    return Call("select", (empty, Const(otherwise), value))


def _rewrite(cascade: Cascade, maximum: Einsum, part: Partition) -> Cascade:
    """The cascade with `maximum` running over the outer rank of `part` (see module doc)."""
    taken = taken_names(cascade)
    tiles = {part.outer.lower(), part.inner.lower()}
    o = index_symbol(part.outer.lower())
    last = size_symbol(part.outer)
    at, at_next = _with_outer(maximum.indices, o), _with_outer(maximum.indices, o + 1)
    local, running = fresh_name("LM", taken), fresh_name("RM", taken)
    rescale = fresh_name("PRM", taken)
    exps = {r.tensor for r in _readers(cascade, maximum.tensor) if tiles & r.space}
    sums = [e for e in cascade.einsums if exps & e.reads]
    finals: dict[str, str] = {maximum.tensor: running}

    def to_current(access: Access) -> Expr:
        """The exp reads the running max of this tile, RM[m1+1], instead of the full max."""
        return Access(running, at_next) if access.tensor == maximum.tensor else access

    updates: list[Einsum] = []
    einsums: list[Einsum] = []
    for einsum in cascade.einsums:
        if einsum.tensor == maximum.tensor:
            einsums.append(Einsum(local, at, maximum.expr, ReduceOp.MAX, span=maximum.span))
            max_update = Call("max", (Access(running, at), Access(local, at)))
            einsums.append(Einsum(running, at_next, max_update, init=Const(-math.inf)))
        elif einsum.tensor in exps:
            exp = _map_reads(einsum, to_current)
            guarded = _unless_empty(Access(running, at_next), exp.expr, 0.0)
            einsums.append(replace(exp, expr=guarded))
        elif einsum in sums:
            where = _with_outer(einsum.indices, o)
            where_next = _with_outer(einsum.indices, o + 1)
            partial = fresh_name(f"L{einsum.tensor}", taken)
            total = fresh_name(f"R{einsum.tensor}", taken)
            scaled = fresh_name(f"P{einsum.tensor}", taken)
            einsums.append(replace(einsum, tensor=partial, indices=where))
            carried = Call("mul", (Access(total, where), Access(rescale, at)))
            updates.append(Einsum(scaled, where, carried))
            step = Call("add", (Access(partial, where), Access(scaled, where)))
            updates.append(Einsum(total, where_next, step, init=Const(0.0)))
            finals[einsum.tensor] = total
            if einsum is sums[-1]:
                growth = _exp_difference(Access(running, at), Access(running, at_next))
                prm = _unless_empty(Access(running, at_next), growth, 1.0)
                einsums.append(Einsum(rescale, at, prm))
                einsums += updates
        else:
            einsums.append(einsum)

    def final(access: Access) -> Expr:
        if access.tensor not in finals:
            return access
        return Access(finals[access.tensor], _with_outer(access.indices, last))

    # Whatever read the full max or a full sum now reads the running value after the last
    # tile; a max or sum that is an output is still written, from that value, at the end.
    einsums = [_map_reads(e, final) for e in einsums]
    outputs = set(cascade.output_names())
    for replaced in (maximum, *sums):
        if replaced.tensor in outputs:
            einsums.append(Einsum(replaced.tensor, replaced.indices, final(replaced.output)))
    return replace(cascade, einsums=tuple(einsums))


def _map_reads(einsum: Einsum, replacement: Callable[[Access], Expr]) -> Einsum:
    return map_expressions(einsum, lambda expr: replace_accesses(expr, replacement))
