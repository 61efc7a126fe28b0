"""Value expressions: the right side of an Einsum, a tree of accesses, constants and map operators.

Leaves are tensor accesses (`K[e, m1*M0 + m0]`), floating-point constants, coordinates (the
value of an index variable, `m` in `m <= p`) and rank sizes (`E` in `rsqrt(E)`). Inner nodes
apply a map operator from `OPS`. The tree carries no meaning of its own: what an operator
computes is defined by each backend's table keyed by operator name.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass

import sympy

from attncc.ir.indexing import (
    IndexExpr,
    division_operands,
    factor_order,
    index_symbol,
    index_vars,
    size_names,
    size_symbol,
)


@dataclass(frozen=True)
class OpInfo:
    """A map operator: its arity, and its infix symbol and binding strength when it has one."""

    name: str
    arity: int
    symbol: str | None = None
    precedence: int = 100


# Binding strength of infix operators, loosest first; calls and atoms bind tightest (100).
OPS: dict[str, OpInfo] = {
    op.name: op
    for op in (
        OpInfo("or", 2, "or", 1),
        OpInfo("and", 2, "and", 2),
        OpInfo("not", 1, "not", 3),
        OpInfo("lt", 2, "<", 4),
        OpInfo("le", 2, "<=", 4),
        OpInfo("gt", 2, ">", 4),
        OpInfo("ge", 2, ">=", 4),
        OpInfo("eq", 2, "==", 4),
        OpInfo("ne", 2, "!=", 4),
        OpInfo("add", 2, "+", 5),
        OpInfo("sub", 2, "-", 5),
        OpInfo("mul", 2, "*", 6),
        OpInfo("div", 2, "/", 6),
        OpInfo("floordiv", 2, "//", 6),
        OpInfo("mod", 2, "%", 6),
        OpInfo("neg", 1, "-", 7),
        OpInfo("max", 2),
        OpInfo("min", 2),
        OpInfo("exp", 1),
        OpInfo("exp2", 1),
        OpInfo("log", 1),
        OpInfo("log2", 1),
        OpInfo("tanh", 1),
        OpInfo("sigmoid", 1),
        OpInfo("sqrt", 1),
        OpInfo("rsqrt", 1),
        OpInfo("abs", 1),
        OpInfo("select", 3),
    )
}

INFIX_BY_SYMBOL: dict[tuple[str, int], str] = {
    (op.symbol, op.arity): op.name for op in OPS.values() if op.symbol is not None
}


@dataclass(frozen=True)
class Access:
    """`tensor[indices]`; each index is a quasi-affine sympy expression."""

    tensor: str
    indices: tuple[IndexExpr, ...]


@dataclass(frozen=True)
class Const:
    """A floating-point constant; infinities allowed, NaN is not (it would break equality)."""

    value: float

    def __post_init__(self) -> None:
        if math.isnan(self.value):
            raise ValueError("NaN is not a valid IR constant")


@dataclass(frozen=True)
class Coord:
    """The value of index variable `name` at the current point (`m` in `m <= p`)."""

    name: str


@dataclass(frozen=True)
class Size:
    """The size of rank `rank` as a value (`E` in `rsqrt(E)`)."""

    rank: str


@dataclass(frozen=True)
class Call:
    """A map operator applied to operands; `op` is a key of `OPS`."""

    op: str
    args: tuple[Expr, ...]

    def __post_init__(self) -> None:
        info = OPS.get(self.op)
        if info is None:
            raise ValueError(f"unknown operator {self.op!r}")
        if len(self.args) != info.arity:
            raise ValueError(f"{self.op} takes {info.arity} operands, got {len(self.args)}")


Expr = Access | Const | Coord | Size | Call


def walk(expr: Expr) -> Iterator[Expr]:
    """Every node of `expr`, parents before children."""
    yield expr
    if isinstance(expr, Call):
        for arg in expr.args:
            yield from walk(arg)


def accesses(expr: Expr) -> Iterator[Access]:
    return (node for node in walk(expr) if isinstance(node, Access))


def tensors_read(expr: Expr) -> frozenset[str]:
    return frozenset(a.tensor for a in accesses(expr))


def indices_used(expr: Expr) -> frozenset[str]:
    """Index variables an expression ranges over: in access indices and as coordinates."""
    found: set[str] = set()
    for node in walk(expr):
        if isinstance(node, Access):
            for index in node.indices:
                found |= index_vars(index)
        elif isinstance(node, Coord):
            found.add(node.name)
    return frozenset(found)


def sizes_used(expr: Expr) -> frozenset[str]:
    """Rank sizes an expression refers to, as values or inside access indices."""
    found: set[str] = set()
    for node in walk(expr):
        if isinstance(node, Access):
            for index in node.indices:
                found |= size_names(index)
        elif isinstance(node, Size):
            found.add(node.rank)
    return frozenset(found)


def product(factors: list[Expr]) -> Expr:
    """The product of `factors`, left to right (the inverse of `product_factors`)."""
    result = factors[0]
    for factor in factors[1:]:
        result = Call("mul", (result, factor))
    return result


def product_factors(expr: Expr) -> list[Expr]:
    """The factors of a product tree, in order (a lone expression is a product of one)."""
    if isinstance(expr, Call) and expr.op == "mul":
        return [f for arg in expr.args for f in product_factors(arg)]
    return [expr]


def index_value(expr: sympy.Expr) -> Expr:
    """An integer index expression as a value expression of coordinates and sizes."""
    if isinstance(expr, sympy.Integer):
        return Const(float(expr))
    if isinstance(expr, sympy.Symbol):
        return Coord(expr.name) if expr.name[:1].islower() else Size(expr.name)
    if isinstance(expr, sympy.floor):
        numerator, denominator = division_operands(expr)
        return Call("floordiv", (index_value(numerator), index_value(denominator)))
    if isinstance(expr, sympy.Mod):
        return Call("mod", tuple(index_value(a) for a in expr.args))
    if isinstance(expr, sympy.Add | sympy.Mul):
        if isinstance(expr, sympy.Add):
            op, parts = "add", expr.as_ordered_terms()
        else:
            # Numbers, then index variables, then sizes: `2*m1*M0` as in index text.
            op, parts = "mul", sorted(expr.args, key=factor_order)
        result = index_value(parts[0])
        for part in parts[1:]:
            result = Call(op, (result, index_value(part)))
        return result
    raise TypeError(f"cannot use index expression {expr} as a value")


def as_index(expr: Expr) -> sympy.Expr | None:
    """A value expression of coordinates, sizes, integers, + and * as an index expression;
    None when it is anything else (the inverse of `index_value`)."""
    if isinstance(expr, Coord):
        return index_symbol(expr.name)
    if isinstance(expr, Size):
        return size_symbol(expr.rank)
    if isinstance(expr, Const) and expr.value.is_integer():
        return sympy.Integer(int(expr.value))
    if isinstance(expr, Call) and expr.op in ("add", "sub", "mul"):
        a, b = (as_index(x) for x in expr.args)
        if a is None or b is None:
            return None
        return {"add": a + b, "sub": a - b, "mul": a * b}[expr.op]
    return None


def substitute(expr: Expr, mapping: Mapping[str, IndexExpr]) -> Expr:
    """`expr` with index variables replaced by index expressions, in access indices and in
    coordinates (`m` -> `m1*M0 + m0`)."""
    symbols = {index_symbol(name): value for name, value in mapping.items()}
    if isinstance(expr, Access):
        return Access(expr.tensor, tuple(i.xreplace(symbols) for i in expr.indices))
    if isinstance(expr, Coord) and expr.name in mapping:
        return index_value(sympy.sympify(mapping[expr.name]))
    if isinstance(expr, Call):
        return Call(expr.op, tuple(substitute(a, mapping) for a in expr.args))
    return expr


def replace_accesses(expr: Expr, replacement: Callable[[Access], Expr]) -> Expr:
    """`expr` with every access replaced by `replacement(access)`."""
    if isinstance(expr, Access):
        return replacement(expr)
    if isinstance(expr, Call):
        return Call(expr.op, tuple(replace_accesses(a, replacement) for a in expr.args))
    return expr
