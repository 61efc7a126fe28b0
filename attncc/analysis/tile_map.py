"""The result of tile classification: one class per (query tile, key tile), the block lists a
block-sparse loop walks (FlexAttention's BlockMask layout), and a text picture."""

from __future__ import annotations

import enum
from dataclasses import dataclass

import numpy as np


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
    could only bound the classification (some EMPTY or FULL tiles may be PARTIAL).

    A mask that reads a table at grid indices (batch, head) classifies tiles per grid point:
    `by_grid[g..., i, j]`, one leading axis per index of `grid` (extent 1 where the mask does
    not vary along it), and `classes` is then their union (EMPTY or FULL only where so at
    every grid point), what an executor sharing one tile list across the grid may use."""

    classes: np.ndarray
    key_len: int
    query_len: int
    key_tile: int
    query_tile: int
    exact: bool = True
    grid: tuple[str, ...] = ()
    by_grid: np.ndarray | None = None

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
