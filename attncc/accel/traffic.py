"""Data movement of one phase: what the global buffer must hold, what spills, and the words
moved between DRAM, the buffer and the arrays.

The buffer holds, for each query row in flight, the row's inputs (Q[e,p]: E words) and what
the pass analysis says a pass must keep (attncc.analysis.footprint): running values (RM, RD,
RNV: constant per row), reduced values (GM) and fibers (QK[m,p] of a 3-pass cascade: M words
per row), plus the mapping's `residency.key_tiles` key tiles of the key-indexed inputs (K,
V). The rows in flight are the query tile of the arrays (P0) times P1 query tiles; P1, unless
the mapping gives it, is as large as fits, rounded down to a divisor of the query tiles or
not as `residency.query_tiles` says. When even one query tile's fibers do not fit, the share
that does not is spilled: written to DRAM and read back once per later pass that reads it
(the footprint's spill traffic, scaled by that share).

DRAM traffic: inputs that carry the query rank once; key-indexed inputs once per chunk of
resident rows (only the key tiles its readers visit in that chunk: attncc.accel.density);
outputs once; every intermediate that crosses phases written once and read by each phase
that reads it.

Buffer traffic: each Einsum reads its operands from the buffer unless they were produced on
the same array in the same pass (then they stay in the PEs' registers); an operand that lacks
an index the array spreads is multicast along that dimension, and one that lacks a temporal
index stays in the PE while that index runs (output- and input-stationary reuse). Results go to
the buffer when another array, another pass or another phase reads them. Every DRAM word also
passes through the buffer once.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from attncc.accel.density import einsum_density
from attncc.accel.facts import CascadeFacts, EinsumFacts
from attncc.accel.mapping import Fill, spread
from attncc.accel.mapping import Mapping as AccelMapping
from attncc.accel.spec import Architecture, SpecError
from attncc.analysis import LiveKind


@dataclass(frozen=True)
class Residency:
    """`rows` query rows on the arrays (P0) times `query_tiles` (P1) resident in the buffer,
    `chunks` such groups over the query rank; per row, `row_words` held of which
    `fiber_words` may spill; `tile_words` for the key tiles of inputs the buffer reserves;
    `spilled` the share of the fibers that does not fit."""

    rows: int
    query_tiles: int
    chunks: int
    row_words: float
    fiber_words: float
    tile_words: float
    spilled: float


@dataclass(frozen=True)
class PhaseTraffic:
    """Words moved by one phase of one instance."""

    residency: Residency
    dram_read: float
    dram_write: float
    buffer_read: float
    buffer_write: float


@dataclass(frozen=True)
class Sizes:
    """Rank sizes of one instance (instance ranks at 1) and mask densities, with products of
    index extents that count a partition's outer and inner index together as its rank."""

    facts: CascadeFacts
    values: Mapping[str, float]

    def of(self, index: str) -> float:
        rank = self.facts.cascade.rank_of_index(index)
        assert rank is not None, "indices of verified cascades name ranks"
        return self.values[rank.name]

    def extent(self, indices: frozenset[str]) -> float:
        remaining = set(indices)
        total = 1.0
        for part in self.facts.cascade.partitions:
            pair = {part.outer.lower(), part.inner.lower()}
            if pair <= remaining:
                remaining -= pair
                total *= self.values[part.rank]
        for index in remaining:
            total *= self.of(index)
        return total


def phase_traffic(
    facts: CascadeFacts,
    mapping: AccelMapping,
    arch: Architecture,
    phase: int,
    sizes: Sizes,
    chunk_density: Callable[[str, int], float],
) -> PhaseTraffic:
    """The traffic of phase `phase` of `mapping`, for one instance at `sizes`;
    `chunk_density(input, rows)` is the share of key tiles a chunk of rows reads of input."""
    members = set(mapping.phases[phase])
    stay = _Residents(facts, mapping, members)
    residency = _residency(facts, mapping, arch, members, sizes, stay)
    dram_read = _dram_reads(facts, sizes, stay, residency, chunk_density)
    dram_write = buffer_read = buffer_write = 0.0
    for einsum in (facts.einsum(n) for n in mapping.phases[phase]):
        reads, writes, to_dram = _einsum_traffic(facts, mapping, phase, einsum, sizes, stay)
        buffer_read += reads
        buffer_write += writes
        dram_write += to_dram
    spill_reads, spill_writes = _spilled_words(facts, members, sizes)
    dram_read += residency.spilled * spill_reads
    dram_write += residency.spilled * spill_writes
    # Every DRAM word is staged through the buffer on its way in or out.
    return PhaseTraffic(
        residency, dram_read, dram_write, buffer_read + dram_write, buffer_write + dram_read
    )


