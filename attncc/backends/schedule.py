"""The schedule of a one-pass cascade: the loop nest both emitters (Triton, fast NumPy) lower.

A cascade with its key rank partitioned (M -> M1, M0) and every reduction over the key tiles
running (FuseMax's Cascade 5, what the `flash` pipeline produces) is one loop nest
(DESIGN.md, "Lowering"):

    for each point of the grid (batch, heads) and each query tile:      # parallel
        prologue                                  # per query: QS = Q * scale
        init carried values                       # RM = -inf, RD = 0, RNV = 0
        for each key tile m1 that is not EMPTY:   # the block-sparse lists, or every tile
            loads                                 # BK, BV: tiles of K and V
            body, in order                        # scores, row max, exp, row sums, updates
        epilogue                                  # AV = RNV / RD

Einsums of the key loop need not vary with the query: key-side values (linear attention's
phi(K)) are computed in every query tile's loop; when none of them varies with it (the total of
phi(K)^T V of reassociated linear attention), the loop runs once, before the query tiles
(`Schedule.hoisted`): O(M + P) work instead of a key loop per query tile.
`schedule` sorts the Einsums into those roles and refuses, with the reason, a cascade that is
not in this form; emitters never guess.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, replace

import sympy

from attncc.differential import mismatches
from attncc.errors import LoweringError
from attncc.ir import (
    BlockSparse,
    Call,
    Cascade,
    Einsum,
    Expr,
    Partition,
    as_index,
    format_index,
    index_name,
    index_symbol,
    index_vars,
    size_symbol,
    verify,
)


@dataclass(frozen=True)
class Schedule:
    """A cascade's Einsums by role in the loop nest (see the module docstring).

    `grid` are the parallel indices besides the query (batch, heads); `query` the index cut
    into tiles of `query_tile`; `carried` the running updates over the key tiles, in body order.
    """

    cascade: Cascade
    key: Partition
    query: str
    query_tile: int
    grid: tuple[str, ...]
    prologue: tuple[Einsum, ...]
    loads: tuple[Einsum, ...]
    body: tuple[Einsum, ...]
    epilogue: tuple[Einsum, ...]
    sparse: BlockSparse | None

    @property
    def key_tile_index(self) -> str:
        return index_name(self.key.outer)

    def rank_of(self, var: str) -> str:
        """The rank index variable `var` runs over (`p` -> P)."""
        rank = self.cascade.rank_of_index(var)
        if rank is None:
            raise LoweringError(f"index {var} of {self.cascade.name} names no rank")
        return rank.name

    @property
    def carried(self) -> tuple[Einsum, ...]:
        return tuple(e for e in self.body if e.iterative_index == self.key_tile_index)

    @property
    def hoisted(self) -> bool:
        """The key loop runs once per grid point, before the query tiles, which then run one
        after the other: no Einsum of the loop varies with the query (reassociated linear
        attention's sums of phi(K)^T V serve every query) and no mask picks key tiles per
        query tile. Otherwise each query tile runs its own key loop."""
        return self.sparse is None and all(self.query not in e.space for e in self.body)

    @property
    def accumulated(self) -> tuple[Einsum, ...]:
        """Reductions over the key tiles themselves (sigmoid attention's AV): each tile adds
        its part to a loop-carried total, complete after the loop."""
        return tuple(e for e in self.body if self.key_tile_index in e.reduced)


@functools.lru_cache(maxsize=256)
def schedule(cascade: Cascade, *, query_tile: int = 64) -> Schedule:
    """The loop nest of `cascade`; raises LoweringError saying why a cascade is not one.
    Cached: backends ask for the nest of the same cascade on every call.

    The query tile is the block-sparse declaration's when there is one, else `query_tile`."""
    verify(cascade)
    part = _key_partition(cascade)
    outer = index_name(part.outer)
    sparse = next((s for s in cascade.sparse if s.key_tiles == part.outer), None)
    in_loop = [e for e in cascade.einsums if outer in e.space]
    loads = tuple(e for e in in_loop if _is_load(cascade, e, part))
    body = tuple(e for e in in_loop if e not in loads)
    for einsum in body:
        if outer in einsum.reduced:
            _check_accumulated(einsum, body, part)
        if einsum.iterative_index not in (None, outer):
            raise LoweringError(
                f"Einsum {einsum.tensor} runs over {einsum.iterative_index}, not the key tiles "
                f"{outer}: a one-pass loop nest has one loop"
            )
    common = frozenset.intersection(*(e.lhs_vars for e in body)) - {outer} if body else frozenset()
    query = _query(cascade, sparse, common, part)
    grid = common & frozenset(_output_vars(cascade))
    after_loop = {e.tensor for e in body}
    epilogue_list, prologue_list = [], []
    for einsum in (e for e in cascade.einsums if outer not in e.space):
        # What reads the loop's results, directly or through another, runs after it.
        if einsum.reads & after_loop:
            after_loop.add(einsum.tensor)
            epilogue_list.append(einsum)
        else:
            prologue_list.append(einsum)
    epilogue, prologue = tuple(epilogue_list), tuple(prologue_list)
    _check_epilogue(cascade, epilogue, body, part)
    tile = int(sparse.query_tile) if sparse is not None else query_tile
    if tile < 1:
        raise LoweringError(f"query tile must be positive, got {tile}")
    return Schedule(
        cascade=cascade,
        key=part,
        query=query,
        query_tile=tile,
        grid=tuple(sorted(grid - {query})),
        prologue=prologue,
        loads=loads,
        body=body,
        epilogue=epilogue,
        sparse=sparse,
    )


def _key_partition(cascade: Cascade) -> Partition:
    running = {e.iterative_index for e in cascade.einsums if e.iterative_index is not None}
    totals = set().union(*(e.reduced for e in cascade.einsums))
    parts = [p for p in cascade.partitions if index_name(p.outer) in running | totals]
    if len(parts) != 1:
        found = ", ".join(p.outer for p in parts) or "none"
        raise LoweringError(
            "a one-pass cascade runs over exactly one partitioned key rank (running updates or "
            f"totals over partition outer ranks: {found}); run the flash pipeline"
        )
    _check_running_reads(cascade, parts[0])
    return parts[0]


def _check_running_reads(cascade: Cascade, part: Partition) -> None:
    """A running value over the key tiles is read at the current, the previous or the last
    tile; a tile picked by another index (chunked causal linear attention's state read at the
    query's own chunk, RFKV[e,f,p//M0]) needs a scan from one query tile to the next."""
    outer = index_name(part.outer)
    running = {e.tensor: e for e in cascade.einsums if e.iterative_index == outer}
    for einsum in cascade.einsums:
        for access in einsum.read_accesses():
            writer = running.get(access.tensor)
            if writer is None:
                continue
            step = next(k for k, i in enumerate(writer.indices) if outer in index_vars(i))
            at = access.indices[step]
            chosen_by = ", ".join(sorted(index_vars(at) - {outer}))
            if chosen_by:
                raise LoweringError(
                    f"Einsum {einsum.tensor} reads the running value {access.tensor} at key tile "
                    f"{format_index(at)}, chosen by {chosen_by}: "
                    "each query tile would start from the value another one ends with, a scan "
                    "over the query tiles that the loop nest (query tiles in parallel, each "
                    "over its own key tiles) does not have; lower the cascade as it was before "
                    "chunk-causal (its causal tiles are skipped), or run it on the reference "
                    "backend"
                )


def _is_load(cascade: Cascade, einsum: Einsum, part: Partition) -> bool:
    """A tile view of an input: `BK[.., m1, m0] = K[.., m1*M0 + m0]`, nothing else."""
    tile = part.recombined()
    reads = einsum.read_accesses()
    return (
        einsum.reduce is None
        and einsum.filter is None
        and len(reads) == 1
        and reads[0] == einsum.expr
        and reads[0].tensor in cascade.input_names()
        and tile in reads[0].indices
    )


def _output_vars(cascade: Cascade) -> tuple[str, ...]:
    """The index variables of the first output, in its layout order."""
    output = cascade.writer(cascade.outputs[0].name)
    assert output is not None, "verified cascades write their outputs"
    return tuple(v for i in output.indices for v in sorted(index_vars(i)))


def _query(
    cascade: Cascade, sparse: BlockSparse | None, common: frozenset[str], part: Partition
) -> str:
    """The parallel index cut into tiles: the block-sparse one; else the last index of the
    first output that some Einsum of the key loop lacks (the loop makes values shared by
    every query, such as phi(K) or linear attention's sum of phi(K)^T V) and that no input
    of the key rank has (a head dimension, read whole: F in V[f,m]); else the last index of
    the first output that every Einsum of the key loop has (P in AV[b,h,f,p])."""
    if sparse is not None:
        return sparse.query_index
    outputs = _output_vars(cascade)
    key_side = {
        index_name(rank) for d in cascade.inputs if part.rank in d.ranks for rank in d.ranks
    }
    shared = [v for v in outputs if v not in common and v not in key_side]
    candidates = shared or [v for v in outputs if v in common]
    if not candidates:
        raise LoweringError(
            f"no index of {cascade.outputs[0].name} runs through every Einsum of the key loop: "
            "nothing to spread over a grid"
        )
    return candidates[-1]


def _check_accumulated(einsum: Einsum, body: tuple[Einsum, ...], part: Partition) -> None:
    """A reduction over the key tiles is a running total only if nothing in the loop reads it
    before it is complete; anything else needs another pass."""
    readers = [e.tensor for e in body if einsum.tensor in e.reads]
    if readers:
        raise LoweringError(
            f"Einsum {einsum.tensor} reduces over all of {part.outer}, and {', '.join(readers)} "
            "reads it inside the same key loop: that needs another pass; run the flash "
            "pipeline first"
        )


def _check_epilogue(
    cascade: Cascade, epilogue: tuple[Einsum, ...], body: tuple[Einsum, ...], part: Partition
) -> None:
    """After the loop only final values exist: running tensors at their last coordinate."""
    outer = index_name(part.outer)
    running = {e.tensor for e in body if e.iterative_index == outer}
    in_loop = {e.tensor for e in body if outer not in e.reduced}
    final = size_symbol(part.outer)
    for einsum in epilogue:
        for access in einsum.read_accesses():
            if access.tensor in in_loop and (
                access.tensor not in running or final not in access.indices
            ):
                raise LoweringError(
                    f"Einsum {einsum.tensor} reads {access.tensor} after the key loop, where "
                    f"only final running values ({', '.join(sorted(running))} at "
                    f"{part.outer}) are kept"
                )


@functools.lru_cache(maxsize=256)
def retile(
    cascade: Cascade, *, key_tile: int | None = None, query_tile: int | None = None
) -> Cascade:
    """`cascade` with its key tiles `key_tile` long and its block-sparse query tiles
    `query_tile` long: another loop nest (bigger tiles for NumPy, tuned ones for a GPU) for
    the same results. Refused where the results depend on the tile size: where a value reads
    it (`Size M0` in an expression), where an index uses it other than in `m1*M0 + m0`, and
    wherever the retiled cascade disagrees with the original when both are run on random
    inputs spanning several tiles of each size (a count of tiles, a total of per-tile
    maxima: what no syntactic rule catches). Cached: the check runs once per cascade."""
    verify(cascade)
    retiled = cascade
    if key_tile is not None:
        retiled = _retile_keys(retiled, key_tile)
    if query_tile is not None:
        if query_tile < 1:
            raise LoweringError(f"query tile must be positive, got {query_tile}")
        tile = sympy.Integer(query_tile)
        retiled = replace(
            retiled, sparse=tuple(replace(s, query_tile=tile) for s in retiled.sparse)
        )
    if retiled != cascade:
        found = mismatches(cascade, retiled, trials=2)
        if found:
            raise LoweringError(
                f"retiling {cascade.name} to {key_tile} keys by {query_tile} queries changes "
                f"its results ({found[0]}): they depend on the tile size, which must stay"
            )
    return retiled


def _retile_keys(cascade: Cascade, key_tile: int) -> Cascade:
    if key_tile < 1:
        raise LoweringError(f"key tile must be positive, got {key_tile}")
    part = _key_partition(cascade)
    inner = size_symbol(part.inner)
    # In terms of the key position m, m0 = m - m1*M0: what still mentions M0 or m1 then
    # depends on the tiling, not only on the keys.
    position = {
        index_symbol(index_name(part.inner)): index_symbol(index_name(part.rank))
        - index_symbol(index_name(part.outer)) * inner
    }

    outer = index_symbol(index_name(part.outer))

    def tiled(index: sympy.Expr) -> bool:
        left = sympy.expand(index.xreplace(position)).free_symbols
        return inner in left or outer in left

    for einsum in cascade.einsums:
        for value in einsum.parts():
            if _value_uses(value, tiled):
                raise LoweringError(
                    f"Einsum {einsum.tensor} computes with the key tile size {part.inner} "
                    "(not as m1*M0 + m0): its result depends on the tiling, which must stay"
                )
        for index in (*einsum.indices, *(i for a in einsum.read_accesses() for i in a.indices)):
            if inner in index.free_symbols and tiled(index):
                raise LoweringError(
                    f"Einsum {einsum.tensor} indexes with {index}, which uses the key tile "
                    f"size {part.inner} other than in {part.recombined()}; it cannot be retiled"
                )
    ranks = tuple(
        replace(r, size=sympy.Integer(key_tile)) if r.name == part.inner else r
        for r in cascade.ranks
    )
    return replace(cascade, ranks=ranks)


def _value_uses(expr: Expr, tiled: Callable[[sympy.Expr], bool]) -> bool:
    """Whether a value expression has an index-like part (`m1*M0 + m0 <= p` has one) that
    `tiled` flags, or uses a size outside of one."""
    index = as_index(expr)
    if index is not None:
        return tiled(index)
    if isinstance(expr, Call):
        return any(_value_uses(arg, tiled) for arg in expr.args)
    return False
