"""Tile classification of comparisons that read tensors: decided from the data at run time.

Two forms are recognized. Ids compared across the key and the query (`KDOC[m] == QDOC[p]`,
documents of packed sequences) are decided from each tile's minimum and maximum id: exact when
every tile holds a run of consecutive ids (sorted ids without gaps), and conservative (PARTIAL
where it cannot tell) otherwise. A table read at the query and the key position or their blocks
(`BLOCKS[p // 64, m // 64] != 0`, fixed block lists or top-k choices from a scoring stage) is
decided exactly from any/all of each tile's rectangle of entries, by summed-area tables. A table
may also be read at grid indices (`HW[b, h, p] != 0`, a head's weight per token): then the
decision is per grid point, with one leading axis per grid index the caller names.
"""

from __future__ import annotations

import itertools
import operator
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import sympy

from attncc.errors import AnalysisError
from attncc.ir import Access, Call, Const, Expr, format_expr, index_symbol

Interval = tuple[np.ndarray, np.ndarray]
"""First and last position of every tile, shaped to broadcast along its tile axis."""

Tri = tuple[np.ndarray, np.ndarray]
"""Where a condition can be true, and where it can be false, per tile."""

COMPARE: dict[str, Callable[[Any, Any], Any]] = {
    "lt": operator.lt,
    "le": operator.le,
    "gt": operator.gt,
    "ge": operator.ge,
    "eq": operator.eq,
    "ne": operator.ne,
}
"""Comparison operators on NumPy arrays."""


def data_condition(
    expr: Expr,
    positions: Mapping[str, Interval],
    key: str,
    query: str,
    data: Mapping[str, np.ndarray],
    grid: Sequence[str] = (),
) -> tuple[Tri, bool]:
    """Where `expr` can be true and false per tile, and whether that is exact. A table may
    also be read at the grid indices `grid` (batch, head): then the result has one leading
    axis per grid index, in that order (extent 1 where the table does not read it)."""
    if isinstance(expr, Call) and expr.op in ("eq", "ne"):
        ids = _id_comparison(*expr.args, positions=positions, key=key, query=query, data=data)
        if ids is not None:
            (t, f), exact = ids
            return ((t, f) if expr.op == "eq" else (f, t)), exact
    return _table(expr, positions, key, query, data, grid), True


def check_data_condition(expr: Expr, key: str, query: str, grid: Sequence[str] = ()) -> None:
    """Raise AnalysisError unless `expr` is a data condition `data_condition` can decide."""
    if isinstance(expr, Call) and expr.op in ("eq", "ne"):
        reads = {a.indices[0] for a in expr.args if isinstance(a, Access) and len(a.indices) == 1}
        if reads == {index_symbol(key), index_symbol(query)}:
            return
    access, _ = _table_condition(expr)
    _table_axes(access, expr, {key: None, query: None}, grid)


def _array(data: Mapping[str, np.ndarray], name: str) -> np.ndarray:
    if name not in data:
        raise AnalysisError(f"the mask reads {name}; pass its values to classify tiles")
    values = np.asarray(data[name])
    if values.dtype.kind not in "iubf":
        raise AnalysisError(f"{name} holds {values.dtype} values; a mask reads numbers from it")
    if values.dtype.kind == "f" and np.isnan(values).any():
        # NaN compares false with everything, which minima and maxima cannot represent.
        raise AnalysisError(f"{name} holds NaN; a mask reads ids and tables without NaN")
    return values


def _id_comparison(
    lhs: Expr,
    rhs: Expr,
    *,
    positions: Mapping[str, Interval],
    key: str,
    query: str,
    data: Mapping[str, np.ndarray],
) -> tuple[Tri, bool] | None:
    """`A[m] == B[p]` (say document ids): tiles from each side's minimum and maximum."""
    sides = {}
    for side in (lhs, rhs):
        if not (isinstance(side, Access) and len(side.indices) == 1):
            return None
        sides[side.indices[0]] = side.tensor
    if set(sides) != {index_symbol(key), index_symbol(query)}:
        return None
    stats = {}
    exact = True
    for var in (key, query):
        name = sides[index_symbol(var)]
        values = _array(data, name)
        lo, hi = positions[var]
        length = int(hi.max()) + 1
        if values.ndim != 1 or values.shape[0] < length:
            raise AnalysisError(
                f"{name} must be 1-D with {length} values, got shape {values.shape}"
            )
        values = values[:length]
        low = np.minimum.reduceat(values, lo.ravel()).reshape(lo.shape)
        high = np.maximum.reduceat(values, lo.ravel()).reshape(lo.shape)
        steps = np.diff(values)
        # Exact when each tile holds a run of consecutive ids (sorted, no gaps).
        exact = exact and not np.any((steps != 0) & (steps != 1))
        stats[var] = (low, high)
    (klo, khi), (qlo, qhi) = stats[key], stats[query]
    can_true = (klo <= qhi) & (qlo <= khi)
    can_false = ~((klo == khi) & (qlo == qhi) & (klo == qlo))
    return (can_true, can_false), exact


