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
blocks (summed-area tables); tables read at grid indices (a head's weight per token) give
classes per grid point. Where the data alone cannot be exact the map says so (`exact`)
and errs towards PARTIAL, which is always safe: a PARTIAL tile applies the mask.
"""

from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from attncc.analysis.data_masks import Interval, Tri, check_data_condition, data_condition
from attncc.analysis.integer_feasibility import Constraint, Stuck, check_eliminable, feasible
from attncc.analysis.predicate import (
    And,
    Atom,
    DataAtom,
    Formula,
    Lowered,
    Not,
    Or,
    Split,
    leaves,
    lower_predicate,
)
from attncc.analysis.tile_map import TileClass, TileMap
from attncc.errors import AnalysisError
from attncc.ir import Expr


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
    grid: Sequence[str] = (),
) -> TileMap:
    """Classify every (query tile, key tile) of a `query_len` x `key_len` mask.

    `predicate` is over coordinates `key` and `query`; `sizes` binds the rank sizes it names
    and `data` the tensors it reads. Tables it reads may also be indexed by the grid indices
    `grid` (batch, head): the map's `by_grid` then holds the classes per grid point, and its
    `classes` their union. Raises AnalysisError for a predicate this analysis cannot decide
    exactly (say, `2*m <= p` and `m % 3` together), naming the construct."""
    lengths = {"key_len": key_len, "query_len": query_len}
    for name, value in {**lengths, "key_tile": key_tile, "query_tile": query_tile}.items():
        if not isinstance(value, int | np.integer) or value < 1:
            raise AnalysisError(f"{name} must be a positive integer, got {value!r}")
    lowered = lower_predicate(predicate, key=key, query=query, sizes=sizes)
    tiles = math.ceil(key_len / key_tile) * math.ceil(query_len / query_tile)
    if tiles >= COARSE_FROM and not any(True for _ in _data_atoms(lowered.formula)):
        classes = _two_level(lowered, key_len, query_len, key_tile, query_tile)
        return TileMap(classes, key_len, query_len, key_tile, query_tile)
    classes, exact = _decide(
        lowered,
        _tiles(key_len, key_tile, axis=1),
        _tiles(query_len, query_tile, axis=0),
        data or {},
        tuple(grid),
    )
    if classes.ndim == 2:
        return TileMap(classes, key_len, query_len, key_tile, query_tile, exact)
    return TileMap(
        union_classes(classes),
        key_len,
        query_len,
        key_tile,
        query_tile,
        exact,
        grid=tuple(grid),
        by_grid=classes,
    )


COARSE = 16
"""Tiles per side of a coarse tile in two-level classification."""

COARSE_FROM = 1 << 16
"""Maps of this many tiles or more are classified coarse tiles first: a coarse tile that is
EMPTY or FULL is so for each of its tiles, and only the tiles of PARTIAL coarse tiles are
decided one by one (masks are sparse at long lengths, so most coarse tiles are EMPTY)."""


def _two_level(
    lowered: Lowered, key_len: int, query_len: int, key_tile: int, query_tile: int
) -> np.ndarray:
    coarse, _ = _decide(
        lowered,
        _tiles(key_len, key_tile * COARSE, axis=1),
        _tiles(query_len, query_tile * COARSE, axis=0),
        {},
    )
    shape = (math.ceil(query_len / query_tile), math.ceil(key_len / key_tile))
    classes = coarse.repeat(COARSE, axis=0).repeat(COARSE, axis=1)[: shape[0], : shape[1]]
    rows, cols = np.nonzero(classes == TileClass.PARTIAL)
    # The tiles of PARTIAL coarse tiles, as aligned 1-D arrays of key and query intervals.
    key_lo, query_lo = cols.astype(np.int64) * key_tile, rows.astype(np.int64) * query_tile
    fine, _ = _decide(
        lowered,
        (key_lo, np.minimum(key_lo + key_tile, key_len) - 1),
        (query_lo, np.minimum(query_lo + query_tile, query_len) - 1),
        {},
    )
    classes[rows, cols] = fine
    return classes


def _decide(
    lowered: Lowered,
    key_tiles: Interval,
    query_tiles: Interval,
    data: Mapping[str, np.ndarray],
    grid: tuple[str, ...] = (),
) -> tuple[np.ndarray, bool]:
    """The TileClass of every tile the broadcast intervals describe (a grid of rows and
    columns, or aligned lists), and whether data left some of them bounded only; with leading
    grid axes where a table read at `grid` indices makes tiles differ between grid points."""
    plan = _plan(lowered)
    key, query = lowered.key, lowered.query
    context = _Context(plan, key_tiles, query_tiles, key, query, data, grid)
    shape = np.broadcast_shapes(key_tiles[0].shape, query_tiles[0].shape)
    can_true = np.zeros(shape, dtype=bool)
    can_false = np.zeros(shape, dtype=bool)
    key_boxes = list(_expand(plan.splits, {key: key_tiles}, True))
    query_boxes = list(_expand(plan.splits, {query: query_tiles}, True))
    for (kb, kv), (qb, qv) in itertools.product(key_boxes, query_boxes):
        valid = kv & qv
        t, f = context.tri(lowered.formula, {**kb, **qb})
        # Not in place: a data atom read at grid indices adds leading axes.
        can_true = can_true | (valid & t)
        can_false = can_false | (valid & f)
    classes = np.where(
        can_true, np.where(can_false, TileClass.PARTIAL, TileClass.FULL), TileClass.EMPTY
    ).astype(np.int8)
    return classes, context.exact


def union_classes(by_grid: np.ndarray) -> np.ndarray:
    """One class per (query tile, key tile) for every grid point at once: EMPTY where EMPTY
    for all, FULL where FULL for all, else PARTIAL (the mask applies per grid point)."""
    axes = tuple(range(by_grid.ndim - 2))
    empty = np.all(by_grid == TileClass.EMPTY, axis=axes)
    full = np.all(by_grid == TileClass.FULL, axis=axes)
    return np.where(
        empty, TileClass.EMPTY, np.where(full, TileClass.FULL, TileClass.PARTIAL)
    ).astype(np.int8)


MAX_CASES = 4096
"""Cell combinations one set of related variables may take; library masks need < 200."""


def check_classifiable(
    predicate: Expr,
    *,
    key: str = "m",
    query: str = "p",
    sizes: Mapping[str, int] | None = None,
    grid: Sequence[str] = (),
) -> None:
    """Raise AnalysisError, with the reason, when `classify_tiles` would refuse `predicate`
    whatever the lengths and whatever the data of data masks."""
    lowered = lower_predicate(predicate, key=key, query=query, sizes=sizes)
    _plan(lowered)
    for atom in _data_atoms(lowered.formula):
        check_data_condition(atom.expr, key, query, grid)


Box = dict[str, Interval]


def _tiles(length: int, tile: int, axis: int) -> Interval:
    """First and last position of each tile, shaped to broadcast along `axis`."""
    lo = np.arange(0, length, tile, dtype=np.int64)
    hi = np.minimum(lo + tile, length) - 1
    shape = (-1, 1) if axis == 0 else (1, -1)
    return lo.reshape(shape), hi.reshape(shape)


def _expand(
    splits: tuple[Split, ...], box: Box, valid: np.ndarray | bool
) -> Iterator[tuple[Box, np.ndarray | bool]]:
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
class _Plan:
    splits: tuple[Split, ...]
    component_of: Mapping[str, int]
    components: tuple[tuple[str, ...], ...]
    """Variables related by atoms, directly or through each other."""


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
        components.append(tuple(sorted(names)))
        component_of.update(dict.fromkeys(names, index))
    return _Plan(lowered.splits, component_of, tuple(components))


def _atoms(node: Formula) -> Iterator[Atom]:
    return (leaf for leaf in leaves(node) if isinstance(leaf, Atom))


def _data_atoms(node: Formula) -> Iterator[DataAtom]:
    return (leaf for leaf in leaves(node) if isinstance(leaf, DataAtom))


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


class _Context:
    def __init__(
        self,
        plan: _Plan,
        key_tiles: Interval,
        query_tiles: Interval,
        key: str,
        query: str,
        data: Mapping[str, np.ndarray],
        grid: tuple[str, ...] = (),
    ) -> None:
        self.plan = plan
        self.grid = grid
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
            tri, exact = data_condition(
                node.expr, self.tiles, self.key, self.query, self.data, self.grid
            )
            self.exact = self.exact and exact
            return tri
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
        if math.prod(len(o) for o in options) > MAX_CASES:
            raise AnalysisError(
                f"cannot classify tiles exactly: the mask ties {len(options)} sets of positions "
                f"together in more than {MAX_CASES} cases; split it with mask_and/mask_or"
            )
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
        self, variables: tuple[str, ...], atoms: list[Atom], box: Box
    ) -> Iterator[tuple[dict[Atom, bool], np.ndarray]]:
        forms = sorted({a.form for a in atoms})
        cells = [_cells([a for a in atoms if a.form == form]) for form in forms]
        cases = math.prod(len(c) for c in cells)
        if cases > MAX_CASES:
            raise AnalysisError(
                f"cannot classify tiles exactly: the mask relates {', '.join(variables)}"
                f" in {cases} cases (at most {MAX_CASES}); split it with mask_and/mask_or"
            )
        for choice in itertools.product(*cells):
            try:
                ok = feasible(
                    [Constraint(((v, 1),), *box[v]) for v in variables]
                    + [Constraint(f, lo, hi) for f, (lo, hi) in zip(forms, choice, strict=True)]
                )
            except Stuck as stuck:
                message = f"cannot classify tiles exactly: the mask relates {stuck}"
                raise AnalysisError(message) from None
            if np.any(ok):
                truth = {atom: _inside(atom, choice[forms.index(atom.form)]) for atom in atoms}
                yield truth, ok


Cell = tuple[int | None, int | None]
"""An interval of a form's values; None is an open end."""


def _cells(atoms: list[Atom]) -> list[Cell]:
    """The intervals between the bounds of `atoms` (on one form): each atom is true on a cell
    or false on all of it."""
    cuts = sorted(
        {a.lo for a in atoms if a.lo is not None} | {a.hi + 1 for a in atoms if a.hi is not None}
    )
    starts: list[int | None] = [None, *cuts]
    ends: list[int | None] = [c - 1 for c in cuts] + [None]
    return list(zip(starts, ends, strict=True))


def _inside(atom: Atom, cell: Cell) -> bool:
    lo, hi = cell
    return (atom.lo is None or (lo is not None and lo >= atom.lo)) and (
        atom.hi is None or (hi is not None and hi <= atom.hi)
    )


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
