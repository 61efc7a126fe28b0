"""Masks computed from positions, read as predicates over key position m and query position p:
the core both PyTorch frontends share (the torch-mlir importer builds `Symbolic` values from
torch dialect operations, the FX frontend from graph nodes), free of either's types.

A `Symbolic` is a tensor as one IR value expression of its coordinates: element [i0, i1, ...]
is `expr` with Coord("d0") = i0, and so on (`arange(8)[None, :] > arange(8)[:, None]` is
`d1 > d0`). A dimension of size 1 has no coordinate in `expr`, so broadcasting is renaming.

`mask_predicate` broadcasts such a mask to the scores [..., p, m] and evaluates it for every
truth assignment of the position comparisons it contains. Positions enter a mask only through
those comparisons, so the table of visible assignments is a proof over all positions, not a
sample; it is written back as a conjunction, a disjunction, or a sum of products of canonical
comparisons (`m <= p`, `m >= p - 2`), the form `attncc.frontends.masks` uses and a cascade's
filter takes. `rows_without_keys` says whether a predicate leaves some query row with no
visible key, where a finite fill and -inf disagree.
"""

from __future__ import annotations

import enum
import itertools
import math
from dataclasses import dataclass

import numpy as np
import sympy

from attncc.analysis import TileClass, classify_tiles
from attncc.backends.numpy.ops import MAP_OPS
from attncc.errors import AnalysisError
from attncc.ir import (
    Call,
    Const,
    Coord,
    Expr,
    as_index,
    index_symbol,
    index_value,
    walk,
)
from attncc.ir import substitute as substitute_indices


def axis(i: int) -> str:
    return f"d{i}"


@dataclass(frozen=True)
class Symbolic:
    """A tensor of `shape` whose element at coordinates (d0, d1, ...) is `expr`."""

    shape: tuple[int, ...]
    expr: Expr


def rename(expr: Expr, mapping: dict[str, sympy.Expr]) -> Expr:
    return substitute_indices(expr, mapping) if mapping else expr


def normalized(dims: tuple[int, ...], expr: Expr) -> Symbolic:
    """`expr` on a tensor of shape `dims`, with size-1 dimensions' coordinates set to 0."""
    zero = {axis(i): sympy.Integer(0) for i, size in enumerate(dims) if size == 1}
    return Symbolic(dims, fold(rename(expr, zero)))


def broadcast(sym: Symbolic, target: tuple[int, ...]) -> Expr | None:
    """`sym`'s expression on a tensor of shape `target` it broadcasts to (aligned right)."""
    offset = len(target) - len(sym.shape)
    if offset < 0:
        return None
    for i, size in enumerate(sym.shape):
        if size not in (1, target[i + offset]):
            return None
    return rename(
        sym.expr, {axis(i): index_symbol(axis(i + offset)) for i in range(len(sym.shape))}
    )


def fold(expr: Expr) -> Expr:
    """Constant folding, and select(c, 1, 0) -> c (conditions are always 0/1 here)."""
    if not isinstance(expr, Call):
        return expr
    args = tuple(fold(a) for a in expr.args)
    if all(isinstance(a, Const) for a in args):
        return Const(_evaluate(expr.op, [a.value for a in args if isinstance(a, Const)]))
    if expr.op == "select":
        cond, yes, no = args
        if isinstance(cond, Const):
            return yes if cond.value else no
        if yes == Const(1.0) and no == Const(0.0):
            return cond
        if yes == Const(0.0) and no == Const(1.0):
            return fold(Call("not", (cond,)))
    return Call(expr.op, args)


def _evaluate(op: str, values: list[float]) -> float:
    with np.errstate(all="ignore"):
        return float(MAP_OPS[op](*(np.float64(v) for v in values)))


COMPARISONS = {"lt", "le", "gt", "ge", "eq", "ne"}
_FLIPPED = {"lt": "gt", "le": "ge", "gt": "lt", "ge": "le", "eq": "eq", "ne": "ne"}
_NEGATED = {"lt": "ge", "le": "gt", "gt": "le", "ge": "lt", "eq": "ne", "ne": "eq"}

HIDING_FILL = -1e4
"""Fill values at or below this hide a key: its weight exp(fill - s) underflows to 0 in float32
and float64 once the largest visible score s is above fill + 750, so the module's softmax and
the cascade's (which uses -inf) agree, except on rows where every key is hidden: there the
module averages over the hidden keys and -inf leaves none (`rows_without_keys` finds them).
Compare the fill the softmax sees, after any scale that follows the mask."""

_MAX_ATOMS = 4