def _table(
    expr: Expr,
    positions: Mapping[str, Interval],
    key: str,
    query: str,
    data: Mapping[str, np.ndarray],
    grid: Sequence[str],
) -> Tri:
    """A condition on one tensor read at grid indices and (functions of) the key and the
    query position, each position index `v` or `v // c`: any/all over each tile's range of
    entries (summed-area tables), per grid point."""
    access, compare = _table_condition(expr)
    values = _array(data, access.tensor)
    if values.ndim != len(access.indices):
        raise AnalysisError(
            f"{access.tensor} has {values.ndim} dimensions, the mask reads "
            f"{len(access.indices)} ({format_expr(expr)})"
        )
    axes = _table_axes(access, expr, positions, grid)
    spans = []
    for axis, (var, divisor) in enumerate(axes):
        if divisor == 0:
            continue
        lo, hi = positions[var]
        lo, hi = lo // divisor, hi // divisor
        if np.any(hi >= values.shape[axis]):
            raise AnalysisError(
                f"{access.tensor} dimension {axis} has {values.shape[axis]} entries, "
                f"the mask reads entry {int(hi.max())} ({format_expr(expr)})"
            )
        spans.append((lo, hi))
    # Grid axes first, in `grid` order (extent 1 for a grid index not read), then positions.
    read = {var: axis for axis, (var, divisor) in enumerate(axes) if divisor == 0}
    order = [read[g] for g in grid if g in read]
    order += [axis for axis, (_, divisor) in enumerate(axes) if divisor != 0]
    holds = np.transpose(compare(values), order)
    shape = [values.shape[read[g]] if g in read else 1 for g in grid]
    holds = holds.reshape((*shape, *holds.shape[len(read) :]))
    can_true, can_false = _any_over(holds, spans), _any_over(~holds, spans)
    if not spans:
        # Read at no position: the same for every tile of a grid point.
        return can_true[..., None, None], can_false[..., None, None]
    return can_true, can_false


def _table_axes(
    access: Access, expr: Expr, positions: Mapping[str, object], grid: Sequence[str]
) -> list[tuple[str, int]]:
    """Per index of a table read, (position, divisor) for `v` or `v // c` and (grid index, 0)
    for a grid index; each read at most once."""
    axes = []
    for index in access.indices:
        if index.is_Symbol and index.name in grid:
            axes.append((index.name, 0))
        else:
            axes.append(_monotone_index(index, expr, positions))
    names = [var for var, _ in axes]
    if len(set(names)) != len(names):
        raise AnalysisError(
            f"{format_expr(expr)}: a data mask reads a table at the key, the query and grid "
            "indices (batch, head), each once (T[b, h, p // B, m // B])"
        )
    return axes


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


def _monotone_index(
    index: sympy.Expr, expr: Expr, positions: Mapping[str, object]
) -> tuple[str, int]:
    """(v, c) for an index `v` or `v // c` of a position: over a tile, a run of values."""
    if index.is_Symbol and index.name in positions:
        return index.name, 1
    if isinstance(index, sympy.floor):
        numerator, denominator = index.args[0].as_numer_denom()
        if (
            numerator.is_Symbol
            and numerator.name in positions
            and denominator.is_Integer
            and denominator > 0
        ):
            return numerator.name, int(denominator)
    raise AnalysisError(f"{format_expr(expr)}: index {index} is not a position or position // c")


def _any_over(holds: np.ndarray, spans: list[Interval]) -> np.ndarray:
    """Whether `holds` has a True entry in the box [lo, hi] of each span over its last
    len(spans) axes, per tile (the spans broadcast against each other), from a summed-area
    table: leading axes are kept in front."""
    k = len(spans)
    if k == 0:
        return holds.copy()
    lead = holds.ndim - k
    table = np.zeros((*holds.shape[:lead], *(n + 1 for n in holds.shape[lead:])), np.int64)
    summed = holds.astype(np.int64)
    for axis in range(lead, holds.ndim):
        summed = summed.cumsum(axis)
    inner: tuple[Any, ...] = (Ellipsis, *(slice(1, None) for _ in spans))
    table[inner] = summed
    total: np.ndarray = np.zeros((), np.int64)
    # Inclusion-exclusion over the box's 2**k corners.
    for corner in itertools.product((0, 1), repeat=k):
        picks: tuple[Any, ...] = (
            Ellipsis,
            *(hi + 1 if c else lo for c, (lo, hi) in zip(corner, spans, strict=True)),
        )
        sign = 1 if (k - sum(corner)) % 2 == 0 else -1
        total = total + sign * table[picks]
    return total > 0
