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
operations need over the PE-cycles of the whole run. The model runs one instance (the free
ranks that batch and heads are made of at 1) and multiplies by the number of instances.
Nothing here is specific to a design: every rule a design chooses is a field of its spec or
its mapping (register accesses per cycle, how P1 is chosen, the key tiles the buffer
reserves), and a different cascade changes the counts, the passes and the footprint, and so
the result.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import sympy

from attncc.accel.density import chunk_density, mask_densities
from attncc.accel.energy import add, compute_energy, memory_energy
from attncc.accel.facts import CascadeFacts, EinsumFacts
from attncc.accel.mapping import Mapping as AccelMapping
from attncc.accel.mapping import Overlap, efficiency, plan
from attncc.accel.spec import Architecture, Issue, SpecError
from attncc.accel.traffic import Residency, Sizes, phase_traffic
from attncc.analysis.block_sparse import density_symbol
from attncc.errors import AttnccError, ShapeError
from attncc.ir import Cascade, bind_sizes


@dataclass(frozen=True)
class Workload:
    """Rank sizes of the cascade (`M`, `P`, `E`, ...: positive integers; `density_S` for a
    mask that reads data: a share in (0, 1]) and `instances`, the independent problems it
    does not write (batch x heads), a positive integer. Checked when made."""

    name: str
    sizes: tuple[tuple[str, float], ...]
    instances: int = 1

    def __post_init__(self) -> None:
        for key, value in (*self.sizes, ("instances", self.instances)):
            problem = size_problem(key, value)
            if problem is not None:
                raise ShapeError(f"workload {self.name}: {key}: {problem}")


def size_problem(key: str, value: object) -> str | None:
    """What is wrong with `value` as workload field `key` (a rank size, `instances` or a
    `density_S`), or None."""
    density = key.startswith("density_")
    problem = f"must be {'a tile density in (0, 1]' if density else 'a positive integer'}"
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return f"{problem}, got {value!r}"
    fits = 0 < value <= 1 if density else value >= 1 and value == int(value)
    return None if fits else f"{problem}, got {value!r}"


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
    sizes, instances = _instance_sizes(facts, workload)
    reports = {e.name: _einsum(facts, e, arch, chosen, sizes, instances) for e in facts.einsums}
    density = chunk_density(facts, sizes.values)
    phases = [
        _phase(facts, chosen, arch, k, sizes, density, reports, instances)
        for k in range(len(chosen.phases))
    ]
    latency = sum(p.latency for p, _ in phases)
    energy = add([e for _, e in reports.values()] + [e for _, e in phases])
    return Result(
        design=arch.name,
        cascade=cascade.name,
        workload=workload.name,
        latency=latency,
        dram_bytes=sum(p.dram_bytes for p, _ in phases),
        energy_pj=sum(energy.values()),
        energy=tuple(sorted(energy.items())),
        utilization=_utilization(arch, [r for r, _ in reports.values()], latency),
        einsums=tuple(r for r, _ in reports.values()),
        phases=tuple(p for p, _ in phases),
        mapping=chosen,
    )


def _phase(
    facts: CascadeFacts,
    mapping: AccelMapping,
    arch: Architecture,
    phase: int,
    sizes: Sizes,
    density: Callable[[str, int], float],
    reports: Mapping[str, tuple[EinsumReport, dict[str, float]]],
    instances: float,
) -> tuple[PhaseReport, dict[str, float]]:
    """Phase `phase` over all instances: its arrays' compute time, overlapped or in turns,
    against its DRAM and buffer time; and the energy of the words it moves."""
    names = mapping.phases[phase]
    traffic = phase_traffic(facts, mapping, arch, phase, sizes, density)
    by_array: dict[str, float] = {}
    for name in names:
        einsum = reports[name][0]
        if einsum.array is not None:
            by_array[einsum.array] = by_array.get(einsum.array, 0.0) + einsum.seconds
    compute = (
        max(by_array.values(), default=0.0)
        if mapping.overlap is Overlap.PIPELINED
        else sum(by_array.values())
    )
    dram_bytes = (traffic.dram_read + traffic.dram_write) * arch.data_bytes * instances
    buffer_bytes = (traffic.buffer_read + traffic.buffer_write) * arch.data_bytes * instances
    memory = dram_bytes / arch.dram_bandwidth
    buffer = buffer_bytes / (arch.buffer.bytes_per_cycle * arch.clock)
    report = PhaseReport(
        names,
        tuple(sorted(by_array.items())),
        compute,
        memory,
        buffer,
        max(compute, memory, buffer),
        dram_bytes,
        traffic.residency,
    )
    moved = memory_energy(
        arch, traffic.buffer_read, traffic.buffer_write, traffic.dram_read, traffic.dram_write
    )
    return report, {action: pj * instances for action, pj in moved.items()}