@dataclass(frozen=True)
class MaskPredicate:
    """What a mask proved to compute from positions hides: keys where `predicate` (over m and
    p) is false; None when it hides nothing. `finite_fill` notes a hiding value such as -1e9
    where the predicate means -inf: the same only if every query row sees a key."""

    predicate: Expr | None
    finite_fill: bool = False


class MaskKind(enum.Enum):
    """How a mask tensor acts on the scores."""

    VISIBLE = "visible"
    """Boolean, true where the key is visible (SDPA's boolean attn_mask, where's condition)."""
    HIDDEN = "hidden"
    """Boolean, true where the key is hidden (masked_fill's mask)."""
    ADDITIVE = "additive"
    """Added to the scores (SDPA's float attn_mask, `scores + bias`)."""


def mask_predicate(sym: Symbolic, scores: tuple[int, ...], kind: MaskKind) -> MaskPredicate | str:
    """The predicate of mask `sym` applied to scores of shape [..., P, M]; a reason string
    when it is not one."""
    expr = broadcast(sym, scores)
    if expr is None:
        return (
            f"the mask's shape {list(sym.shape)} does not broadcast to the scores' {list(scores)}"
        )
    n = len(scores)
    expr = rename(expr, {axis(n - 1): index_symbol("m"), axis(n - 2): index_symbol("p")})
    others = sorted({c.name for c in walk(expr) if isinstance(c, Coord)} - {"m", "p"})
    if others:
        return "the mask varies over batch or heads, not only over key and query positions"
    # Comparisons that hold everywhere (or nowhere) on the scores' positions are no choice:
    # `p >= 0`, or `m < 12` with 12 keys.
    fixed = {
        a: t
        for a in _atoms(expr)
        if (t := _decided(a, keys=scores[-1], queries=scores[-2])) is not None
    }
    expr = fold(_replace(expr, fixed))
    atoms = _atoms(expr)
    if len(atoms) > _MAX_ATOMS:
        return f"the mask compares positions {len(atoms)} ways (at most {_MAX_ATOMS} are read)"
    table = _truth_table(expr, atoms, kind)
    if isinstance(table, str):
        return table
    visible, finite = table
    if not visible:
        return "the mask hides every key"
    if len(visible) == 2 ** len(atoms):
        return MaskPredicate(None, finite)
    return MaskPredicate(_from_table(atoms, visible), finite)


def _truth_table(
    expr: Expr, atoms: list[Expr], kind: MaskKind
) -> tuple[list[tuple[bool, ...]], bool] | str:
    """The truth assignments of `atoms` under which `expr` keeps the key, and whether it hides
    with a finite value under some other; a reason when a value neither keeps nor hides."""
    visible: list[tuple[bool, ...]] = []
    finite = False
    for truth in itertools.product((False, True), repeat=len(atoms)):
        value = fold(_replace(expr, dict(zip(atoms, truth, strict=True))))
        if not isinstance(value, Const):
            return "the mask is not a function of comparisons of positions"
        shown, is_finite = _visible(value.value, kind)
        if shown is None:
            return f"the mask takes the value {value.value:g}, which neither keeps nor hides a key"
        finite |= is_finite
        if shown:
            visible.append(truth)
    return visible, finite


def _visible(value: float, kind: MaskKind) -> tuple[bool | None, bool]:
    """(whether a mask element of `value` keeps its key, whether it hides with a finite value)."""
    if kind is MaskKind.VISIBLE:
        return value != 0, False
    if kind is MaskKind.HIDDEN:
        return value == 0, False
    if value == 0:
        return True, False
    if value <= HIDING_FILL:
        return False, math.isfinite(value)
    return None, False


def _atoms(expr: Expr) -> list[Expr]:
    """The comparisons of positions in `expr` (both sides index expressions of m and p)."""
    found: list[Expr] = []
    for node in walk(expr):
        if isinstance(node, Call) and node.op in COMPARISONS and node not in found:
            sides = [as_index(a) for a in node.args]
            if all(s is not None for s in sides) and any(isinstance(c, Coord) for c in walk(node)):
                found.append(node)
    return found


