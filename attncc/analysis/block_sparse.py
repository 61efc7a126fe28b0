"""Block sparsity of a cascade: the tile map of each `sparse` declaration, its density as a
symbol the cost analysis multiplies by, and closed forms of the count of non-empty tiles.

A declaration `sparse S[m1, p // T]` names the mask (S's filter) over key tiles m1 of a
partition M -> M1, M0 and query tiles of T. The mask is written over m1, m0 and p; put back
over the key position m = m1*M0 + m0 it is the predicate `attncc.analysis.sparsity` classifies.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
import sympy

from attncc.analysis.predicate import lower_predicate
from attncc.analysis.sparsity import TileMap, classify_tiles
from attncc.errors import AnalysisError
from attncc.ir import (
    Access,
    BlockSparse,
    Cascade,
    Expr,
    evaluate_index,
    index_symbol,
    index_vars,
    indices_used,
    replace_accesses,
    size_symbol,
    substitute,
)


def density_symbol(sparse: BlockSparse) -> sympy.Symbol:
    """The fraction of tiles of `sparse` that are not EMPTY, as a symbol of the cost model."""
    return sympy.Symbol(f"density_{sparse.tensor}", positive=True)


def is_density(symbol: sympy.Symbol) -> bool:
    return symbol.name.startswith("density_")


def sparse_mask(cascade: Cascade, sparse: BlockSparse) -> tuple[Expr, str, str]:
    """The mask of `sparse` over the key position and the query index, with their names."""
    writer = cascade.writer(sparse.tensor)
    part = next((p for p in cascade.partitions if p.outer == sparse.key_tiles), None)
    if writer is None or writer.filter is None or part is None:
        raise AnalysisError(f"sparse {sparse.tensor}: no mask over a partitioned key rank")
    key, outer, inner = part.rank.lower(), part.outer.lower(), part.inner.lower()
    # m0 = m - m1*M0: the tile index cancels out of m1*M0 + m0, leaving the key position.
    position = index_symbol(key) - index_symbol(outer) * size_symbol(part.inner)
    predicate = substitute(_through_views(cascade, writer.filter.predicate), {inner: position})
    return predicate, key, sparse.query_index


def _through_views(cascade: Cascade, expr: Expr) -> Expr:
    """`expr` reading inputs where it reads views of them (`BKDOC[m1,m0] = KDOC[m1*M0+m0]`,
    what partitioning makes of document ids): the data a classifier is given."""

    def view(access: Access) -> Expr:
        writer = cascade.writer(access.tensor)
        if writer is None or writer.reduce or writer.filter or not isinstance(writer.expr, Access):
            return access
        source = writer.expr
        if source.tensor not in cascade.input_names():
            return access
        mapping = {}
        for written, read in zip(writer.indices, access.indices, strict=True):
            if not written.is_Symbol:
                return access
            mapping[written.name] = read
        return substitute(source, mapping)

    return replace_accesses(expr, view)


def tile_map(
    cascade: Cascade,
    sparse: BlockSparse,
    sizes: Mapping[str, int],
    data: Mapping[str, np.ndarray] | None = None,
) -> TileMap:
    """The classification of every (query tile, key tile) of `sparse` at `sizes` (which bind
    the key rank, its tile, the query rank and any size the mask names); per grid point too
    where the mask reads a table at other indices of the masked Einsum (batch, head)."""
    predicate, key, query = sparse_mask(cascade, sparse)
    part = next(p for p in cascade.partitions if p.outer == sparse.key_tiles)
    for rank in (part.rank, part.inner, sparse.query):
        if rank not in sizes:
            raise AnalysisError(f"sparse {sparse.tensor}: no size for {rank}")
    return classify_tiles(
        predicate,
        key_len=sizes[part.rank],
        query_len=sizes[sparse.query],
        key_tile=sizes[part.inner],
        query_tile=int(evaluate_index(sparse.query_tile, sizes)),
        key=key,
        query=query,
        sizes=sizes,
        data=data,
        grid=mask_grid(cascade, sparse),
    )


def mask_grid(cascade: Cascade, sparse: BlockSparse) -> tuple[str, ...]:
    """The indices other than the key tile and the query at which the mask of `sparse` reads
    tables (b, h of `HW[b, h, p] != 0`), in the order the masked Einsum writes them."""
    writer = cascade.writer(sparse.tensor)
    assert writer is not None and writer.filter is not None, "verified sparse declarations"
    part = next(p for p in cascade.partitions if p.outer == sparse.key_tiles)
    own = {sparse.key_tile_index, part.inner.lower(), sparse.query_index}
    read = indices_used(writer.filter.predicate) - own
    return tuple(v for i in writer.indices for v in sorted(index_vars(i)) if v in read)


def densities(cascade: Cascade, sizes: Mapping[str, int]) -> dict[str, float]:
    """The value of each density symbol at `sizes`, for masks that read no data."""
    found = {}
    for sparse in cascade.sparse:
        try:
            found[density_symbol(sparse).name] = tile_map(cascade, sparse, sizes).density
        except AnalysisError:
            continue
    return found


def tile_count_formula(
    predicate: Expr,
    *,
    key_tile: int,
    query_tile: int,
    length: sympy.Symbol | None = None,
    samples: int = 48,
) -> tuple[sympy.Expr, int] | None:
    """The number of non-empty tiles of a self-attention mask (M = P = N) as a polynomial in
    N, with the least N from which it holds; None when none of degree <= 2 fits.

    Over lengths N = n*L (L the least common multiple of the tiles and of the mask's divisors:
    block sizes, dilations) the count of masks of bounded reach is eventually a polynomial in
    n (an Ehrhart-style count of lattice points in a parametric polytope). The polynomial is
    fitted by exact interpolation of classified counts and checked at every sampled length
    from its start to `samples`*L: a formula checked on those lengths, not a proof for all N
    (tests check it far beyond). Masks over a fixed grid (neighborhoods) change meaning with
    N and get no formula from this."""
    n_symbol = sympy.Symbol("n", positive=True, integer=True)
    size = length if length is not None else sympy.Symbol("N", positive=True, integer=True)
    try:
        divisors = [split.divisor for split in lower_predicate(predicate).splits]
    except AnalysisError:
        return None
    # Blocks and dilations repeat every divisor positions: lengths step by all periods at once.
    step = math.lcm(key_tile, query_tile, *divisors)
    counts = []
    for n in range(1, samples + 1):
        try:
            tiles = classify_tiles(
                predicate,
                key_len=n * step,
                query_len=n * step,
                key_tile=key_tile,
                query_tile=query_tile,
            )
        except AnalysisError:
            return None
        counts.append(tiles.nonempty)
    for start in range(1, samples - 4):
        points = [(n, counts[n - 1]) for n in range(start, start + 3)]
        polynomial = sympy.expand(sympy.interpolate(points, n_symbol))
        if all(polynomial.subs(n_symbol, n) == counts[n - 1] for n in range(start, samples + 1)):
            return sympy.expand(polynomial.subs(n_symbol, size / step)), start * step
    return None
