"""Tile classification of mask predicates: which (query tile, key tile) pairs are EMPTY, FULL
or PARTIAL, decided exactly from the predicate, never by visiting the points of a tile.

`attncc.analysis.predicate` lowers the predicate to and/or/not over atoms `form in [lo, hi]`
whose variables are the key and query positions or their digits (`m // W`, `m % W`). A tile is
a box of positions; a digit split turns it into at most three boxes of digits (the first
partial row, the full rows, the last partial row). On one box, the atoms of a set of related
variables cut each form's range into cells on which every atom is constant; the predicate can
be true (false) on the box exactly when some combination of cells where it is true (false) has
an integer point in the box. `attncc.analysis.integer_feasibility` decides that exactly by
eliminating variables with unit coefficients (windows `m - p`, digits `4*mq + mr`), so each box
costs O(1) NumPy work per cell combination, vectorized over all tiles at once: O(number of
tiles) in all. Masks relating digits with no unit coefficient left are refused.

Comparisons that read tensors (document ids, block tables) are decided from the data: per-tile
minimum and maximum of 1-D ids, or any/all of a block table over each tile's rectangle of
blocks (summed-area tables). Where the data alone cannot be exact the map says so (`exact`)
and errs towards PARTIAL, which is always safe: a PARTIAL tile applies the mask.
"""

from __future__ import annotations

import enum
import functools
import itertools
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass

import numpy as np
import sympy

from attncc.analysis.integer_feasibility import Constraint, Stuck, check_eliminable, feasible
from attncc.analysis.predicate import (
    COMPARE,
    And,
    Atom,
    DataAtom,
    Formula,
    Lowered,
    Not,
    Or,
    Split,
    lower_predicate,
)
from attncc.errors import AnalysisError
from attncc.ir import Access, Call, Const, Expr, format_expr, index_symbol

_INF = 1 << 62


class TileClass(enum.IntEnum):
    EMPTY = 0
    PARTIAL = 1
    FULL = 2


@dataclass(frozen=True, eq=False)
class BlockLists:
    """Per row of tiles, the columns of one class: `counts[i]` of them, ascending, first in
    `indices[i]` (FlexAttention's `kv_num_blocks`/`kv_indices` layout)."""

    counts: np.ndarray
    indices: np.ndarray

    @staticmethod
    def of(selected: np.ndarray) -> BlockLists:
        selected = np.ascontiguousarray(selected)
        counts = selected.sum(axis=1, dtype=np.int32)
        # A stable sort of each negated row puts its selected columns first, in order (and
        # NumPy sorts booleans stably by radix, in linear time).
        indices = np.argsort(~selected, axis=1, kind="stable").astype(np.int32)
        return BlockLists(counts, indices)


@dataclass(frozen=True, eq=False)
class BlockMask:
    """The non-empty tiles of a mask as lists, for a loop over key tiles per query tile
    (`kv_*`, the forward pass) and over query tiles per key tile (`q_*`, a backward pass).
    PARTIAL tiles apply the mask; FULL tiles (`full_*`) need no mask work."""

    kv: BlockLists
    full_kv: BlockLists
    q: BlockLists
    full_q: BlockLists
    key_tile: int
    query_tile: int


