"""Token orders: the tokens of a 2-D or 3-D layout as digits, and positions in a new order of
those digits, as index expressions and as mask coordinates an exact analysis can read.

A layout of `shape` = (n_0, ..., n_{K-1}) holds token (d_0, ..., d_{K-1}) at the row-major
position x = sum_k d_k w_k, w_k = n_{k+1} * ... * n_{K-1}. A video of T frames of H x W is
(T, H, W); a 32 x 32 image in 8 x 8 tiles is (4, 8, 4, 8) (row tile, row, column tile, column),
the same row-major order. `order` lists the digits of the new layout, most significant first:
(1, 2, 0) puts the frames last (spatial-major), (0, 2, 1, 3) makes each tile contiguous. The
token at new position y has the digits of y in the new radices, so its old position is
sigma(y) = sum_k d_k(y) w_k.

A mask written over old positions (`(x // W) // H` for a frame) reads, after the reorder,
coordinates sigma(m) and sigma(p). Substituted as they are, the mask relates nested divisions
of sums of digits, which the tile classification cannot untangle; `in_new_order` rewrites it
digit by digit instead: x // w_j and x % w_j of a sum of digits whose low part stays below w_j
split it exactly (x // 32 = 8 d_0 + d_1 for the tiled image), so the mask becomes a formula in
the digits of y, each written with nested divisions, as the mask library writes its masks.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass
from typing import TypeVar

import numpy as np
import sympy

from attncc.ir import Call, Const, Coord, Expr, index_symbol

Terms = dict[tuple[str, int], int]
"""A sum of digits: (coordinate, old digit index) -> coefficient."""


@dataclass(frozen=True)
class TokenOrder:
    """Tokens on a grid of `shape` digits (row-major) and the `order` of the digits after the
    reorder, most significant first."""

    shape: tuple[int, ...]
    order: tuple[int, ...]

    def __post_init__(self) -> None:
        if not self.shape or any(isinstance(n, bool) or n < 1 for n in self.shape):
            raise ValueError(f"shape must be positive integers, got {self.shape}")
        if sorted(self.order) != list(range(len(self.shape))):
            raise ValueError(
                f"order {self.order} must list each of the {len(self.shape)} digits of "
                f"shape {self.shape} once (0 is the most significant)"
            )

    @staticmethod
    def parse(shape: str, order: str) -> TokenOrder:
        """From pipeline options: shape `4x8x8`, order `120` (digit positions, one character
        each)."""
        try:
            digits = tuple(int(part) for part in shape.lower().split("x"))
            permutation = tuple(int(char) for char in order)
        except ValueError:
            raise ValueError(
                f"shape={shape!r}, order={order!r}: write the shape as sizes joined by x "
                "(8x16x16) and the order as digit positions (120)"
            ) from None
        return TokenOrder(digits, permutation)

    @property
    def tokens(self) -> int:
        return math.prod(self.shape)

    @property
    def new_shape(self) -> tuple[int, ...]:
        return tuple(self.shape[k] for k in self.order)

    def old_position(self, y: sympy.Expr) -> sympy.Expr:
        """sigma(y): where the token at new position y was."""
        digits = dict(zip(self.order, _digits(y, self.new_shape), strict=True))
        return sympy.Add(*(digits[k] * w for k, w in enumerate(_weights(self.shape))))

    def new_position(self, x: sympy.Expr) -> sympy.Expr:
        """sigma^-1(x): where the token at old position x goes."""
        digits = _digits(x, self.shape)
        weights = _weights(self.new_shape)
        return sympy.Add(*(digits[k] * w for k, w in zip(self.order, weights, strict=True)))

    def new_index(self, x: sympy.Expr, extents: Mapping[str, int]) -> sympy.Expr | None:
        """sigma^-1(x), where the token at old position x is now, for x an index expression
        over variables each in [0, extents[v]); None unless x stays within the grid. Written as
        a sum of the digits of x where they split exactly (HiLo's pooled read
        16*(n//4) + 2*(n%4) + 8*sy + sx of a 4x2x4x2 grid in order 0213 becomes
        16*(n//4) + 4*(n%4) + 2*sy + sx), else with the nested divisions of `new_position`."""
        form = _IndexForms(extents)
        ends = form.bounds(x)
        if ends is None or ends[0] < 0 or ends[1] >= self.tokens:
            return None
        lin = form.linear(x)
        if lin is None:
            return self.new_position(x)
        places = dict(zip(self.order, _weights(self.new_shape), strict=True))
        moved: list[tuple[dict[sympy.Expr, int], int]] = []
        for k, (n, w) in enumerate(zip(self.shape, _weights(self.shape), strict=True)):
            digit = form.divide(lin, w, remainder=False)
            # The leading digit is x // w_0 itself: x stays within the grid.
            if digit is not None and k > 0:
                digit = form.divide(digit, n, remainder=True)
            if digit is None:
                return self.new_position(x)
            moved.append(({t: a * places[k] for t, a in digit[0].items()}, digit[1] * places[k]))
        terms, constant = _combine(moved, (1,) * len(moved))
        return sympy.Add(*(a * t for t, a in terms.items()), sympy.Integer(constant))

    def permutation(self) -> np.ndarray:
        """`perm` with new = old[perm] along a token axis (perm[y] = sigma(y))."""
        grid = np.arange(self.tokens).reshape(self.shape)
        return np.ascontiguousarray(grid.transpose(self.order)).ravel()

    def in_new_order(self, expr: Expr, coordinates: frozenset[str]) -> Expr:
        """`expr` (a mask, a score modification) with each coordinate in `coordinates`, an old
        position, written in the digits of the new position."""
        return _Digits(self, coordinates).rewrite(expr)


def _weights(shape: tuple[int, ...]) -> list[int]:
    """Row-major place values: w_k = n_{k+1} * ... * n_{K-1}."""
    return [math.prod(shape[k + 1 :]) for k in range(len(shape))]


def _digits(x: sympy.Expr, shape: tuple[int, ...]) -> list[sympy.Expr]:
    """The digits of x in `shape`, most significant first, divisions nested."""
    found: list[sympy.Expr] = []
    rest = x
    for n in reversed(shape[1:]):
        found.append(sympy.Mod(rest, n))
        rest = sympy.floor(rest / n)
    return [rest, *reversed(found)]


def _mentions(expr: Expr, coordinates: frozenset[str]) -> bool:
    if isinstance(expr, Coord):
        return expr.name in coordinates
    return isinstance(expr, Call) and any(_mentions(a, coordinates) for a in expr.args)


class _Digits:
    """Value expressions over old positions as sums of their digits (`linear`), and sums of
    digits as value expressions over new positions (`value`)."""

    def __init__(self, token_order: TokenOrder, coordinates: frozenset[str]) -> None:
        self.order = token_order
        self.coordinates = coordinates

    def rewrite(self, expr: Expr) -> Expr:
        """`expr` with each largest part that is a sum of digits written over new positions."""
        terms = self.linear(expr)
        if terms is not None and _mentions(expr, self.coordinates):
            return self.value(*terms)
        if isinstance(expr, Call):
            return Call(expr.op, tuple(self.rewrite(a) for a in expr.args))
        return expr

    def linear(self, expr: Expr) -> tuple[Terms, int] | None:
        """`expr` as a sum of digits plus a constant, or None where it is not one."""
        if isinstance(expr, Coord) and expr.name in self.coordinates:
            weights = _weights(self.order.shape)
            return {(expr.name, k): w for k, w in enumerate(weights)}, 0
        if isinstance(expr, Const):
            return ({}, int(expr.value)) if float(expr.value).is_integer() else None
        if not isinstance(expr, Call):
            return None
        args = [self.linear(a) for a in expr.args]
        if any(a is None for a in args):
            return None
        parts: list[tuple[Terms, int]] = [a for a in args if a is not None]
        if expr.op in ("add", "sub", "neg"):
            signs = {"add": (1, 1), "sub": (1, -1), "neg": (-1,)}[expr.op]
            return _combine(parts, signs)
        if expr.op == "mul" and any(not terms for terms, _ in parts):
            (terms, constant), (_, factor) = sorted(parts, key=lambda t: not t[0])
            return {t: a * factor for t, a in terms.items()}, constant * factor
        if expr.op in ("floordiv", "mod") and not parts[1][0] and parts[1][1] > 0:
            return self._divide(parts[0], parts[1][1], expr.op == "mod")
        return None

    def _divide(self, lin: tuple[Terms, int], c: int, remainder: bool) -> tuple[Terms, int] | None:
        return _divide(lin, c, remainder, lambda t: (0, self.order.shape[t[1]] - 1))

    def value(self, terms: Terms, constant: int) -> Expr:
        """A sum of digits as a value expression over the new positions, most significant
        digit first."""
        rank = {k: i for i, k in enumerate(self.order.order)}
        result: Expr | None = None
        for (name, k), a in sorted(terms.items(), key=lambda t: (t[0][0], rank[t[0][1]])):
            if a == 0:
                continue
            digit = self._digit(name, rank[k])
            term = digit if a == 1 else Call("mul", (Const(float(a)), digit))
            result = term if result is None else Call("add", (result, term))
        if result is None:
            return Const(float(constant))
        return result if constant == 0 else Call("add", (result, Const(float(constant))))

    def _digit(self, name: str, position: int) -> Expr:
        """Digit `position` of the new layout of coordinate `name`: nested divisions by the
        radices after it, then the remainder by its own (none for the first)."""
        radices = self.order.new_shape
        x: Expr = Coord(name)
        for n in reversed(radices[position + 1 :]):
            x = Call("floordiv", (x, Const(float(n))))
        return x if position == 0 else Call("mod", (x, Const(float(radices[position]))))


Key = TypeVar("Key", bound=Hashable)


def _divide(
    lin: tuple[dict[Key, int], int],
    c: int,
    remainder: bool,
    bounds: Callable[[Key], tuple[int, int]],
) -> tuple[dict[Key, int], int] | None:
    """L // c or L % c of L = sum_t a_t t + constant, each t within `bounds(t)`: exact when the
    terms with coefficients not divisible by c stay in [0, c): x // 32 = 8 d_0 + d_1 for
    x = 256 d_0 + 32 d_1 + 8 d_2 + d_3 (d_2 < 4, d_3 < 8)."""
    terms, constant = lin
    quotient, offset = divmod(constant, c)
    high = {t: a // c for t, a in terms.items() if a % c == 0}
    low = {t: a for t, a in terms.items() if a % c}
    ends = [(a * bounds(t)[0], a * bounds(t)[1]) for t, a in low.items()]
    if offset + sum(min(e) for e in ends) < 0 or offset + sum(max(e) for e in ends) >= c:
        return None
    return (low, offset) if remainder else (high, quotient)


def _combine(
    parts: list[tuple[dict[Key, int], int]], signs: tuple[int, ...]
) -> tuple[dict[Key, int], int]:
    terms: dict[Key, int] = {}
    constant = 0
    for (part, c), sign in zip(parts, signs, strict=True):
        for t, a in part.items():
            terms[t] = terms.get(t, 0) + sign * a
        constant += sign * c
    return terms, constant


class _IndexForms:
    """Index expressions (sympy) as sums of atoms plus a constant: an atom is a variable, or a
    floor division or remainder that does not split exactly, each with the range it takes
    when the variables stay in [0, extents[v])."""

    def __init__(self, extents: Mapping[str, int]) -> None:
        self.extents = extents

    def linear(self, x: sympy.Expr) -> tuple[dict[sympy.Expr, int], int] | None:
        if isinstance(x, sympy.Integer):
            return {}, int(x)
        if isinstance(x, sympy.Add):
            parts = [self.linear(a) for a in x.args]
            found = [p for p in parts if p is not None]
            return _combine(found, (1,) * len(found)) if len(found) == len(parts) else None
        if isinstance(x, sympy.Mul):
            factor, rest = x.as_coeff_Mul()
            inner = self.linear(rest) if isinstance(factor, sympy.Integer) else None
            if inner is None:
                return None
            return {t: int(factor) * a for t, a in inner[0].items()}, int(factor) * inner[1]
        split = self._split(x)
        if split is not None:
            return split
        return ({x: 1}, 0) if self.bounds(x) is not None else None

    def _split(self, x: sympy.Expr) -> tuple[dict[sympy.Expr, int], int] | None:
        """floor(L / c) or L % c as a sum of atoms, where it splits exactly."""
        if isinstance(x, sympy.floor):
            numerator, c = sympy.fraction(sympy.together(x.args[0]))
            remainder = False
        elif isinstance(x, sympy.Mod):
            numerator, c = x.args
            remainder = True
        else:
            return None
        lin = self.linear(numerator) if isinstance(c, sympy.Integer) and c > 0 else None
        return None if lin is None else self.divide(lin, int(c), remainder=remainder)

    def divide(
        self, lin: tuple[dict[sympy.Expr, int], int], c: int, *, remainder: bool
    ) -> tuple[dict[sympy.Expr, int], int] | None:
        return _divide(lin, c, remainder, self._bounds)

    def _bounds(self, atom: sympy.Expr) -> tuple[int, int]:
        found = self.bounds(atom)
        assert found is not None, "atoms are bounded when they are made"
        return found

    def bounds(self, x: sympy.Expr) -> tuple[int, int] | None:
        """The least and the greatest value of `x`, or None where a variable has no extent."""
        found = self._interval(x)
        return None if found is None else (math.floor(found[0]), math.floor(found[1]))

    def _interval(self, x: sympy.Expr) -> tuple[sympy.Rational, sympy.Rational] | None:
        if isinstance(x, sympy.Rational):
            return x, x
        if isinstance(x, sympy.Symbol):
            extent = self.extents.get(x.name)
            return None if extent is None else (sympy.Integer(0), sympy.Integer(extent - 1))
        args = [self._interval(a) for a in x.args]
        if any(a is None for a in args):
            return None
        ends: list[tuple[sympy.Rational, sympy.Rational]] = [a for a in args if a is not None]
        if isinstance(x, sympy.Add):
            return sympy.Add(*(lo for lo, _ in ends)), sympy.Add(*(hi for _, hi in ends))
        if isinstance(x, sympy.Mul) and all(lo == hi for lo, hi in ends[:-1]):
            factor = sympy.Mul(*(lo for lo, _ in ends[:-1]))
            low, high = factor * ends[-1][0], factor * ends[-1][1]
            return (low, high) if factor >= 0 else (high, low)
        if isinstance(x, sympy.floor):
            return sympy.floor(ends[0][0]), sympy.floor(ends[0][1])
        if isinstance(x, sympy.Mod) and ends[1][0] == ends[1][1] and ends[1][0] > 0:
            c = ends[1][0]
            inside = ends[0][0] >= 0 and ends[0][1] < c
            return ends[0] if inside else (sympy.Integer(0), c - 1)
        return None


def index_mapping(order: TokenOrder, variables: frozenset[str]) -> Mapping[str, sympy.Expr]:
    """Each index variable in `variables`, a new position, mapped to its old position."""
    return {v: order.old_position(index_symbol(v)) for v in variables}
