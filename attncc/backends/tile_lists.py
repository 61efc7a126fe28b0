"""Which key tiles each query tile visits, in loop order, and which of them are FULL.

Both executors walk these lists: the block-sparse mask's non-empty tiles, ascending, or every
tile of a dense cascade. Tiles are visited in ascending order because a running update is
only proven equal to the full reduction in that order.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from attncc.analysis.block_sparse import tile_map
from attncc.analysis.tile_map import TileClass, TileMap
from attncc.backends.schedule import Schedule


@dataclass(frozen=True, eq=False)
class TileLists:
    """Per query tile, the key tiles to visit in ascending order and whether each is FULL:
    `indices[q, :counts[q]]` and `full[q, :counts[q]]`."""

    counts: np.ndarray
    indices: np.ndarray
    full: np.ndarray

    @staticmethod
    def of(classes: np.ndarray) -> TileLists:
        nonempty = classes != TileClass.EMPTY
        counts = nonempty.sum(axis=1)
        indices = np.argsort(~nonempty, axis=1, kind="stable")
        full = np.take_along_axis(classes, indices, axis=1) == TileClass.FULL
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
