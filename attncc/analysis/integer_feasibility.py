"""Exact integer feasibility of small linear systems, decided for many boxes at once.

A system is a list of constraints `lo <= c1*v1 + c2*v2 + ... <= hi` over integer variables,
whose bounds are NumPy arrays (one entry per tile) or plain integers. It is decided by
Fourier-Motzkin elimination, restricted to variables whose coefficient is 1 or -1 in every
constraint that uses them. For such a variable x each constraint reads `lo_i - f_i <= x <=
hi_i - f_i`, with f_i integer-valued, so an integer x exists exactly when every lower bound is
at most every upper bound: the pairwise inequalities `f_j - f_i <= hi_j - lo_i` are the exact
projection onto the other variables, over the integers and not only the reals. Dividing a
constraint by the gcd of its coefficients (rounding its bounds inward) is exact as well. A
system where every remaining variable has some other coefficient is refused: there the
rational projection can admit points with no integer preimage.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

Form = tuple[tuple[str, int], ...]
"""(variable, coefficient) pairs sorted by variable, coefficients coprime, the first positive."""

Bound = np.ndarray | int | None
"""A bound per box (array), one for all boxes (int), or none (an open end)."""


@dataclass(frozen=True, eq=False)
class Constraint:
    form: Form
    lo: Bound
    hi: Bound


class Stuck(Exception):
    """No variable left has coefficient 1 or -1 wherever it appears, or elimination would
    make more than `MAX_FORMS` distinct forms: `forms` relate the variables."""

    def __init__(self, forms: list[Form]) -> None:
        super().__init__(", ".join(format_form(f) for f in forms))
        self.forms = forms


MAX_FORMS = 64
"""Elimination squares the number of constraints on a variable; masks need a handful. A
system beyond this is refused rather than left to grow for minutes."""


def format_form(form: Form) -> str:
    text = ""
    for name, coeff in form:
        sign = "-" if coeff < 0 else ("+" if text else "")
        text += f"{sign}{'' if abs(coeff) == 1 else abs(coeff)}{name}"
    return text


def check_eliminable(forms: Iterable[Form]) -> None:
    """Raise `Stuck` unless systems over `forms` can be decided (only coefficients matter)."""
    remaining = {f for f in forms if f}
    while remaining:
        variable = _pick(frozenset(n for form in remaining for n, _ in form), frozenset(remaining))
        if variable is None:
            raise Stuck(sorted(remaining))
        using = [_unit(f, variable) for f in remaining if _coeff(f, variable)]
        derived = {_canonical(_combine(g, h, -1))[0] for g in using for h in using if g != h}
        remaining = {f for f in remaining if not _coeff(f, variable)} | (derived - {()})
        if len(remaining) > MAX_FORMS:
            raise Stuck(sorted(remaining)[:8])


def feasible(constraints: list[Constraint]) -> np.ndarray:
    """Whether some integer point satisfies every constraint, per box (broadcast)."""
    ok: np.ndarray = np.array(True)
    system: dict[Form, tuple[Bound, Bound]] = {}
    for constraint in constraints:
        ok = ok & _add(system, constraint.form, constraint.lo, constraint.hi)
    while system:
        variable = _pick(frozenset(n for form in system for n, _ in form), frozenset(system))
        if variable is None:
            raise Stuck(sorted(system))
        using = []
        for form in [f for f in system if _coeff(f, variable)]:
            lo, hi = system.pop(form)
            if _coeff(form, variable) < 0:
                form, lo, hi = tuple((n, -c) for n, c in form), _neg(hi), _neg(lo)
            using.append((_rest(form, variable), lo, hi))
        for rest_i, lo_i, _ in using:
            for rest_j, _, hi_j in using:
                if lo_i is None or hi_j is None:
                    continue
                # lo_i - f_i <= x <= hi_j - f_j for some x  <=>  f_j - f_i <= hi_j - lo_i.
                ok = ok & _add(system, _combine(rest_j, rest_i, -1), None, hi_j - lo_i)
        if len(system) > MAX_FORMS:
            raise Stuck(sorted(system)[:8])
    return ok


def _add(system: dict[Form, tuple[Bound, Bound]], raw: Form, lo: Bound, hi: Bound) -> np.ndarray:
    """Add `lo <= raw <= hi` to `system` (intersecting bounds on the same form); a constraint
    with no variable is checked at once and its truth returned."""
    form, sign, scale = _canonical(raw)
    if not form:
        return np.asarray((lo is None or lo <= 0) & (hi is None or hi >= 0))
    if sign < 0:
        lo, hi = _neg(hi), _neg(lo)
    lo = None if lo is None else -(-lo // scale)
    hi = None if hi is None else hi // scale
    old_lo, old_hi = system.get(form, (None, None))
    system[form] = (_tighter(old_lo, lo, np.maximum), _tighter(old_hi, hi, np.minimum))
    return np.array(True)


def _tighter(a: Bound, b: Bound, pick: np.ufunc) -> Bound:
    if a is None:
        return b
    return a if b is None else pick(a, b)


def _neg(bound: Bound) -> Bound:
    return None if bound is None else -bound


@functools.lru_cache(maxsize=4096)
def _canonical(raw: Form) -> tuple[Form, int, int]:
    """(form, sign, scale) with raw = sign * scale * form."""
    terms = [(n, c) for n, c in sorted(raw) if c != 0]
    if not terms:
        return (), 1, 1
    scale = functools.reduce(math.gcd, (abs(c) for _, c in terms))
    sign = 1 if terms[0][1] > 0 else -1
    return tuple((n, sign * c // scale) for n, c in terms), sign, scale


def _coeff(form: Form, variable: str) -> int:
    return next((c for n, c in form if n == variable), 0)


def _unit(form: Form, variable: str) -> Form:
    """`form` scaled so that `variable` has coefficient +1, without it."""
    sign = _coeff(form, variable)
    return _rest(tuple((n, sign * c) for n, c in form), variable)


@functools.lru_cache(maxsize=4096)
def _rest(form: Form, variable: str) -> Form:
    return tuple((n, c) for n, c in form if n != variable)


@functools.lru_cache(maxsize=4096)
def _combine(a: Form, b: Form, factor: int) -> Form:
    """a + factor * b."""
    total = dict(a)
    for name, coeff in b:
        total[name] = total.get(name, 0) + factor * coeff
    return tuple(sorted(total.items()))


@functools.lru_cache(maxsize=4096)
def _pick(variables: frozenset[str], forms: frozenset[Form]) -> str | None:
    """A variable with coefficient +-1 wherever it appears, used by the fewest forms."""
    candidates = [
        (sum(1 for f in forms if _coeff(f, v)), v)
        for v in sorted(variables)
        if all(abs(_coeff(f, v)) in (0, 1) for f in forms)
    ]
    return min(candidates)[1] if candidates else None
