"""Block-sparse densities for the model: the share of tiles each Einsum visits, and the share
of key tiles a chunk of resident query rows needs of each key-indexed input.

A declaration `sparse S[m1, p // T]` hides its EMPTY tiles from every Einsum that iterates both
m1 and p (attncc.ir.BlockSparse). Each declaration has its own density, `density_S`; an Einsum
scales by the densities of the declarations that apply to it (their product, as the cost
analysis counts its operations), never by the others'. A key-indexed input (K, V) is loaded
once per chunk of resident query rows, for the key tiles its readers visit in that chunk: the
union over its readers of the tiles each one visits (those no declaration over it hides),
classified at the chunk's height. A mask that reads data cannot be classified here: its
density is the workload's `density_S`, and a chunk then needs the largest share any reader
visits (a lower bound of the union, exact when one reader's tiles hold the others').
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Mapping

import numpy as np

from attncc.accel.facts import CascadeFacts, EinsumFacts
from attncc.analysis import TileClass, classify_tiles
from attncc.analysis.block_sparse import densities, density_symbol, sparse_mask
from attncc.errors import AttnccError
from attncc.ir import Cascade

Visits = tuple[tuple[str, ...], ...]
"""Per reader of an input, the density names of the declarations that apply to it."""


def einsum_density(einsum: EinsumFacts, values: Mapping[str, float]) -> float:
    """The share of its tiles `einsum` visits: the product of its own declarations'."""
    return math.prod(values[name] for name in einsum.sparse)


@functools.lru_cache(maxsize=1024)
def mask_densities(cascade: Cascade, sizes: tuple[tuple[str, int], ...]) -> dict[str, float]:
    """The density of each declaration whose mask reads no data, at `sizes`. Cached:
    classifying a 1M x 1M mask takes a tenth of a second, and a study asks for the same sizes
    once per model."""
    return densities(cascade, dict(sizes))


def chunk_density(facts: CascadeFacts, values: Mapping[str, float]) -> Callable[[str, int], float]:
    """The share of key tiles that a chunk of `rows` query rows reads of input `source`."""
    cascade = facts.cascade
    if not cascade.sparse:
        return lambda source, rows: 1.0
    sizes = tuple(sorted((k, int(v)) for k, v in values.items() if not k.startswith("density_")))
    names = (density_symbol(s).name for s in cascade.sparse)
    given = tuple(sorted((name, values[name]) for name in names))
    visits = {source: _visits(facts, source) for source in facts.cascade.input_names()}

    def density(source: str, rows: int) -> float:
        found = visits.get(source, ())
        if not found or not all(found):
            return 1.0
        return _union(cascade, sizes, found, rows, given)

    return density


def _visits(facts: CascadeFacts, source: str) -> Visits:
    """The declarations over each Einsum that reads `source` (directly or through a view)."""
    return tuple(
        e.sparse for e in facts.einsums if e.ops and any(facts.source(t) == source for t in e.reads)
    )


@functools.lru_cache(maxsize=1024)
def _union(
    cascade: Cascade,
    sizes: tuple[tuple[str, int], ...],
    visits: Visits,
    rows: int,
    given: tuple[tuple[str, float], ...],
) -> float:
    union: np.ndarray | None = None
    for names in visits:
        tiles = [_visited(cascade, name, sizes, rows) for name in names]
        shapes = {t.shape for t in tiles if t is not None}
        if any(t is None for t in tiles) or len(shapes) != 1:
            return _fallback(visits, dict(given))
        # A reader visits the tiles that none of its declarations hides.
        visited = np.logical_and.reduce([t for t in tiles if t is not None])
        if union is not None and union.shape != visited.shape:
            return _fallback(visits, dict(given))
        union = visited if union is None else union | visited
    assert union is not None, "called only for inputs with readers"
    return float(union.mean())


def _fallback(visits: Visits, given: Mapping[str, float]) -> float:
    return max(math.prod(given[name] for name in names) for names in visits)


@functools.lru_cache(maxsize=1024)
def _visited(
    cascade: Cascade, name: str, sizes: tuple[tuple[str, int], ...], rows: int
) -> np.ndarray | None:
    """Which (chunk, key tile) pairs declaration `name` leaves, or None if its mask reads data
    (or cannot be classified exactly)."""
    sparse = next(s for s in cascade.sparse if density_symbol(s).name == name)
    values = dict(sizes)
    try:
        predicate, key, query = sparse_mask(cascade, sparse)
        part = next(p for p in cascade.partitions if p.outer == sparse.key_tiles)
        tiles = classify_tiles(
            predicate,
            key_len=values[part.rank],
            query_len=values[sparse.query],
            key_tile=values[part.inner],
            query_tile=rows,
            key=key,
            query=query,
            sizes=values,
        )
    except AttnccError:
        return None
    return np.asarray(tiles.classes != TileClass.EMPTY)
