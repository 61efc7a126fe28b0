"""Mask predicates as boolean formulas over integer intervals: the symbolic half of sparsity.

A mask predicate (`m <= p`, a NATTEN window with clamps, `DOC[m] == DOC[p]`) is lowered once,
independently of any sequence length, into a `Formula`: and/or/not over `Atom`s, each saying
that an integer linear form lies in an interval, plus opaque `DataAtom`s for comparisons that
read tensors. Three rewrites make every arithmetic comparison linear:

- `min`, `max`, `abs` and `select` split into cases: `min(a, b) <= c` is
  `(a <= b and a <= c) or (a > b and b <= c)`;
- floor division and modulo by a constant `c` introduce digits: a variable v becomes
  `c*q + r` with 0 <= r < c (a `Split`), so `v // c` is `q` and `v % c` is `r`; for a longer
  argument the remainder part's range is split into its few possible quotients;
- comparisons are normalized to `form in [lo, hi]` with coprime integer coefficients.

Nested divisions such as `(x // W) % H` split digits again (`q` by H), so row-major grid
coordinates of a flat position become independent digit variables. `attncc.analysis.sparsity`
then decides each tile exactly from the intervals the digits take over the tile.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass

import sympy

from attncc.analysis.integer_feasibility import Form
from attncc.errors import AnalysisError
from attncc.ir import Call, Const, Coord, Expr, Size, format_expr, tensors_read


@dataclass(frozen=True)
class Atom:
    """`form` lies in [lo, hi]; None is an open end."""

    form: Form
    lo: int | None
    hi: int | None


@dataclass(frozen=True)
class DataAtom:
    """A comparison that reads tensors: decided from the data at run time."""

    expr: Expr


@dataclass(frozen=True)
class Not:
    arg: Formula


@dataclass(frozen=True)
class And:
    args: tuple[Formula, ...]


@dataclass(frozen=True)
class Or:
    args: tuple[Formula, ...]


Formula = bool | Atom | DataAtom | Not | And | Or


@dataclass(frozen=True)
class Split:
    """`var = divisor*quotient + remainder` with 0 <= remainder < divisor."""

    var: str
    divisor: int
    quotient: str
    remainder: str


@dataclass(frozen=True)
class Lowered:
    """A predicate over `key` and `query` as a formula over digit variables."""

    formula: Formula
    key: str
    query: str
    splits: tuple[Split, ...]


def _flat(kind: type[And] | type[Or], args: tuple[Formula, ...]) -> Formula:
    """`args` joined by `kind`, flattened, with constants folded: False absorbs an And and
    vanishes from an Or, True the other way round."""
    absorbing = kind is Or
    flat: list[Formula] = []
    for arg in args:
        if arg is absorbing:
            return absorbing
        if arg is not (not absorbing):
            flat.extend(arg.args if isinstance(arg, kind) else (arg,))
    return (not absorbing) if not flat else flat[0] if len(flat) == 1 else kind(tuple(flat))


def conj(*args: Formula) -> Formula:
    return _flat(And, args)


def disj(*args: Formula) -> Formula:
    return _flat(Or, args)


def leaves(node: Formula) -> Iterator[Atom | DataAtom]:
    """The atoms and data atoms of a formula, in order."""
    if isinstance(node, Atom | DataAtom):
        yield node
    elif isinstance(node, Not):
        yield from leaves(node.arg)
    elif isinstance(node, And | Or):
        for arg in node.args:
            yield from leaves(arg)


def negate(arg: Formula) -> Formula:
    if isinstance(arg, bool):
        return not arg
    return arg.arg if isinstance(arg, Not) else Not(arg)


Case = tuple[Formula, sympy.Expr]
"""A piece of a piecewise-linear value: where it holds, and the linear value there."""

_COMPARISONS = {"lt", "le", "gt", "ge", "eq", "ne"}

# Positions and mask parameters are far below this; larger constants would overflow the int64
# arithmetic of tile bounds.
_LARGEST = 2.0**40


class _Lowering:
    def __init__(self, sizes: Mapping[str, int]) -> None:
        self.sizes = sizes
        self.splits: dict[tuple[str, int], Split] = {}
        # Static bounds of digit variables: a remainder of c lies in [0, c-1].
        self.upper: dict[str, int] = {}

    def formula(self, expr: Expr) -> Formula:
        if isinstance(expr, Const):
            return expr.value != 0
        if isinstance(expr, Call) and expr.op in ("and", "or"):
            parts = [self.formula(a) for a in expr.args]
            return conj(*parts) if expr.op == "and" else disj(*parts)
        if isinstance(expr, Call) and expr.op == "not":
            return negate(self.formula(expr.args[0]))
        if tensors_read(expr):
            return DataAtom(expr)
        if isinstance(expr, Call) and expr.op in _COMPARISONS:
            return self.comparison(expr.op, *expr.args)
        raise AnalysisError(f"{format_expr(expr)} is not a condition a mask can use")

    def comparison(self, op: str, lhs: Expr, rhs: Expr) -> Formula:
        if op == "ne":
            return negate(self.comparison("eq", lhs, rhs))
        pieces = []
        for guard_a, a in self.cases(lhs):
            for guard_b, b in self.cases(rhs):
                pieces.append(conj(guard_a, guard_b, self.relation(op, a - b)))
        return disj(*pieces)

    def relation(self, op: str, diff: sympy.Expr) -> Formula:
        """`diff op 0` for a linear `diff` of integer variables, as atoms."""
        if op == "eq":
            return conj(at_most(diff), at_most(-diff))
        side = diff if op in ("le", "lt") else -diff
        return at_most(side, strict=op in ("lt", "gt"))

    def cases(self, expr: Expr) -> list[Case]:
        if isinstance(expr, Coord):
            return [(True, sympy.Symbol(expr.name, integer=True))]
        if isinstance(expr, Const):
            if not abs(expr.value) < _LARGEST:
                raise AnalysisError(
                    f"a mask compares positions with {expr.value}; use a finite constant "
                    f"below {_LARGEST:.0e}"
                )
            return [(True, sympy.Rational(expr.value))]
        if isinstance(expr, Size):
            if expr.rank not in self.sizes:
                raise AnalysisError(f"the mask uses size {expr.rank}; give it a value")
            return [(True, sympy.Integer(self.sizes[expr.rank]))]
        if isinstance(expr, Call):
            return self.call_cases(expr)
        raise AnalysisError(f"{format_expr(expr)} is not an integer expression of coordinates")

    def call_cases(self, call: Call) -> list[Case]:
        if call.op == "select":
            cond = self.formula(call.args[0])
            return [
                *((conj(cond, g), v) for g, v in self.cases(call.args[1])),
                *((conj(negate(cond), g), v) for g, v in self.cases(call.args[2])),
            ]
        if call.op in ("neg", "abs"):
            out: list[Case] = []
            for guard, value in self.cases(call.args[0]):
                if call.op == "neg":
                    out.append((guard, -value))
                else:
                    out.append((conj(guard, at_most(-value)), value))
                    out.append((conj(guard, negate(at_most(-value))), -value))
            return out
        combine = _BINARY.get(call.op)
        if combine is None:
            raise AnalysisError(f"a mask cannot use {call.op} ({format_expr(call)})")
        return [
            (conj(ga, gb, guard), value)
            for ga, a in self.cases(call.args[0])
            for gb, b in self.cases(call.args[1])
            for guard, value in combine(self, a, b, call)
        ]

    def product(self, a: sympy.Expr, b: sympy.Expr, call: Call) -> list[Case]:
        if not (a.is_number or b.is_number):
            raise AnalysisError(f"{format_expr(call)} multiplies two coordinates")
        return [(True, a * b)]

    def extreme(self, a: sympy.Expr, b: sympy.Expr, call: Call) -> list[Case]:
        a_le_b = at_most(a - b)
        low, high = (a, b) if call.op == "min" else (b, a)
        return [(a_le_b, low), (negate(a_le_b), high)]

    def division(self, a: sympy.Expr, b: sympy.Expr, call: Call) -> list[Case]:
        """`a // c` and `a % c`: with every variable v of `a` written c*q_v + r_v, a is
        c*Q + R where R, a sum of remainders, takes few values of R // c: one case each."""
        if not (b.is_Integer and b > 0):
            raise AnalysisError(f"{format_expr(call)} divides by {b}, not a positive constant")
        c = int(b)
        quotient, remainder = sympy.Integer(0), sympy.Integer(0)
        const = a.as_coefficients_dict().get(sympy.Integer(1), 0)
        if not sympy.Rational(const).is_integer:
            raise AnalysisError(f"{format_expr(call)} divides a non-integer")
        remainder += const
        for symbol, coeff in a.as_coefficients_dict().items():
            if symbol == 1:
                continue
            if not (symbol.is_Symbol and sympy.Rational(coeff).is_integer):
                raise AnalysisError(f"{format_expr(call)} is not a linear integer expression")
            q, r = self.digits(symbol.name, c)
            quotient += coeff * q
            remainder += coeff * r
        lo, hi = self.range(remainder)
        out: list[Case] = []
        quotients = range(lo // c, hi // c + 1)
        for k in quotients:
            # One possible quotient needs no guard (and a guard would tie digits together).
            holds = (
                conj(at_most(k * c - remainder), at_most(remainder - (k * c + c - 1)))
                if len(quotients) > 1
                else True
            )
            out.append((holds, quotient + k if call.op == "floordiv" else remainder - k * c))
        return out

    def digits(self, var: str, c: int) -> tuple[sympy.Expr, sympy.Expr]:
        """(v // c, v % c) as variables, splitting v on first use; a digit already below c
        is its own remainder."""
        symbol = sympy.Symbol(var, integer=True)
        if self.upper.get(var, c) < c:
            return sympy.Integer(0), symbol
        split = self.splits.get((var, c))
        if split is None:
            if any(s.var == var for s in self.splits.values()):
                raise AnalysisError(f"{var} is divided by two different constants")
            split = Split(var, c, f"{var}.q{c}", f"{var}.r{c}")
            self.splits[var, c] = split
            self.upper[split.remainder] = c - 1
        return sympy.Symbol(split.quotient, integer=True), sympy.Symbol(
            split.remainder, integer=True
        )

    def range(self, expr: sympy.Expr) -> tuple[int, int]:
        """Bounds of a sum of bounded digits (remainders) and a constant."""
        lo = hi = 0
        for symbol, coeff in expr.as_coefficients_dict().items():
            if symbol == 1:
                lo, hi = lo + int(coeff), hi + int(coeff)
                continue
            top = int(coeff) * self.upper[symbol.name]
            lo, hi = lo + min(0, top), hi + max(0, top)
        return lo, hi


_BINARY: dict[str, Callable[[_Lowering, sympy.Expr, sympy.Expr, Call], list[Case]]] = {
    "add": lambda self, a, b, call: [(True, a + b)],
    "sub": lambda self, a, b, call: [(True, a - b)],
    "mul": _Lowering.product,
    "min": _Lowering.extreme,
    "max": _Lowering.extreme,
    "floordiv": _Lowering.division,
    "mod": _Lowering.division,
}


def at_most(expr: sympy.Expr, *, strict: bool = False) -> Formula:
    """`expr <= 0` (`expr < 0` when `strict`) for a linear `expr` of integer variables with
    integer coefficients, as a normalized atom: form <= bound with an integer bound."""
    terms = expr.as_coefficients_dict()
    const = sympy.Rational(terms.pop(sympy.Integer(1), 0))
    if not terms:
        return bool(const < 0) if strict else bool(const <= 0)
    names = sorted((s.name, sympy.Rational(c)) for s, c in terms.items())
    if any(not c.is_integer for _, c in names):
        raise AnalysisError(f"{expr} <= 0 has a fractional coefficient")
    g = functools.reduce(math.gcd, (abs(int(c)) for _, c in names))
    # form < x is form <= ceil(x) - 1 over the integers; form <= x is form <= floor(x).
    limit = -const / g
    bound = int(sympy.ceiling(limit)) - 1 if strict else int(sympy.floor(limit))
    sign = 1 if names[0][1] > 0 else -1
    form = tuple((name, sign * int(c) // g) for name, c in names)
    return Atom(form, None, bound) if sign > 0 else Atom(form, -bound, None)


def substitute_splits(formula: Formula, splits: tuple[Split, ...]) -> Formula:
    """Atoms over split variables rewritten over their digits (v = c*q + r), to the leaves."""
    table = {s.var: s for s in splits}
    if not table:
        return formula

    def expand(name: str) -> sympy.Expr:
        split = table.get(name)
        if split is None:
            return sympy.Symbol(name, integer=True)
        return split.divisor * expand(split.quotient) + expand(split.remainder)

    def rewrite(node: Formula) -> Formula:
        if isinstance(node, Atom):
            if not any(name in table for name, _ in node.form):
                return node
            value = sum((coeff * expand(name) for name, coeff in node.form), start=sympy.Integer(0))
            parts = []
            if node.hi is not None:
                parts.append(at_most(value - node.hi))
            if node.lo is not None:
                parts.append(at_most(node.lo - value))
            return conj(*parts)
        if isinstance(node, Not):
            return negate(rewrite(node.arg))
        if isinstance(node, And):
            return conj(*map(rewrite, node.args))
        if isinstance(node, Or):
            return disj(*map(rewrite, node.args))
        return node

    return rewrite(formula)


@functools.lru_cache(maxsize=256)
def _lower(predicate: Expr, key: str, query: str, sizes: tuple[tuple[str, int], ...]) -> Lowered:
    lowering = _Lowering(dict(sizes))
    formula = lowering.formula(predicate)
    splits = tuple(lowering.splits.values())
    return Lowered(substitute_splits(formula, splits), key, query, splits)


def lower_predicate(
    predicate: Expr, *, key: str = "m", query: str = "p", sizes: Mapping[str, int] | None = None
) -> Lowered:
    """`predicate` (over coordinates `key` and `query`) as a formula over digit variables.

    Sizes the predicate names (`W` in `m % W`) must be given. Lowering depends only on the
    predicate, so it is cached and reused for every sequence length."""
    return _lower(predicate, key, query, tuple(sorted((sizes or {}).items())))