def _decided(atom: Expr, *, keys: int, queries: int) -> bool | None:
    """The value of a comparison that is the same for every key m < `keys` and query
    p < `queries`; None when it depends on them. A comparison of affine forms takes its
    extremes at the corners of that box, so the corners decide (for == and != only when the
    difference keeps one strict sign there)."""
    assert isinstance(atom, Call)
    lhs, rhs = (as_index(a) for a in atom.args)
    assert lhs is not None and rhs is not None
    difference = sympy.expand(lhs - rhs)
    m, p = index_symbol("m"), index_symbol("p")
    if not difference.is_polynomial(m, p) or sympy.Poly(difference, m, p).total_degree() > 1:
        return None
    corners = [
        difference.subs({m: key, p: query}) for key in {0, keys - 1} for query in {0, queries - 1}
    ]
    if atom.op in ("eq", "ne"):
        if all(c > 0 for c in corners) or all(c < 0 for c in corners):
            return atom.op == "ne"
        return None
    compare = {"lt": sympy.Lt, "le": sympy.Le, "gt": sympy.Gt, "ge": sympy.Ge}[atom.op]
    values = {bool(compare(c, 0)) for c in corners}
    return values.pop() if len(values) == 1 else None


def _replace(expr: Expr, truth: dict[Expr, bool]) -> Expr:
    if expr in truth:
        return Const(1.0 if truth[expr] else 0.0)
    if isinstance(expr, Call):
        return Call(expr.op, tuple(_replace(a, truth) for a in expr.args))
    return expr


def _canonical(atom: Expr) -> Expr:
    """A comparison of positions as `terms <= terms` (or >=, ==, !=) with m's coefficient
    positive and the constant on the right: strict comparisons of integers become non-strict
    (`arange[None, :] > arange[:, None]` negated reads `m <= p`, triu's hidden `m - p >= 1`
    negated also reads `m <= p`)."""
    assert isinstance(atom, Call)
    lhs, rhs = (as_index(a) for a in atom.args)
    assert lhs is not None and rhs is not None
    difference, op = sympy.expand(lhs - rhs), atom.op
    if op in ("lt", "gt"):
        difference, op = difference + (1 if op == "lt" else -1), "le" if op == "lt" else "ge"
    m, p = index_symbol("m"), index_symbol("p")
    lead = difference.coeff(m) or difference.coeff(p)
    if lead is not None and lead.is_negative:
        difference, op = -difference, _FLIPPED[op]
    left: list[sympy.Expr] = []
    right: list[sympy.Expr] = []
    for term in sympy.Add.make_args(difference):
        coefficient, _ = term.as_coeff_Mul()
        if term.is_number or coefficient.is_negative:
            right.append(-term)
        else:
            left.append(term)
    return Call(op, (_linear(left), _linear(right)))


def _linear(terms: list[sympy.Expr]) -> Expr:
    """A sum of terms as a value, variables first and a negative constant subtracted
    (`p - 3`, not `p + -3`)."""
    ordered = sorted(terms, key=lambda t: (t.is_number, str(t)))
    if not ordered:
        return Const(0.0)
    result = index_value(ordered[0])
    for term in ordered[1:]:
        if term.is_number and term < 0:
            result = Call("sub", (result, index_value(-term)))
        else:
            result = Call("add", (result, index_value(term)))
    return result


def _literal(atom: Expr, truth: bool) -> Expr:
    """`atom` when `truth`, else its negation, in canonical form."""
    assert isinstance(atom, Call)
    return _canonical(atom if truth else Call(_NEGATED[atom.op], atom.args))


def _from_table(atoms: list[Expr], visible: list[tuple[bool, ...]]) -> Expr:
    """A predicate true exactly on the `visible` truth assignments of `atoms`: the conjunction
    of literals for one assignment, or its negation's complement, else a disjunction."""

    def conjunction(truth: tuple[bool, ...]) -> Expr:
        return _join("and", [_literal(a, t) for a, t in zip(atoms, truth, strict=True)])

    hidden = [t for t in itertools.product((False, True), repeat=len(atoms)) if t not in visible]
    if len(hidden) == 1 and len(visible) > 1:
        return _join("or", [_literal(a, not t) for a, t in zip(atoms, hidden[0], strict=True)])
    return _join("or", [conjunction(t) for t in visible])


def _join(op: str, parts: list[Expr]) -> Expr:
    result = parts[0]
    for part in parts[1:]:
        result = Call(op, (result, part))
    return result


def rows_without_keys(predicate: Expr, queries: int, keys: int) -> bool | None:
    """Whether some query row p < `queries` sees no key m < `keys` under `predicate`; None when
    the tile analysis cannot decide the predicate exactly. One tile per row, spanning every
    key: a row's tile is EMPTY exactly when the row sees no key, decided from the predicate in
    O(queries) (never a dense `queries` x `keys` evaluation)."""
    try:
        tiles = classify_tiles(
            predicate, key_len=keys, query_len=queries, key_tile=keys, query_tile=1
        )
    except AnalysisError:
        return None
    return tiles.count(TileClass.EMPTY) > 0
