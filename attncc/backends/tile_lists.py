"""Which key tiles each query tile visits, in loop order, and which of them are FULL.

Both executors walk these lists: the block-sparse mask's non-empty tiles, ascending, or every
tile of a dense cascade. Tiles are visited in ascending order because a running update is
only proven equal to the full reduction in that order.

A mask that reads a table at grid indices (`HW[b, h, p] != 0`) has classes per grid point.
Triton runs one program per (query tile, grid point) and takes one list per grid point
(`grid_classes`), so a head that a mask hides over a whole query tile visits no key tile
there. NumPy computes every grid point of a query tile at once and takes the union
(`TileMap.classes`): it skips only what every grid point skips.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from attncc.analysis.block_sparse import tile_map
from attncc.analysis.tile_map import TileClass, TileMap
from attncc.backends.schedule import Schedule
from attncc.errors import LoweringError


@dataclass(frozen=True, eq=False)
class TileLists:
    """Per query tile, the key tiles to visit in ascending order and whether each is FULL:
    `indices[q, :counts[q]]` and `full[q, :counts[q]]`; with leading grid axes when built
    from classes that have them (`indices[g, q, :counts[g, q]]`)."""

    counts: np.ndarray
    indices: np.ndarray
    full: np.ndarray

    @staticmethod
    def of(classes: np.ndarray) -> TileLists:
        nonempty = classes != TileClass.EMPTY
        counts = nonempty.sum(axis=-1)
        indices = np.argsort(~nonempty, axis=-1, kind="stable")
        full = np.take_along_axis(classes, indices, axis=-1) == TileClass.FULL
        return TileLists(counts, indices, full)

    def as_tuple(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return self.counts, self.indices, self.full


def tile_classes(
    nest: Schedule, sizes: Mapping[str, int], arrays: Mapping[str, np.ndarray]
) -> TileMap:
    """The class of every (query tile, key tile) of `nest` at `sizes`: its block-sparse
    mask's classification (data masks read `arrays`), or all FULL for a dense cascade."""
    if nest.sparse is not None:
        return tile_map(nest.cascade, nest.sparse, sizes, arrays)
    query = nest.cascade.rank_of_index(nest.query)
    assert query is not None, "a schedule's query index has a rank"
    query_tiles = -(-sizes[query.name] // nest.query_tile)
    return TileMap(
        np.full((query_tiles, sizes[nest.key.outer]), TileClass.FULL, dtype=np.int8),
        key_len=sizes[nest.key.rank],
        query_len=sizes[query.name],
        key_tile=sizes[nest.key.inner],
        query_tile=nest.query_tile,
    )


def grid_classes(tiles: TileMap, nest: Schedule, sizes: Mapping[str, int]) -> np.ndarray:
    """The classes per program grid point, (grid points, query tiles, key tiles), the grid
    flattened as the kernel numbers it (last grid index fastest); one row shared by every
    grid point when the mask reads no grid index."""
    if tiles.by_grid is None:
        return tiles.classes[None]
    stray = [g for g in tiles.grid if g not in nest.grid]
    if stray:
        raise LoweringError(
            f"the block-sparse mask of {nest.cascade.name} reads index {stray[0]}, which is "
            "not a grid index of the loop nest (batch, head)"
        )
    # The mask's grid axes in the nest's order, extent 1 for a grid index it does not read.
    present = [g for g in nest.grid if g in tiles.grid]
    axes = tiles.by_grid.ndim
    by_grid = np.transpose(tiles.by_grid, (*map(tiles.grid.index, present), axes - 2, axes - 1))
    extents = iter(by_grid.shape)
    shape = [next(extents) if g in tiles.grid else 1 for g in nest.grid]
    tile_shape = by_grid.shape[-2:]
    points = tuple(sizes[nest.rank_of(g)] for g in nest.grid)
    whole = np.broadcast_to(by_grid.reshape((*shape, *tile_shape)), (*points, *tile_shape))
    return whole.reshape((-1, *tile_shape))
