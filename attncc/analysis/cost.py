"""Symbolic cost of a cascade: operation counts by kind and compulsory bytes, as sympy
expressions in the rank sizes.

Each map operator is counted once per point of the iteration space of its operands (a value
that does not vary along an index is computed once, not once per point). A sum of products is
counted as the contraction it is: one multiply-accumulate per point for two factors that vary
along the reduced indices, factors that do not vary along them applied once per output point
(sum_e(Q*K*s) = s * sum_e(Q*K)). Other reductions cost one operation of their kind per point.
Points of a partitioned rank pair (m1, m0) number M, not M1*M0: the domain ends at M. In a
block-sparse cascade, Einsums over the key tiles and the queries are scaled by the mask's
density (`density_S`, the fraction of tiles that are not EMPTY).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import sympy

from attncc.analysis.block_sparse import density_symbol
from attncc.errors import AnalysisError
from attncc.ir import (
    Call,
    Cascade,
    DType,
    Einsum,
    Expr,
    ReduceOp,
    TensorDecl,
    indices_used,
    product_factors,
    walk,
)

OP_KINDS: dict[str, str] = {
    "add": "add",
    "sub": "add",
    "neg": "add",
    "mul": "mul",
    "div": "div",
    "max": "max",
    "min": "min",
    "exp": "exp",
    "exp2": "exp",
    "log": "log",
    "log2": "log",
    "tanh": "tanh",
    "sigmoid": "sigmoid",
    "sqrt": "sqrt",
    "rsqrt": "rsqrt",
    "abs": "abs",
    "select": "select",
    "lt": "compare",
    "le": "compare",
    "gt": "compare",
    "ge": "compare",
    "eq": "compare",
    "ne": "compare",
    "and": "logic",
    "or": "logic",
    "not": "logic",
    "floordiv": "intdiv",
    "mod": "intdiv",
}
"""The kind each map operator is counted as (exp2 is an exp, subtraction an add)."""

REDUCE_KINDS: dict[ReduceOp, str] = {ReduceOp.SUM: "add", ReduceOp.MAX: "max", ReduceOp.MIN: "min"}

FLOPS_PER_OP: dict[str, int] = {"mac": 2}
"""Floating-point operations per counted operation; every kind not listed counts 1."""

DTYPE_BYTES: dict[DType, int] = {
    DType.F16: 2,
    DType.BF16: 2,
    DType.F32: 4,
    DType.F64: 8,
    DType.I32: 4,
    DType.I64: 8,
    DType.BOOL: 1,
}


@dataclass(frozen=True)
class EinsumCost:
    einsum: str
    points: sympy.Expr
    ops: tuple[tuple[str, sympy.Expr], ...]

    def op(self, kind: str) -> sympy.Expr:
        return dict(self.ops).get(kind, sympy.Integer(0))

    @property
    def flops(self) -> sympy.Expr:
        return _flops(self.ops)


@dataclass(frozen=True)
class CascadeCost:
    einsums: tuple[EinsumCost, ...]
    bytes_in: sympy.Expr
    bytes_out: sympy.Expr

    def totals(self) -> tuple[tuple[str, sympy.Expr], ...]:
        return _merge(self.einsums)

    @property
    def flops(self) -> sympy.Expr:
        return _flops(self.totals())


def extent(cascade: Cascade, var: str) -> sympy.Expr:
    """The number of coordinates index `var` takes."""
    rank = cascade.rank_of_index(var)
    if rank is None:
        raise AnalysisError(f"index {var} names no rank of {cascade.name}")
    return rank.size


def points(cascade: Cascade, variables: Iterable[str]) -> sympy.Expr:
    """Points of the iteration space over `variables`; a partition's outer and inner indices
    together span the partitioned rank (M points, not ceil(M/M0)*M0)."""
    remaining = set(variables)
    total: sympy.Expr = sympy.Integer(1)
    for part in cascade.partitions:
        outer, inner = part.outer.lower(), part.inner.lower()
        if outer in remaining and inner in remaining:
            remaining -= {outer, inner}
            parent = cascade.rank(part.rank)
            assert parent is not None, "verified cascades partition declared ranks"
            total *= parent.size
    for var in sorted(remaining):
        total *= extent(cascade, var)
    return total


def tensor_elements(cascade: Cascade, decl: TensorDecl) -> sympy.Expr:
    total: sympy.Expr = sympy.Integer(1)
    for name in decl.ranks:
        rank = cascade.rank(name)
        assert rank is not None, "verified cascades declare every rank they use"
        total *= rank.size
    return total


def einsum_cost(cascade: Cascade, einsum: Einsum) -> EinsumCost:
    counts: dict[str, sympy.Expr] = defaultdict(lambda: sympy.Integer(0))

    def count(kind: str, variables: Iterable[str], times: int = 1) -> None:
        counts[kind] += times * points(cascade, variables)

    def count_calls(expr: Expr) -> None:
        for node in walk(expr):
            if isinstance(node, Call):
                count(OP_KINDS[node.op], indices_used(node))

    if einsum.filter is not None:
        count_calls(einsum.filter.predicate)
        count("select", einsum.space)
    if einsum.init is not None:
        count_calls(einsum.init)
    factors = product_factors(einsum.expr)
    inner = [f for f in factors if indices_used(f) & einsum.reduced]
    if einsum.reduce is ReduceOp.SUM and inner:
        for factor in factors:
            count_calls(factor)
        if len(inner) >= 2:
            count("mac", einsum.space)
            count("mul", einsum.space, times=len(inner) - 2)
        else:
            count("add", einsum.space)
        count("mul", einsum.lhs_vars, times=len(factors) - len(inner))
    else:
        count_calls(einsum.expr)
        if einsum.reduce is not None:
            count(REDUCE_KINDS[einsum.reduce], einsum.space)
    # A block-sparse loop visits only the tiles its mask does not hide.
    share: sympy.Expr = sympy.Integer(1)
    for sparse in cascade.sparse:
        if {sparse.key_tile_index, sparse.query_index} <= einsum.space:
            share *= density_symbol(sparse)
    ops = tuple(sorted((k, sympy.expand(share * v)) for k, v in counts.items() if v != 0))
    return EinsumCost(einsum.tensor, points(cascade, einsum.space) * share, ops)


def cascade_cost(cascade: Cascade) -> CascadeCost:
    def total_bytes(decls: tuple[TensorDecl, ...]) -> sympy.Expr:
        return sympy.expand(
            sum(
                (tensor_elements(cascade, d) * DTYPE_BYTES[d.dtype or DType.F32] for d in decls),
                start=sympy.Integer(0),
            )
        )

    return CascadeCost(
        tuple(einsum_cost(cascade, e) for e in cascade.einsums),
        total_bytes(cascade.inputs),
        total_bytes(cascade.outputs),
    )


def evaluate(expr: sympy.Expr, sizes: Mapping[str, float]) -> int | float:
    """The value of a cost expression at concrete sizes; every size it uses must be given."""
    missing = sorted(s.name for s in expr.free_symbols if s.name not in sizes)
    if missing:
        raise AnalysisError(
            f"no size for {', '.join(missing)}; give them with --shapes "
            f"{','.join(f'{m}=...' for m in missing)}"
        )
    value = expr.subs({s: sizes[s.name] for s in expr.free_symbols})
    return int(value) if value.is_integer else float(value)


def _merge(costs: Iterable[EinsumCost]) -> tuple[tuple[str, sympy.Expr], ...]:
    totals: dict[str, sympy.Expr] = defaultdict(lambda: sympy.Integer(0))
    for cost in costs:
        for kind, value in cost.ops:
            totals[kind] += value
    return tuple(sorted((k, sympy.expand(v)) for k, v in totals.items()))


def _flops(ops: Iterable[tuple[str, sympy.Expr]]) -> sympy.Expr:
    return sympy.expand(sum((FLOPS_PER_OP.get(k, 1) * v for k, v in ops), start=sympy.Integer(0)))