def _dram_reads(
    facts: CascadeFacts,
    sizes: Sizes,
    stay: _Residents,
    residency: Residency,
    chunk_density: Callable[[str, int], float],
) -> float:
    """Inputs with the query rank once, key-indexed ones once per chunk (the tiles it
    visits), and intermediates that earlier phases wrote."""
    query = facts.roles.query.lower()
    rows = residency.rows * residency.query_tiles
    words = 0.0
    for source in stay.inputs():
        elements = facts.elements(source)(sizes.values)
        if query not in facts.indices(source):
            elements *= residency.chunks * chunk_density(source, rows)
        words += elements
    for tensor in stay.crossing():
        words += facts.elements(tensor)(sizes.values)
    return words


def _einsum_traffic(
    facts: CascadeFacts,
    mapping: AccelMapping,
    phase: int,
    einsum: EinsumFacts,
    sizes: Sizes,
    stay: _Residents,
) -> tuple[float, float, float]:
    """Words `einsum` reads from the buffer, writes to it, and writes to DRAM."""
    phase_of = {name: k for k, group in enumerate(mapping.phases) for name in group}
    outputs = set(facts.cascade.output_names())
    reads = 0.0
    if mapping.array_of(einsum.name) is not None:
        for tensor in einsum.reads:
            if not stay.local(facts.source(tensor), einsum):
                reads += _operand_words(facts, mapping, einsum, tensor, sizes)
    elements = facts.elements(einsum.name)(sizes.values)
    readers = [e for e in facts.einsums if einsum.name in e.reads and e.name != einsum.name]
    crosses = einsum.name in outputs or any(phase_of[r.name] != phase for r in readers)
    to_dram = elements if crosses else 0.0
    if einsum.name in dict(facts.views):
        return reads, 0.0, to_dram
    if einsum.name in outputs:
        return reads, elements, to_dram
    # A running value read after its traversal is written once, its last iterate.
    away = [r for r in readers if not stay.local(einsum.name, r)]
    touched = (facts.indices(einsum.name) & r.space for r in away)
    return reads, max((sizes.extent(frozenset(t)) for t in touched), default=0.0), to_dram


@dataclass(frozen=True)
class _Residents:
    """Which tensors a phase reads from memory and which stay in the PEs."""

    facts: CascadeFacts
    mapping: AccelMapping
    members: set[str]

    def _sources(self) -> list[str]:
        found = (
            self.facts.source(t)
            for e in self.facts.einsums
            if e.name in self.members
            for t in e.reads
        )
        return list(dict.fromkeys(found))

    def inputs(self) -> list[str]:
        """The inputs the phase reads (through views such as BK)."""
        inputs = set(self.facts.cascade.input_names())
        return [s for s in self._sources() if s in inputs]

    def crossing(self) -> list[str]:
        """Intermediates an earlier phase wrote to DRAM that this phase reads."""
        inputs = set(self.facts.cascade.input_names())
        return [s for s in self._sources() if s not in inputs and s not in self.members]

    def local(self, tensor: str, reader: EinsumFacts) -> bool:
        """Whether `reader` finds `tensor` in its PEs: produced by the same array, in the same
        phase and the same pass (or it is the reader's own running value)."""
        if tensor == reader.name:
            return True
        if tensor not in self.members or reader.name not in self.members:
            return False
        producer = next((e for e in self.facts.einsums if e.name == tensor), None)
        if producer is None:
            return False
        array = self.mapping.array_of(reader.name)
        return (
            array is not None
            and self.mapping.array_of(tensor) == array
            and producer.pass_number == reader.pass_number
            and producer.pass_number is not None
        )


def _residency(
    facts: CascadeFacts,
    mapping: AccelMapping,
    arch: Architecture,
    members: set[str],
    sizes: Sizes,
    stay: _Residents,
) -> Residency:
    length = sizes.values[facts.roles.query]
    rows = _rows(facts, mapping, members, length)
    row_inputs, tile_words = _input_words(facts, mapping, sizes, stay)
    held, fibers = _held_per_row(facts, members, sizes)
    row_words = row_inputs + held
    capacity = arch.buffer.capacity / arch.data_bytes - tile_words
    query_tiles = _query_tiles(mapping, math.ceil(length / rows), capacity, rows * row_words)
    resident = rows * query_tiles * row_words
    spilled = 0.0
    if resident > capacity:
        fixed = rows * query_tiles * (row_words - fibers)
        if fibers == 0 or fixed > capacity:
            raise SpecError(
                f"{arch.source}: buffer.capacity_bytes: {arch.buffer.capacity} bytes cannot hold "
                f"{rows * query_tiles} query rows of {row_words - fibers:g} words each plus "
                f"{mapping.key_tiles} key tile(s) of {tile_words / mapping.key_tiles:g} words "
                f"({arch.data_bytes} bytes a word); use a larger buffer or smaller tiles "
                "(tiles.P0, tiles.P1, residency.key_tiles)"
            )
        spilled = (resident - capacity) / (rows * query_tiles * fibers)
    chunks = math.ceil(length / (rows * query_tiles))
    return Residency(rows, query_tiles, chunks, row_words, fibers, tile_words, spilled)


