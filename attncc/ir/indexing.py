"""Index expressions: how an Einsum addresses a tensor, as sympy expressions.

A rank `M` has a size symbol `M` and an index variable `m` (its lower-case name); the IR relies
on that convention everywhere. An index expression is quasi-affine in index variables: a sum of
index variables times integer coefficients or size symbols (`m1*M0 + m0`), constants (`m1 + 1`,
`M1` for the final value of an iterative rank), and floor division or modulo by a positive
constant or size (`h // R` maps a query head to its key/value head under GQA).
"""

from __future__ import annotations

import functools
from collections.abc import Mapping

import numpy as np
import sympy

IndexExpr = sympy.Expr


@functools.cache
def size_symbol(rank: str) -> sympy.Symbol:
    """The size of rank `rank`: a positive integer symbol named like the rank (`M`)."""
    return sympy.Symbol(rank, integer=True, positive=True)


@functools.cache
def index_symbol(name: str) -> sympy.Symbol:
    """An index variable (`m`, `m1`): a non-negative integer symbol."""
    return sympy.Symbol(name, integer=True, nonnegative=True)


def index_name(rank: str) -> str:
    """The index variable of a rank: `M1` -> `m1`."""
    return rank.lower()


def is_index_symbol(sym: sympy.Basic) -> bool:
    """Index variables are lower case, sizes upper case (the rank-naming convention)."""
    return isinstance(sym, sympy.Symbol) and sym.name[:1].islower()


def index_vars(expr: sympy.Expr) -> frozenset[str]:
    """Names of the index variables an index expression uses."""
    return frozenset(s.name for s in expr.free_symbols if is_index_symbol(s))


def size_names(expr: sympy.Expr) -> frozenset[str]:
    """Names of the rank sizes an expression uses."""
    return frozenset(s.name for s in expr.free_symbols if not is_index_symbol(s))


def floordiv(numerator: sympy.Expr, denominator: sympy.Expr) -> sympy.Expr:
    return sympy.floor(numerator / denominator)


def is_quasi_affine(expr: sympy.Expr) -> bool:
    """True when `expr` is affine in index variables apart from floor, ceiling and modulo by
    positive index-free values."""
    if isinstance(expr, sympy.floor | sympy.ceiling | sympy.Mod):
        numerator, denominator = division_operands(expr)
        positive = denominator.is_positive is True
        return positive and not index_vars(denominator) and is_quasi_affine(numerator)
    if expr.has(sympy.zoo, sympy.nan, sympy.oo):
        return False
    if not index_vars(expr):
        return True
    if isinstance(expr, sympy.Symbol):
        return True
    if isinstance(expr, sympy.Add):
        return all(is_quasi_affine(term) for term in expr.args)
    if isinstance(expr, sympy.Mul):
        indexed = [f for f in expr.args if index_vars(f)]
        return len(indexed) == 1 and is_quasi_affine(indexed[0])
    return False


def division_operands(expr: sympy.Expr) -> tuple[sympy.Expr, sympy.Expr]:
    """(a, b) of `floor(a/b)`, `ceiling(a/b)` or `Mod(a, b)`. sympy keeps (n1*N0 + n0)/2 as
    n1*N0/2 + n0/2; `together` puts it back over one denominator."""
    if isinstance(expr, sympy.Mod):
        return expr.args[0], expr.args[1]
    numerator, denominator = sympy.fraction(sympy.together(expr.args[0]))
    return numerator, denominator


def format_index(expr: sympy.Expr) -> str:
    """Text form of an index or size expression; `parse_index` reads it back to an equal expr."""
    if isinstance(expr, sympy.floor):
        a, b = division_operands(expr)
        return f"{_format_operand(a)}//{_format_operand(b)}"
    if isinstance(expr, sympy.Mod):
        a, b = expr.args
        return f"{_format_operand(a)}%{_format_operand(b)}"
    if isinstance(expr, sympy.ceiling):
        a, b = division_operands(expr)
        return f"ceil({format_index(a)}/{format_index(b)})"
    if isinstance(expr, sympy.Add):
        terms = sorted(expr.args, key=_term_order)
        text = format_index(terms[0])
        for term in terms[1:]:
            coeff, _ = term.as_coeff_Mul()
            text += f"-{format_index(-term)}" if coeff.is_negative else f"+{format_index(term)}"
        return text
    if isinstance(expr, sympy.Mul):
        coeff, rest = expr.as_coeff_Mul()
        if coeff == -1:
            return f"-{_format_operand(rest)}"
        factors = sorted(expr.args, key=factor_order)
        return "*".join(_format_operand(f) for f in factors)
    return str(expr)


def _format_operand(expr: sympy.Expr) -> str:
    text = format_index(expr)
    compound = isinstance(expr, sympy.Add | sympy.floor | sympy.Mod) or (
        isinstance(expr, sympy.Integer) and expr < 0
    )
    return f"({text})" if compound else text


def _term_order(term: sympy.Expr) -> tuple[int, bool, str]:
    """Terms with index variables first (`m1*M0 + m0 + 1`), constants last; within a group,
    added terms before subtracted ones (`2*m - p`)."""
    coeff, _ = term.as_coeff_Mul()
    group = 0 if index_vars(term) else 1 if term.free_symbols else 2
    negative = bool(coeff.is_negative)
    return (group, negative, str(-term if negative else term))


def factor_order(factor: sympy.Expr) -> tuple[int, str]:
    """Numbers, then index variables, then sizes: `2*m1*M0`."""
    if factor.is_number:
        return (0, "")
    return (1 if index_vars(factor) else 2, str(factor))


def evaluate_index(expr: sympy.Expr, values: Mapping[str, np.ndarray | int]) -> np.ndarray | int:
    """Integer value of an index expression; symbols take `values` (arrays broadcast)."""
    if isinstance(expr, sympy.Integer):
        return int(expr)
    if isinstance(expr, sympy.Symbol):
        return values[expr.name]
    if isinstance(expr, sympy.floor | sympy.Mod):
        a, b = (evaluate_index(e, values) for e in division_operands(expr))
        return np.floor_divide(a, b) if isinstance(expr, sympy.floor) else np.mod(a, b)
    if isinstance(expr, sympy.ceiling):
        a, b = (evaluate_index(e, values) for e in division_operands(expr))
        return -np.floor_divide(-np.asarray(a), b)
    if isinstance(expr, sympy.Add):
        return sum((evaluate_index(term, values) for term in expr.args), start=0)
    if isinstance(expr, sympy.Mul):
        result: np.ndarray | int = 1
        for factor in expr.args:
            result = result * evaluate_index(factor, values)
        return result
    raise ValueError(f"not an integer index expression: {expr}")


def evaluate_size(expr: sympy.Expr, sizes: Mapping[str, int]) -> int:
    """Concrete value of a size expression; every size symbol it uses must be in `sizes`."""
    value = evaluate_index(expr, sizes)
    return int(value)