def _utilization(
    arch: Architecture, reports: list[EinsumReport], latency: float
) -> tuple[tuple[str, float], ...]:
    """Per array, the PE-seconds its Einsums need over the PE-seconds of the whole run."""
    return tuple(
        (
            a.name,
            sum(r.useful_seconds for r in reports if r.array == a.name) / latency
            if latency
            else 0.0,
        )
        for a in arch.arrays
    )


def _sizes(facts: CascadeFacts, workload: Workload) -> dict[str, int]:
    """Every rank's size (derived ones too) from the workload's."""
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
        return bind_sizes(cascade, {k: int(v) for k, v in given.items() if k in ranks})
    except AttnccError as error:
        raise ShapeError(f"workload {workload.name}: {error}") from None


def _instance_sizes(facts: CascadeFacts, workload: Workload) -> tuple[Sizes, float]:
    """The sizes of one instance, with the mask densities, and how many instances there are.

    An instance fixes the free ranks that the instance ranks' sizes are made of (B, and G of
    `H = 4*G`) at 1, and derives the rest: one batch entry's group of four query heads that
    share a key head. Setting a derived rank (H) to 1 instead would leave G, and so the work
    of every head, in each instance."""
    cascade = facts.cascade
    full = _sizes(facts, workload)
    free = _instance_symbols(facts)
    given = {
        r.name: (1 if r.name in free else full[r.name])
        for r in cascade.all_ranks()
        if _is_free(r.name, r.size)
    }
    try:
        one = bind_sizes(cascade, given)
    except AttnccError as error:
        raise ShapeError(
            f"workload {workload.name}: one instance ({', '.join(sorted(free))} at 1) has no "
            f"integer sizes: {error}; declare the instance ranks as multiples of free ranks "
            "(rank G, H = 4*G)"
        ) from None
    values: dict[str, float] = {k: float(v) for k, v in one.items()}
    values |= mask_densities(cascade, tuple(sorted(full.items())))
    values |= {k: float(v) for k, v in workload.sizes if k.startswith("density_")}
    for sparse in cascade.sparse:
        name = density_symbol(sparse).name
        if name not in values:
            raise ShapeError(
                f"workload {workload.name}: the mask of {sparse.tensor} reads data; give its "
                f"tile density as {name}=..."
            )
    instances = workload.instances * math.prod(full[name] for name in free)
    return Sizes(facts, values), float(instances)


def _is_free(name: str, size: sympy.Expr) -> bool:
    return isinstance(size, sympy.Symbol) and size.name == name


def _instance_symbols(facts: CascadeFacts) -> frozenset[str]:
    """The free ranks the instance ranks' sizes are made of, through derived ranks."""
    cascade = facts.cascade
    roles = facts.roles
    found: set[str] = set()
    todo = list(roles.instances)
    while todo:
        rank = cascade.rank(todo.pop())
        assert rank is not None, "roles name declared ranks"
        if _is_free(rank.name, rank.size):
            found.add(rank.name)
        else:
            todo += [s.name for s in rank.size.free_symbols if s.name not in found]
    shared = found & {roles.key, roles.query, roles.outer, roles.inner}
    if shared:
        raise ShapeError(
            f"{cascade.name}: the instance ranks {', '.join(roles.instances)} are sized by "
            f"{', '.join(sorted(shared))}, which the model traverses, not repeats"
        )
    return frozenset(found)


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
