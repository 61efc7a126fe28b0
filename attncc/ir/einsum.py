"""The Einsum: one statement of a cascade, `Z[lhs] = reduce(indices) expr where filter`.

The iteration space of an Einsum is every index variable it mentions: on the left, in the
expression and in the filter. Variables missing on the left are reduced with the explicit
`reduce` operator. A filter restricts the iteration space; an output point none of whose
reduction points survive takes the filter's `fill` (by default the identity of the reduction,
or 0 for an Einsum that reduces nothing). An Einsum whose left side indexes a rank with `r + 1`
is a running (iterative) update over that rank and starts from `init` at coordinate 0.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import sympy

from attncc.errors import SourceSpan
from attncc.ir.expr import Access, Expr, accesses, indices_used
from attncc.ir.indexing import IndexExpr, index_vars


class ReduceOp(enum.Enum):
    SUM = "sum"
    MAX = "max"
    MIN = "min"


@dataclass(frozen=True)
class Filter:
    """Points where `predicate` is false are outside the iteration space; see module docstring."""

    predicate: Expr
    fill: float | None = None

    def __post_init__(self) -> None:
        if self.fill is not None and math.isnan(self.fill):
            raise ValueError("NaN is not a valid fill (it would break equality and the text form)")


@dataclass(frozen=True)
class Einsum:
    tensor: str
    indices: tuple[IndexExpr, ...]
    expr: Expr
    reduce: ReduceOp | None = None
    filter: Filter | None = None
    init: Expr | None = None
    span: SourceSpan | None = field(default=None, compare=False, repr=False)
    init_span: SourceSpan | None = field(default=None, compare=False, repr=False)

    @property
    def output(self) -> Access:
        return Access(self.tensor, self.indices)

    @property
    def lhs_vars(self) -> frozenset[str]:
        return frozenset().union(*(index_vars(i) for i in self.indices))

    @property
    def iterative_index(self) -> str | None:
        """`r` when the left side writes coordinate `r + 1` of some rank (a running update)."""
        for index in self.indices:
            var = iteration_successor(index)
            if var is not None:
                return var
        return None

    @property
    def space(self) -> frozenset[str]:
        """Every index variable of the iteration space."""
        used = self.lhs_vars | indices_used(self.expr)
        if self.filter is not None:
            used |= indices_used(self.filter.predicate)
        return used

    @property
    def reduced(self) -> frozenset[str]:
        return self.space - self.lhs_vars

    @property
    def reads(self) -> frozenset[str]:
        """Tensors this Einsum reads: in its expression, its filter and its initial value."""
        return frozenset(a.tensor for a in self.read_accesses())

    @property
    def init_indices(self) -> tuple[IndexExpr, ...]:
        """Where the initial value of a running update is written: `r + 1` becomes 0."""
        return tuple(sympy.Integer(0) if iteration_successor(i) else i for i in self.indices)

    def parts(self) -> tuple[Expr, ...]:
        """The expressions that read tensors: the right side, then the filter's predicate and
        the initial value where there are."""
        predicate = (self.filter.predicate,) if self.filter is not None else ()
        init = (self.init,) if self.init is not None else ()
        return (self.expr, *predicate, *init)

    def read_accesses(self) -> tuple[Access, ...]:
        """Every access on the right side, the filter and the initial value, in order."""
        return tuple(a for part in self.parts() for a in accesses(part))


def iteration_successor(index: IndexExpr) -> str | None:
    """`r` when `index` is exactly `r + 1` for an index variable `r`, else None."""
    variables = index_vars(index)
    if len(variables) != 1:
        return None
    (name,) = variables
    symbol = next(s for s in index.free_symbols if s.name == name)
    return name if sympy.expand(index - symbol) == 1 else None


def map_expressions(einsum: Einsum, fn: Callable[[Expr], Expr]) -> Einsum:
    """`einsum` with `fn` applied to its expression, its filter's predicate and its initial
    value (the parts that read tensors)."""
    filter_ = einsum.filter and replace(einsum.filter, predicate=fn(einsum.filter.predicate))
    init = None if einsum.init is None else fn(einsum.init)
    return replace(einsum, expr=fn(einsum.expr), filter=filter_, init=init)