@dataclass(frozen=True, eq=False)
class TileMap:
    """`classes[i, j]`: the TileClass of query tile i and key tile j. The last tiles may be
    ragged: only positions below `query_len` and `key_len` count. `exact` is False where data
    could only bound the classification (some EMPTY or FULL tiles may be PARTIAL)."""

    classes: np.ndarray
    key_len: int
    query_len: int
    key_tile: int
    query_tile: int
    exact: bool = True

    def count(self, tile_class: TileClass) -> int:
        return int(np.count_nonzero(self.classes == tile_class))

    @property
    def nonempty(self) -> int:
        return int(np.count_nonzero(self.classes))

    @property
    def density(self) -> float:
        """The fraction of tiles that are not EMPTY: the work a block-sparse loop does."""
        return self.nonempty / self.classes.size

    def block_mask(self) -> BlockMask:
        partial, full = self.classes == TileClass.PARTIAL, self.classes == TileClass.FULL
        return BlockMask(
            kv=BlockLists.of(partial),
            full_kv=BlockLists.of(full),
            q=BlockLists.of(partial.T),
            full_q=BlockLists.of(full.T),
            key_tile=self.key_tile,
            query_tile=self.query_tile,
        )

    def to_string(self, max_tiles: int = 64) -> str:
        """One row per query tile: `█` FULL, `░` PARTIAL, blank EMPTY (two characters a tile,
        like FlexAttention's BlockMask.to_string); large maps are shown at a coarser step,
        a cell FULL or EMPTY when every tile it covers is, else PARTIAL."""
        step = max(1, -(-max(self.classes.shape) // max_tiles))
        rows = []
        for i in range(0, self.classes.shape[0], step):
            cells = []
            for j in range(0, self.classes.shape[1], step):
                block = self.classes[i : i + step, j : j + step]
                cells.append(_GLYPHS[_summary(block)])
            rows.append("".join(cells).rstrip())
        scale = f" (1 character pair = {step}x{step} tiles)" if step > 1 else ""
        header = (
            f"{self.classes.shape[0]}x{self.classes.shape[1]} tiles of "
            f"{self.query_tile}x{self.key_tile}{scale}: {self.count(TileClass.FULL)} full, "
            f"{self.count(TileClass.PARTIAL)} partial, {self.count(TileClass.EMPTY)} empty, "
            f"density {self.density:.4f}"
        )
        return "\n".join([header, *rows])


_GLYPHS = {TileClass.FULL: "██", TileClass.PARTIAL: "░░", TileClass.EMPTY: "  "}


def _summary(block: np.ndarray) -> TileClass:
    if np.all(block == TileClass.FULL):
        return TileClass.FULL
    return TileClass.PARTIAL if np.any(block) else TileClass.EMPTY


def classify_tiles(
    predicate: Expr,
    *,
    key_len: int,
    query_len: int,
    key_tile: int,
    query_tile: int,
    key: str = "m",
    query: str = "p",
    sizes: Mapping[str, int] | None = None,
    data: Mapping[str, np.ndarray] | None = None,
) -> TileMap:
    """Classify every (query tile, key tile) of a `query_len` x `key_len` mask.

    `predicate` is over coordinates `key` and `query`; `sizes` binds the rank sizes it names
    and `data` the tensors it reads. Raises AnalysisError for a predicate this analysis
    cannot decide exactly (say, `2*m <= p` and `m % 3` together), naming the construct."""
    for name, value in (("key_len", key_len), ("query_len", query_len)):
        if value < 1:
            raise AnalysisError(f"{name} must be positive, got {value}")
    for name, value in (("key_tile", key_tile), ("query_tile", query_tile)):
        if value < 1:
            raise AnalysisError(f"{name} must be positive, got {value}")
    lowered = lower_predicate(predicate, key=key, query=query, sizes=sizes)
    plan = _plan(lowered)
    key_tiles = _tiles(key_len, key_tile, axis=1)
    query_tiles = _tiles(query_len, query_tile, axis=0)
    context = _Context(plan, key_tiles, query_tiles, key, query, data or {})
    shape = (len(query_tiles[0]), key_tiles[0].shape[1])
    can_true = np.zeros(shape, dtype=bool)
    can_false = np.zeros(shape, dtype=bool)
    key_boxes = list(_expand(plan.splits, {key: key_tiles}, True))
    query_boxes = list(_expand(plan.splits, {query: query_tiles}, True))
    for (kb, kv), (qb, qv) in itertools.product(key_boxes, query_boxes):
        valid = kv & qv
        t, f = context.tri(lowered.formula, {**kb, **qb})
        can_true |= valid & t
        can_false |= valid & f
    classes = np.where(
        can_true, np.where(can_false, TileClass.PARTIAL, TileClass.FULL), TileClass.EMPTY
    ).astype(np.int8)
    return TileMap(classes, key_len, query_len, key_tile, query_tile, context.exact)


Interval = tuple[np.ndarray, np.ndarray]
Box = dict[str, Interval]


def _tiles(length: int, tile: int, axis: int) -> Interval:
    """First and last position of each tile, shaped to broadcast along `axis`."""
    lo = np.arange(0, length, tile, dtype=np.int64)
    hi = np.minimum(lo + tile, length) - 1
    shape = (-1, 1) if axis == 0 else (1, -1)
    return lo.reshape(shape), hi.reshape(shape)


def _expand(splits: tuple[Split, ...], box: Box, valid: np.ndarray | bool) -> Iterator[tuple]:
    """The digit boxes covering `box`: each split of a variable in it yields up to three."""
    pending = [s for s in splits if s.var in box]
    if not pending:
        yield box, valid
        return
    split = pending[0]
    lo, hi = box[split.var]
    c = split.divisor
    qlo, qhi = lo // c, hi // c
    rest = {k: v for k, v in box.items() if k != split.var}
    pieces = (
        ((qlo, qlo), (lo % c, np.where(qlo == qhi, hi % c, c - 1)), valid),
        (
            (qlo + 1, qhi - 1),
            (np.zeros_like(lo), np.full_like(lo, c - 1)),
            valid & (qhi - qlo >= 2),
        ),
        ((qhi, qhi), (np.zeros_like(lo), hi % c), valid & (qhi > qlo)),
    )
    for quotient, remainder, ok in pieces:
        if np.any(ok):
            yield from _expand(
                splits, {**rest, split.quotient: quotient, split.remainder: remainder}, ok
            )


@dataclass(frozen=True)
class _Component:
    """Variables related by atoms, directly or through each other."""

    variables: tuple[str, ...]


@dataclass(frozen=True)
class _Plan:
    splits: tuple[Split, ...]
    component_of: Mapping[str, int]
    components: tuple[_Component, ...]


@functools.lru_cache(maxsize=256)
def _plan(lowered: Lowered) -> _Plan:
    atoms = list(_atoms(lowered.formula))
    parent: dict[str, str] = {}

    def find(v: str) -> str:
        while parent.setdefault(v, v) != v:
            v = parent[v]
        return v

    for atom in atoms:
        names = [name for name, _ in atom.form]
        for name in names:
            root = name.split(".")[0]
            if root not in (lowered.key, lowered.query):
                raise AnalysisError(
                    f"the mask depends on coordinate {root}; a mask may use only "
                    f"{lowered.key} (key) and {lowered.query} (query)"
                )
            parent[find(name)] = find(names[0])
    groups: dict[str, list[str]] = {}
    for name in parent:
        groups.setdefault(find(name), []).append(name)
    component_of: dict[str, int] = {}
    components = []
    for index, names in enumerate(groups.values()):
        forms = {a.form for a in atoms if a.form[0][0] in names}
        try:
            check_eliminable(forms | {((name, 1),) for name in names})
        except Stuck as stuck:
            raise AnalysisError(
                f"cannot classify tiles exactly: the mask relates {', '.join(sorted(names))} "
                f"through {stuck}, where no variable has coefficient 1 everywhere"
            ) from None
        components.append(_Component(tuple(sorted(names))))
        component_of.update(dict.fromkeys(names, index))
    return _Plan(lowered.splits, component_of, tuple(components))


def _atoms(node: Formula) -> Iterator[Atom]:
    if isinstance(node, Atom):
        yield node
    elif isinstance(node, Not):
        yield from _atoms(node.arg)
    elif isinstance(node, And | Or):
        for arg in node.args:
            yield from _atoms(arg)


@functools.lru_cache(maxsize=4096)
def _touches(node: Formula) -> frozenset[str]:
    """Variables a formula reads; `*` stands for the data of a data atom."""
    if isinstance(node, Atom):
        return frozenset(name for name, _ in node.form)
    if isinstance(node, DataAtom):
        return frozenset({"*"})
    if isinstance(node, Not):
        return _touches(node.arg)
    if isinstance(node, And | Or):
        return frozenset().union(*map(_touches, node.args))
    return frozenset()


Tri = tuple[np.ndarray, np.ndarray]
"""Where a formula can be true, and where it can be false, on a box (broadcast over tiles)."""


class _Context:
    def __init__(
        self,
        plan: _Plan,
        key_tiles: Interval,
        query_tiles: Interval,
        key: str,
        query: str,
        data: Mapping[str, np.ndarray],
    ) -> None:
        self.plan = plan
        self.tiles = {key: key_tiles, query: query_tiles}
        self.key, self.query = key, query
        self.data = data
        self.exact = True

    def components(self, node: Formula) -> frozenset[int | str]:
        return frozenset(
            "*" if name == "*" else self.plan.component_of[name] for name in _touches(node)
        )

    def tri(self, node: Formula, box: Box) -> Tri:
        if isinstance(node, bool):
            return np.array(node), np.array(not node)
        if isinstance(node, Not):
            t, f = self.tri(node.arg, box)
            return f, t
        if isinstance(node, DataAtom):
            return self.data_tri(node)
        if isinstance(node, Atom):
            return self.jointly(node, box)
        return self.compose(node, box)

    def compose(self, node: And | Or, box: Box) -> Tri:
        """Children over disjoint variables combine exactly; children sharing variables are
        enumerated together; children sharing data combine as if independent, which can only
        turn EMPTY or FULL into PARTIAL."""
        clusters: list[tuple[set[int | str], list[Formula]]] = []
        for arg in node.args:
            touched = set(self.components(arg))
            merged = [c for c in clusters if c[0] & touched]
            for cluster in merged:
                clusters.remove(cluster)
                touched |= cluster[0]
            clusters.append((touched, [a for c in merged for a in c[1]] + [arg]))
        both = isinstance(node, And)
        if len(clusters) > 1 and any("*" in touched for touched, _ in clusters):
            # Data atoms read positions too: beside position atoms they are not independent.
            self.exact = False
        parts = []
        for touched, args in clusters:
            group: Formula = (And if both else Or)(tuple(args)) if len(args) > 1 else args[0]
            if len(args) == 1:
                parts.append(self.tri(group, box))
            elif "*" in touched:
                self.exact = False
                parts.append(self.independent(both, [self.tri(a, box) for a in args]))
            else:
                parts.append(self.jointly(group, box))
        return self.independent(both, parts)

    @staticmethod
    def independent(both: bool, parts: list[Tri]) -> Tri:
        ts, fs = [t for t, _ in parts], [f for _, f in parts]
        if both:
            return functools.reduce(np.logical_and, ts), functools.reduce(np.logical_or, fs)
        return functools.reduce(np.logical_or, ts), functools.reduce(np.logical_and, fs)

    def jointly(self, node: Formula, box: Box) -> Tri:
        """Exact: over every combination of cells of the forms `node` uses."""
        atoms = sorted(set(_atoms(node)), key=repr)
        by_component: dict[int, list[Atom]] = {}
        for atom in atoms:
            by_component.setdefault(self.plan.component_of[atom.form[0][0]], []).append(atom)
        options = [
            list(self.component_cells(self.plan.components[index], group, box))
            for index, group in by_component.items()
        ]
        can_true: np.ndarray = np.array(False)
        can_false: np.ndarray = np.array(False)
        for combination in itertools.product(*options):
            truth: dict[Atom, bool] = {}
            possible: np.ndarray = np.array(True)
            for assignment, ok in combination:
                truth.update(assignment)
                possible = possible & ok
            if _evaluate(node, truth):
                can_true = can_true | possible
            else:
                can_false = can_false | possible
        return can_true, can_false

    def component_cells(
        self, component: _Component, atoms: list[Atom], box: Box
    ) -> Iterator[tuple[dict[Atom, bool], np.ndarray]]:
        forms = sorted({a.form for a in atoms})
        cells = [_cells([a for a in atoms if a.form == form]) for form in forms]
        for choice in itertools.product(*cells):
            ok = feasible(
                [Constraint(((v, 1),), *box[v]) for v in component.variables]
                + [
                    Constraint(form, _open(lo), _open(hi))
                    for form, (lo, hi) in zip(forms, choice, strict=True)
                ]
            )
            if np.any(ok):
                truth = {atom: _inside(atom, choice[forms.index(atom.form)]) for atom in atoms}
                yield truth, ok

    def data_tri(self, atom: DataAtom) -> Tri:
        expr = atom.expr
        if isinstance(expr, Call) and expr.op in ("eq", "ne"):
            ids = self.id_comparison(*expr.args)
            if ids is not None:
                t, f = ids
                return (t, f) if expr.op == "eq" else (f, t)
        return self.table(expr)

    def array(self, name: str) -> np.ndarray:
        if name not in self.data:
            raise AnalysisError(f"the mask reads {name}; pass its values to classify tiles")
        return np.asarray(self.data[name])

    def id_comparison(self, lhs: Expr, rhs: Expr) -> Tri | None:
        """`A[m] == B[p]` (say document ids): tiles from each side's minimum and maximum."""
        sides = {}
        for side in (lhs, rhs):
            if not (isinstance(side, Access) and len(side.indices) == 1):
                return None
            sides[side.indices[0]] = side.tensor
        if set(sides) != {index_symbol(self.key), index_symbol(self.query)}:
            return None
        stats = {}
        for var in (self.key, self.query):
            values = self.array(sides[index_symbol(var)])
            lo, hi = self.tiles[var]
            length = int(hi.max()) + 1
            if values.ndim != 1 or values.shape[0] < length:
                raise AnalysisError(
                    f"{sides[index_symbol(var)]} must be 1-D with {length} values, "
                    f"got shape {values.shape}"
                )
            values = values[:length]
            low = np.minimum.reduceat(values, lo.ravel()).reshape(lo.shape)
            high = np.maximum.reduceat(values, lo.ravel()).reshape(lo.shape)
            steps = np.diff(values)
            # Exact when each tile holds a run of consecutive ids (sorted, no gaps).
            if np.any((steps != 0) & (steps != 1)):
                self.exact = False
            stats[var] = (low, high)
        (klo, khi), (qlo, qhi) = stats[self.key], stats[self.query]
        can_true = (klo <= qhi) & (qlo <= khi)
        can_false = ~((klo == khi) & (qlo == qhi) & (klo == qlo))
        return can_true, can_false

    def table(self, expr: Expr) -> Tri:
        """A condition on one tensor read at (functions of) the query and the key position,
        each index `v` or `v // c`: any/all over each tile's rectangle of entries."""
        access, compare = _table_condition(expr)
        values = self.array(access.tensor)
        if values.ndim != len(access.indices):
            raise AnalysisError(
                f"{access.tensor} has {values.ndim} dimensions, the mask reads "
                f"{len(access.indices)} ({format_expr(expr)})"
            )
        holds = compare(values)
        bounds = []
        for axis, index in enumerate(access.indices):
            var, divisor = _monotone_index(index, expr)
            lo, hi = self.tiles[var]
            lo, hi = lo // divisor, hi // divisor
            if np.any(hi >= values.shape[axis]):
                raise AnalysisError(
                    f"{access.tensor} dimension {axis} has {values.shape[axis]} entries, "
                    f"the mask reads entry {int(hi.max())} ({format_expr(expr)})"
                )
            bounds.append((var, lo, hi))
        if len(bounds) != 2 or {b[0] for b in bounds} != {self.key, self.query}:
            raise AnalysisError(
                f"{format_expr(expr)}: a block table is indexed by the query and the key"
            )
        (_, lo0, hi0), (_, lo1, hi1) = bounds
        return (
            _rectangle_any(holds, lo0, hi0, lo1, hi1),
            _rectangle_any(~holds, lo0, hi0, lo1, hi1),
        )


def _table_condition(expr: Expr) -> tuple[Access, Callable[[np.ndarray], np.ndarray]]:
    if isinstance(expr, Access):
        return expr, lambda values: values != 0
    if isinstance(expr, Call) and expr.op in COMPARE:
        op, (lhs, rhs) = COMPARE[expr.op], expr.args
        if isinstance(lhs, Access) and isinstance(rhs, Const):
            return lhs, lambda values: np.asarray(op(values, rhs.value))
        if isinstance(rhs, Access) and isinstance(lhs, Const):
            return rhs, lambda values: np.asarray(op(lhs.value, values))
    raise AnalysisError(
        f"{format_expr(expr)}: data masks compare one tensor with a constant, "
        "or ids of the key and the query (A[m] == A[p])"
    )


def _monotone_index(index: sympy.Expr, expr: Expr) -> tuple[str, int]:
    if index.is_Symbol:
        return index.name, 1
    if isinstance(index, sympy.floor):
        numerator, denominator = index.args[0].as_numer_denom()
        if numerator.is_Symbol and denominator.is_Integer and denominator > 0:
            return numerator.name, int(denominator)
    raise AnalysisError(f"{format_expr(expr)}: index {index} is not a position or position // c")


def _rectangle_any(
    holds: np.ndarray, lo0: np.ndarray, hi0: np.ndarray, lo1: np.ndarray, hi1: np.ndarray
) -> np.ndarray:
    """Whether `holds` has a True entry in [lo0, hi0] x [lo1, hi1], from a summed-area table."""
    table = np.zeros((holds.shape[0] + 1, holds.shape[1] + 1), dtype=np.int64)
    table[1:, 1:] = holds.astype(np.int64).cumsum(0).cumsum(1)
    total = table[hi0 + 1, hi1 + 1] - table[lo0, hi1 + 1] - table[hi0 + 1, lo1] + table[lo0, lo1]
    return total > 0


def _open(bound: int) -> int | None:
    return None if abs(bound) >= _INF else bound


def _cells(atoms: list[Atom]) -> list[tuple[int, int]]:
    """The intervals between the bounds of `atoms` (on one form): each atom is true on a cell
    or false on all of it."""
    cuts = sorted(
        {a.lo for a in atoms if a.lo is not None} | {a.hi + 1 for a in atoms if a.hi is not None}
    )
    edges = [-_INF, *cuts, _INF]
    return [(lo, hi - 1) for lo, hi in itertools.pairwise(edges)]


def _inside(atom: Atom, cell: tuple[int, int]) -> bool:
    lo, hi = cell
    return (atom.lo is None or lo >= atom.lo) and (atom.hi is None or hi <= atom.hi)


def _evaluate(node: Formula, truth: Mapping[Atom, bool]) -> bool:
    if isinstance(node, bool):
        return node
    if isinstance(node, Atom):
        return truth[node]
    if isinstance(node, Not):
        return not _evaluate(node.arg, truth)
    if isinstance(node, And):
        return all(_evaluate(a, truth) for a in node.args)
    if isinstance(node, Or):
        return any(_evaluate(a, truth) for a in node.args)
    raise AssertionError(f"data atom {node} in an exact evaluation")
