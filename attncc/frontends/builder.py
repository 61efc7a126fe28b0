"""A small Python API for writing cascades, with operators in place of IR constructors.

    b = CascadeBuilder("softmax")
    m, p = b.rank("M"), b.rank("P")
    X = b.input("X", [m, p])
    GM = b.let("GM", [p], X[m, p], reduce="max")
    b.output("Y", [m, p])
    b.let("Y", [m, p], exp(X[m, p] - GM[p]))
    cascade = b.build()

Index handles (`m`, `m1 + 1`, `m1*b.size("M0") + m0`) are integer expressions used inside
`T[...]`; in arithmetic with values or in comparisons they become coordinate values (`m <= p`).
`Value` wraps an IR expression so that `+ - * / < <= == & | ~` build IR; `build()` verifies.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import sympy

from attncc.ir import (
    Access,
    Call,
    Cascade,
    Const,
    Coord,
    DType,
    Einsum,
    Expr,
    Filter,
    Partition,
    Rank,
    ReduceOp,
    Role,
    Size,
    TensorDecl,
    index_name,
    index_symbol,
    index_value,
    size_symbol,
    verify,
)


class Index:
    """An integer expression of index variables and rank sizes (a sympy expression)."""

    def __init__(self, expr: sympy.Expr) -> None:
        self.expr = sympy.sympify(expr)

    def __add__(self, other: Index | int) -> Index:
        return Index(self.expr + _index(other))

    def __radd__(self, other: int) -> Index:
        return Index(_index(other) + self.expr)

    def __sub__(self, other: Index | int) -> Index:
        return Index(self.expr - _index(other))

    def __rsub__(self, other: int) -> Index:
        return Index(_index(other) - self.expr)

    def __mul__(self, other: Index | int) -> Index:
        return Index(self.expr * _index(other))

    def __rmul__(self, other: int) -> Index:
        return Index(_index(other) * self.expr)

    def __floordiv__(self, other: Index | int) -> Index:
        return Index(sympy.floor(self.expr / _index(other)))

    def __mod__(self, other: Index | int) -> Index:
        return Index(sympy.Mod(self.expr, _index(other)))

    def __neg__(self) -> Index:
        return Index(-self.expr)

    def value(self) -> Value:
        return Value(index_value(self.expr))

    def __lt__(self, other: object) -> Value:
        return self.value() < other

    def __le__(self, other: object) -> Value:
        return self.value() <= other

    def __gt__(self, other: object) -> Value:
        return self.value() > other

    def __ge__(self, other: object) -> Value:
        return self.value() >= other

    def __eq__(self, other: object) -> Value:  # type: ignore[override]
        return self.value() == other

    def __ne__(self, other: object) -> Value:  # type: ignore[override]
        return self.value() != other

    __hash__ = None  # type: ignore[assignment]


def _index(value: object) -> sympy.Expr:
    if isinstance(value, Index):
        return value.expr
    if isinstance(value, int):
        return sympy.Integer(value)
    raise TypeError(f"an index expression takes index handles and integers, not {value!r}")


class Value:
    """An IR expression under construction; operators build map-operator calls."""

    def __init__(self, expr: Expr) -> None:
        self.expr = expr

    def _binary(self, op: str, other: object, reflected: bool = False) -> Value:
        operands = (self.expr, value(other).expr)
        return Value(Call(op, operands[::-1] if reflected else operands))

    def __add__(self, other: object) -> Value:
        return self._binary("add", other)

    def __radd__(self, other: object) -> Value:
        return self._binary("add", other, reflected=True)

    def __sub__(self, other: object) -> Value:
        return self._binary("sub", other)

    def __rsub__(self, other: object) -> Value:
        return self._binary("sub", other, reflected=True)

    def __mul__(self, other: object) -> Value:
        return self._binary("mul", other)

    def __rmul__(self, other: object) -> Value:
        return self._binary("mul", other, reflected=True)

    def __truediv__(self, other: object) -> Value:
        return self._binary("div", other)

    def __rtruediv__(self, other: object) -> Value:
        return self._binary("div", other, reflected=True)

    def __neg__(self) -> Value:
        return Value(Call("neg", (self.expr,)))

    def __lt__(self, other: object) -> Value:
        return self._binary("lt", other)

    def __le__(self, other: object) -> Value:
        return self._binary("le", other)

    def __gt__(self, other: object) -> Value:
        return self._binary("gt", other)

    def __ge__(self, other: object) -> Value:
        return self._binary("ge", other)

    def __eq__(self, other: object) -> Value:  # type: ignore[override]
        return self._binary("eq", other)

    def __ne__(self, other: object) -> Value:  # type: ignore[override]
        return self._binary("ne", other)

    def __and__(self, other: object) -> Value:
        return self._binary("and", other)

    def __or__(self, other: object) -> Value:
        return self._binary("or", other)

    def __invert__(self) -> Value:
        return Value(Call("not", (self.expr,)))

    __hash__ = None  # type: ignore[assignment]


def value(operand: object) -> Value:
    """Any operand (Value, Index, number, IR expression) as a Value."""
    if isinstance(operand, Value):
        return operand
    if isinstance(operand, Index):
        return operand.value()
    if isinstance(operand, bool):
        raise TypeError("use a comparison, not a Python bool, as a predicate")
    if isinstance(operand, int | float):
        return Value(Const(float(operand)))
    if isinstance(operand, Access | Const | Coord | Size | Call):
        return Value(operand)
    raise TypeError(f"cannot use {operand!r} in a cascade expression")


def _call(op: str, *operands: object) -> Value:
    return Value(Call(op, tuple(value(o).expr for o in operands)))


def exp(x: object) -> Value:
    return _call("exp", x)


def exp2(x: object) -> Value:
    return _call("exp2", x)


def log(x: object) -> Value:
    return _call("log", x)


def tanh(x: object) -> Value:
    return _call("tanh", x)


def sigmoid(x: object) -> Value:
    return _call("sigmoid", x)


def sqrt(x: object) -> Value:
    return _call("sqrt", x)


def rsqrt(x: object) -> Value:
    return _call("rsqrt", x)


def maximum(a: object, b: object) -> Value:
    return _call("max", a, b)


def minimum(a: object, b: object) -> Value:
    return _call("min", a, b)


def select(condition: object, if_true: object, if_false: object) -> Value:
    return _call("select", condition, if_true, if_false)


@dataclass(frozen=True)
class TensorRef:
    """A tensor by name; `T[i, j]` is an access. Refer to a running tensor before its Einsum."""

    name: str

    def __getitem__(self, indices: object) -> Value:
        items = indices if isinstance(indices, tuple) else (indices,)
        return Value(Access(self.name, tuple(_index(i) for i in items)))


class CascadeBuilder:
    """Collects declarations and Einsums in order; `build()` returns the verified Cascade."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._ranks: list[Rank] = []
        self._partitions: list[Partition] = []
        self._decls: dict[Role, list[TensorDecl]] = {Role.INPUT: [], Role.OUTPUT: []}
        self._einsums: list[Einsum] = []

    def rank(self, name: str, size: int | Index | None = None) -> Index:
        """Declare rank `name` (symbolic size unless given); returns its index variable."""
        if name != name.upper() or not name[:1].isalpha():
            raise ValueError(f"rank name {name!r} must be upper case, starting with a letter")
        extent = size_symbol(name) if size is None else _index(size)
        self._ranks.append(Rank(name, extent))
        return Index(index_symbol(index_name(name)))

    def size(self, rank: str) -> Index:
        """The size of a rank, for index arithmetic (`m1*b.size("M0") + m0`)."""
        return Index(size_symbol(rank))

    def partition(self, rank: str, outer: str, inner: str) -> Index:
        """Split `rank` into `outer` tiles of the (declared) `inner` rank; returns the outer
        index variable."""
        self._partitions.append(Partition(rank, outer, inner))
        return Index(index_symbol(index_name(outer)))

    def input(self, name: str, indices: Sequence[Index], dtype: DType = DType.F32) -> TensorRef:
        self._declare(Role.INPUT, name, indices, dtype)
        return TensorRef(name)

    def output(self, name: str, indices: Sequence[Index], dtype: DType = DType.F32) -> None:
        """Declare an output; a later `let` with the same name writes it."""
        self._declare(Role.OUTPUT, name, indices, dtype)

    def _declare(self, role: Role, name: str, indices: Sequence[Index], dtype: DType) -> None:
        ranks = tuple(str(i.expr).upper() for i in indices)
        self._decls[role].append(TensorDecl(name, ranks, dtype, role))

    def let(
        self,
        name: str,
        indices: Sequence[Index],
        expr: object,
        *,
        reduce: str | None = None,
        where: object = None,
        fill: float | None = None,
        init: object = None,
    ) -> TensorRef:
        """Append the Einsum `name[indices] = reduce expr where ... else fill`.

        Indices missing on the left are summed unless `reduce` says "max" or "min". `init`
        is the coordinate-0 value of a running update (an index `r + 1` on the left).
        """
        filter_ = None if where is None else Filter(value(where).expr, fill)
        einsum = Einsum(
            tensor=name,
            indices=tuple(_index(i) for i in indices),
            expr=value(expr).expr,
            filter=filter_,
            init=None if init is None else value(init).expr,
        )
        op = ReduceOp(reduce) if reduce else (ReduceOp.SUM if einsum.reduced else None)
        self._einsums.append(replace(einsum, reduce=op))
        return TensorRef(name)

    def build(self) -> Cascade:
        cascade = Cascade(
            name=self.name,
            ranks=tuple(self._ranks),
            partitions=tuple(self._partitions),
            inputs=tuple(self._decls[Role.INPUT]),
            outputs=tuple(self._decls[Role.OUTPUT]),
            einsums=tuple(self._einsums),
        )
        verify(cascade)
        return cascade
