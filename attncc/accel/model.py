"""The analytical model: a cascade, an architecture, a mapping and sizes give latency, DRAM
traffic, utilization of each array and energy, with the per-Einsum and per-phase detail that
says why.

Per Einsum: the operation counts of the cost analysis, each costing its cycles on the bound
array, spread over the PEs the Einsum's points can occupy (`sequential` PEs add an Einsum's
operations, `pipelined` ones overlap the kinds). Per phase: each array's compute time; the
arrays overlap (`pipelined`, the busiest sets the pace) or take turns (`serialized`); memory
time is DRAM words over the bandwidth, buffer time the buffer's words over its width; the phase
takes the longest of compute, DRAM and buffer time (transfers overlap compute by double
buffering). Phases run one after another. Utilization of an array is the PE-cycles its
operations need over the PE-cycles of the whole run. Nothing here is specific to a design: a
different cascade changes the counts, the passes and the footprint, and so the result.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from attncc.accel.energy import add, compute_energy, memory_energy
from attncc.accel.facts import CascadeFacts, EinsumFacts
from attncc.accel.mapping import Mapping as AccelMapping
from attncc.accel.mapping import Overlap, efficiency, plan
from attncc.accel.spec import Architecture, Issue, SpecError
from attncc.accel.traffic import Residency, Sizes, phase_traffic
from attncc.analysis.block_sparse import densities, sparse_mask
from attncc.analysis.sparsity import classify_tiles
from attncc.errors import AttnccError, ShapeError
from attncc.ir import Cascade, bind_sizes


@dataclass(frozen=True)
class Workload:
    """Rank sizes of the cascade (`M`, `P`, `E`, ...; `density_S` for a mask that reads data)
    and `instances`, the independent problems it does not write (batch x heads)."""

    name: str
    sizes: tuple[tuple[str, float], ...]
    instances: int = 1


@dataclass(frozen=True)
class EinsumReport:
    name: str
    array: str | None
    ops: tuple[tuple[str, float], ...]
    seconds: float
    useful_seconds: float
    energy_pj: float


@dataclass(frozen=True)
class PhaseReport:
    einsums: tuple[str, ...]
    compute_s: tuple[tuple[str, float], ...]
    compute: float
    memory: float
    buffer: float
    latency: float
    dram_bytes: float
    residency: Residency

    @property
    def bound(self) -> str:
        """What limits the phase: the busiest array, DRAM or the buffer."""
        slowest = max(self.compute_s, key=lambda c: c[1], default=("compute", 0.0))[0]
        return max(
            ((self.compute, slowest), (self.memory, "dram"), (self.buffer, "buffer")),
            key=lambda item: item[0],
        )[1]


@dataclass(frozen=True)
class Result:
    design: str
    cascade: str
    workload: str
    latency: float
    dram_bytes: float
    energy_pj: float
    energy: tuple[tuple[str, float], ...]
    utilization: tuple[tuple[str, float], ...]
    einsums: tuple[EinsumReport, ...]
    phases: tuple[PhaseReport, ...]
    mapping: AccelMapping

    def util(self, array: str) -> float:
        return dict(self.utilization).get(array, 0.0)

    def row(self) -> dict[str, Any]:
        """One CSV row: the headline numbers, utilization per array and energy by action."""
        row: dict[str, Any] = {
            "design": self.design,
            "cascade": self.cascade,
            "workload": self.workload,
            "latency_s": self.latency,
            "dram_bytes": self.dram_bytes,
            "energy_pj": self.energy_pj,
            "phases": len(self.phases),
        }
        row |= {f"util_{a}": u for a, u in self.utilization}
        row |= {f"energy_{a}_pj": e for a, e in self.energy}
        return row


def evaluate(
    cascade: Cascade,
    arch: Architecture,
    workload: Workload,
    mapping: Mapping[str, Any] | None = None,
) -> Result:
    """Model `cascade` on `arch` at `workload`, with the preset's mapping and `mapping`'s
    overrides."""
    facts, chosen = plan(cascade, arch, mapping)
    sizes = _sizes(facts, workload)
    instances = workload.instances * math.prod(sizes.values[r] for r in facts.roles.instances)
    per_instance = Sizes(facts, {**sizes.values, **{r: 1.0 for r in facts.roles.instances}})
    reports = {
        e.name: _einsum(facts, e, arch, chosen, per_instance, instances) for e in facts.einsums
    }
    density = _chunk_density(facts, per_instance)
    phases, energies = [], [r[1] for r in reports.values()]
    for k, names in enumerate(chosen.phases):
        traffic = phase_traffic(facts, chosen, arch, k, per_instance, density)
        by_array: dict[str, float] = {}
        for name in names:
            report = reports[name][0]
            if report.array is not None:
                by_array[report.array] = by_array.get(report.array, 0.0) + report.seconds
        compute = (
            max(by_array.values(), default=0.0)
            if chosen.overlap is Overlap.PIPELINED
            else sum(by_array.values())
        )
        words = traffic.dram_read + traffic.dram_write
        dram_bytes = words * arch.data_bytes * instances
        buffer_bytes = (traffic.buffer_read + traffic.buffer_write) * arch.data_bytes * instances
        memory = dram_bytes / arch.dram_bandwidth
        buffer = buffer_bytes / (arch.buffer.bytes_per_cycle * arch.clock)
        phases.append(
            PhaseReport(
                names,
                tuple(sorted(by_array.items())),
                compute,
                memory,
                buffer,
                max(compute, memory, buffer),
                dram_bytes,
                traffic.residency,
            )
        )
        energies.append(
            {
                k: v * instances
                for k, v in memory_energy(
                    arch,
                    traffic.buffer_read,
                    traffic.buffer_write,
                    traffic.dram_read,
                    traffic.dram_write,
                ).items()
            }
        )
    latency = sum(p.latency for p in phases)
    energy = add(energies)
    utilization = {
        a.name: sum(r.useful_seconds for r, _ in reports.values() if r.array == a.name)
        * (1.0 / latency if latency else 0.0)
        for a in arch.arrays
    }
    return Result(
        design=arch.name,
        cascade=cascade.name,
        workload=workload.name,
        latency=latency,
        dram_bytes=sum(p.dram_bytes for p in phases),
        energy_pj=sum(energy.values()),
        energy=tuple(sorted(energy.items())),
        utilization=tuple(utilization.items()),
        einsums=tuple(r for r, _ in reports.values()),
        phases=tuple(phases),
        mapping=chosen,
    )


def _sizes(facts: CascadeFacts, workload: Workload) -> Sizes:
    given = dict(workload.sizes)
    cascade = facts.cascade
    ranks = {r.name for r in cascade.all_ranks()}
    unknown = sorted(k for k in given if k not in ranks and not k.startswith("density_"))
    if unknown:
        raise ShapeError(
            f"workload {workload.name}: {', '.join(unknown)} is not a rank of {cascade.name}; "
            f"its ranks: {', '.join(sorted(ranks))} (batch and heads it lacks go in instances)"
        )
    try:
        bound: dict[str, float] = {
            k: float(v)
            for k, v in bind_sizes(
                cascade, {k: int(v) for k, v in given.items() if k in ranks}
            ).items()
        }
    except AttnccError as error:
        raise ShapeError(f"workload {workload.name}: {error}") from None
    bound |= _densities(cascade, tuple(sorted((k, int(v)) for k, v in bound.items())))
    bound |= {k: float(v) for k, v in given.items() if k.startswith("density_")}
    for sparse in cascade.sparse:
        name = f"density_{sparse.tensor}"
        if name not in bound:
            raise ShapeError(
                f"workload {workload.name}: the mask of {sparse.tensor} reads data; give its "
                f"tile density as {name}=..."
            )
    return Sizes(facts, bound)


def _einsum(
    facts: CascadeFacts,
    einsum: EinsumFacts,
    arch: Architecture,
    mapping: AccelMapping,
    sizes: Sizes,
    instances: float,
) -> tuple[EinsumReport, dict[str, float]]:
    """Seconds, PE-seconds of useful work, and energy of one Einsum over all instances."""
    counts = {kind: formula(sizes.values) * instances for kind, formula in einsum.ops}
    name = mapping.array_of(einsum.name)
    if name is None:
        return EinsumReport(einsum.name, None, (), 0.0, 0.0, 0.0), {}
    array = arch.array(name)
    if array is None:
        raise SpecError(f"Einsum {einsum.name} is bound to {name}, which {arch.name} lacks")
    busy = {}
    for kind, count in counts.items():
        op = array.op(kind)
        assert op is not None, "the mapping binds Einsums only to arrays that run their ops"
        busy[kind] = count * op.cycles
    cycles = (
        sum(busy.values()) if array.issue is Issue.SEQUENTIAL else max(busy.values(), default=0.0)
    )
    tiles = {index: int(min(tile, sizes.of(index))) for index, tile in mapping.tiles}
    share = efficiency(einsum, array, mapping.spatial_of(name), tiles)
    seconds = cycles / (array.pes * share) / arch.clock
    useful = cycles / array.pes / arch.clock
    energy = compute_energy(arch, array, counts)
    report = EinsumReport(
        einsum.name,
        name,
        tuple(sorted(counts.items())),
        seconds,
        useful,
        sum(energy.values()),
    )
    return report, energy


def _chunk_density(facts: CascadeFacts, sizes: Sizes) -> Callable[[int], float]:
    """The share of key tiles a chunk of `rows` query rows visits, for key-indexed inputs."""
    cascade = facts.cascade
    if not cascade.sparse:
        return lambda rows: 1.0
    fallback = sizes.values[f"density_{cascade.sparse[0].tensor}"]
    values = tuple(
        sorted((k, int(v)) for k, v in sizes.values.items() if not k.startswith("density_"))
    )
    return lambda rows: _tile_density(cascade, values, rows, fallback)


@functools.lru_cache(maxsize=1024)
def _densities(cascade: Cascade, sizes: tuple[tuple[str, int], ...]) -> dict[str, float]:
    """Mask densities at `sizes`; classifying a 1M x 1M mask takes a tenth of a second, and
    a study asks for the same sizes once per model."""
    return densities(cascade, dict(sizes))


@functools.lru_cache(maxsize=1024)
def _tile_density(
    cascade: Cascade, sizes: tuple[tuple[str, int], ...], rows: int, fallback: float
) -> float:
    sparse = cascade.sparse[0]
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
        return fallback
    return float(tiles.density)