def _rows(facts: CascadeFacts, mapping: AccelMapping, members: set[str], length: float) -> int:
    """Query rows on the arrays at once (P0): the query tile where an array spreads queries."""
    query = facts.roles.query.lower()
    extents = dict(mapping.tiles)
    spreads = [
        spread(facts.einsum(n).space, mapping.spatial_of(array), extents)
        for n in members
        if (array := mapping.array_of(n)) is not None
    ]
    return int(min(max((extents[query] for s in spreads if query in s), default=1), length))


def _input_words(
    facts: CascadeFacts, mapping: AccelMapping, sizes: Sizes, stay: _Residents
) -> tuple[float, float]:
    """Words per query row of the query-indexed inputs, and words of the key tiles the buffer
    reserves for the key-indexed ones."""
    roles = facts.roles
    query = roles.query.lower()
    per_row = {**dict(sizes.values), roles.query: 1.0}
    per_tile = {**per_row, roles.key: float(mapping.tile((roles.inner or roles.key).lower()))}
    if roles.outer is not None:
        per_tile[roles.outer] = 1.0
    row_words = tile_words = 0.0
    for source in stay.inputs():
        if query in facts.indices(source):
            row_words += facts.elements(source)(per_row)
        else:
            tile_words += facts.elements(source)(per_tile) * mapping.key_tiles
    return row_words, tile_words


def _held_per_row(facts: CascadeFacts, members: set[str], sizes: Sizes) -> tuple[float, float]:
    """Words per query row the fullest pass holds (attncc.analysis.footprint), and how many
    of them are fibers, which may spill."""
    by_pass: dict[int, list[float]] = {}
    for live in facts.live:
        if not members & set(live.readers):
            continue
        held = live.per_row(sizes.values)
        entry = by_pass.setdefault(live.pass_number, [0.0, 0.0])
        entry[0] += held
        if live.kind is LiveKind.FIBER:
            entry[1] += held
    held, fibers = max(by_pass.values(), default=[0.0, 0.0])
    return held, fibers


def _query_tiles(mapping: AccelMapping, tiles: int, capacity: float, tile_words: float) -> int:
    """P1: the mapping's, else as many query tiles of `tile_words` as fit (at least one),
    rounded down to a divisor of `tiles` if the mapping says so."""
    if mapping.query_tiles is not None:
        return min(mapping.query_tiles, tiles)
    fit = min(int(capacity // tile_words), tiles) if tile_words else tiles
    if fit < 1:
        return 1
    if mapping.fill is Fill.DIVISOR:
        return max(d for d in range(1, fit + 1) if tiles % d == 0)
    return fit


def _operand_words(
    facts: CascadeFacts, mapping: AccelMapping, einsum: EinsumFacts, tensor: str, sizes: Sizes
) -> float:
    """Words of `tensor` (as `einsum` reads it: BK, not K) the array reads for `einsum`: each
    element it touches once, times the tiles of each spread index it lacks (multicast within
    a tile, re-read across tiles), in the tiles `einsum`'s own block-sparse declarations
    leave."""
    array = mapping.array_of(einsum.name)
    assert array is not None
    own = facts.indices(tensor) & einsum.space
    words = sizes.extent(frozenset(own))
    for index in spread(einsum.space, mapping.spatial_of(array), dict(mapping.tiles)):
        if index is not None and index not in own:
            words *= math.ceil(sizes.of(index) / mapping.tile(index))
    return words * einsum_density(einsum, sizes.values)


def _spilled_words(facts: CascadeFacts, members: set[str], sizes: Sizes) -> tuple[float, float]:
    """Words read and written if every fiber the phase holds went to DRAM: written once by
    its producer (when it runs in this phase), read back by each later pass that reads it."""
    reads = writes = 0.0
    held = [
        live for live in facts.live if live.kind is LiveKind.FIBER and members & set(live.readers)
    ]
    for tensor in dict.fromkeys(live.tensor for live in held):
        elements = facts.elements(tensor)(sizes.values)
        reads += elements * sum(live.tensor == tensor for live in held)
        writes += elements if tensor in members else 0.0
    return reads, writes
