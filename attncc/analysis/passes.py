"""The pass lower bound (FuseMax, MICRO 2024, Section IV): how many times any implementation
must traverse the fibers of a rank, whatever its mapping.

A pass over rank R visits every element of an R fiber once. An Einsum that iterates R and
reads, at the current coordinate, a value that some Einsum reduced over the whole R fiber (or a
coordinate of a tensor that is complete only after the traversal, such as a running value's
final entry) cannot start before that traversal ends: it belongs to a later pass. The number of
such dependencies along the longest chain, plus one, is the minimum number of passes.
Reads a fixed distance from the current coordinate (`m`, `m-1`, `m+2`) stream within a pass
through a bounded window; a running update over R (`RM[m1+1,p] = max(RM[m1,p], ...)`) consumed
at the same iteration starts no new pass; reading its final value (`RM[M1,p]`) does.

Einsums that do not iterate R run between passes ("after pass k"). A partitioned rank
M -> M1, M0 is analysed twice: over M1, the traversal of tiles that goes to memory, and over
M0, the traversal within a tile.
"""

from __future__ import annotations

from dataclasses import dataclass

import networkx as nx
import sympy

from attncc.errors import AnalysisError
from attncc.ir import (
    Cascade,
    Einsum,
    dependency_graph,
    execution_order,
    format_index,
    index_symbol,
    index_vars,
)


@dataclass(frozen=True)
class Placement:
    """Where an Einsum runs relative to the traversals of one rank: in pass `pass_number`
    (it iterates the rank) or between passes, after pass `after` (0: before the first)."""

    einsum: str
    pass_number: int | None
    after: int | None

    def __str__(self) -> str:
        if self.pass_number is not None:
            return f"pass {self.pass_number}"
        return "before pass 1" if self.after == 0 else f"after pass {self.after}"


@dataclass(frozen=True)
class Link:
    """One dependency of the witness chain; `new_pass` when it forces another traversal."""

    producer: str
    consumer: str
    new_pass: bool
    reason: str


@dataclass(frozen=True)
class RankPasses:
    """The pass lower bound over one rank (`rank`, iterated by index `index`). For the tile
    ranks of a partition, `parent` names the partitioned rank and `level` is outer or inner."""

    rank: str
    index: str
    passes: int
    placements: tuple[Placement, ...]
    witness: tuple[Link, ...]
    parent: str | None = None
    level: str | None = None

    def placement(self, einsum: str) -> Placement:
        return next(p for p in self.placements if p.einsum == einsum)


def default_ranks(cascade: Cascade) -> tuple[str, ...]:
    """Ranks some Einsum fully reduces or a running update traverses; a partitioned rank
    stands for its outer and inner ranks."""
    traversed: set[str] = set()
    for einsum in cascade.einsums:
        variables = set(einsum.reduced)
        if einsum.iterative_index is not None:
            variables.add(einsum.iterative_index)
        for var in variables:
            rank = cascade.rank_of_index(var)
            if rank is not None:
                traversed.add(rank.name)
    names: list[str] = []
    for rank in cascade.all_ranks():
        parent = next(
            (p.rank for p in cascade.partitions if rank.name in (p.outer, p.inner)), rank.name
        )
        if rank.name in traversed and parent not in names:
            names.append(parent)
    return tuple(names)


def analyze_passes(
    cascade: Cascade, ranks: tuple[str, ...] | None = None
) -> tuple[RankPasses, ...]:
    """The pass lower bound over each of `ranks` (default: `default_ranks`); a partitioned
    rank gives two results, over its outer and over its inner rank."""
    results = []
    for name in ranks if ranks is not None else default_ranks(cascade):
        if cascade.rank(name) is None:
            known = ", ".join(r.name for r in cascade.all_ranks())
            raise AnalysisError(f"rank {name} is not a rank of {cascade.name}; its ranks: {known}")
        part = next((p for p in cascade.partitions if p.rank == name), None)
        if part is None:
            results.append(count_passes(cascade, name))
        else:
            results.append(count_passes(cascade, part.outer, parent=name, level="outer"))
            results.append(count_passes(cascade, part.inner, parent=name, level="inner"))
    return tuple(results)


def count_passes(
    cascade: Cascade, rank: str, *, parent: str | None = None, level: str | None = None
) -> RankPasses:
    """The minimum number of passes over `rank`, each Einsum's placement, and the witness."""
    var = rank.lower()
    graph = dependency_graph(cascade)
    order = [e for step in execution_order(cascade) for e in step.einsums]
    # Times interleave passes and the gaps between them: the gap after pass k is time 2k,
    # pass p is time 2p - 1. Longest-path relaxation; cycles (running updates reading their
    # previous iteration) have weight 0, so two rounds settle every time.
    time = {e.tensor: 1 if var in e.space else 0 for e in order}
    for _ in range(len(order) + 1):
        changed = False
        for consumer in order:
            for producer in _producers(cascade, graph, consumer):
                needed = _earliest(cascade, producer, consumer, var, time)[0]
                if needed > time[consumer.tensor]:
                    time[consumer.tensor] = needed
                    changed = True
        if not changed:
            break
    else:
        raise AnalysisError(f"{cascade.name}: no finite pass count over {rank}")
    placements = tuple(
        Placement(e.tensor, (time[e.tensor] + 1) // 2, None)
        if time[e.tensor] % 2
        else Placement(e.tensor, None, time[e.tensor] // 2)
        for e in cascade.einsums
    )
    passes = max((p.pass_number or 0 for p in placements), default=0)
    witness = _witness(cascade, graph, order, var, time)
    return RankPasses(rank, var, passes, placements, witness, parent, level)


def _producers(cascade: Cascade, graph: nx.DiGraph, consumer: Einsum) -> list[Einsum]:
    """The Einsums `consumer` reads, other than itself."""
    found = (cascade.writer(name) for name in graph.predecessors(consumer.tensor))
    return [e for e in found if e is not None and e.tensor != consumer.tensor]


def _earliest(
    cascade: Cascade, producer: Einsum, consumer: Einsum, var: str, time: dict[str, int]
) -> tuple[int, bool, str]:
    """The earliest time `consumer` may run given `producer`, whether that starts a new pass,
    and why."""
    start = time[producer.tensor]
    in_pass = start % 2 == 1
    if var not in consumer.space:
        if in_pass:
            done = f"complete after pass {(start + 1) // 2}"
            return start + 1, False, f"{consumer.tensor} needs {producer.tensor}, {done}"
        return start, False, f"{consumer.tensor} needs {producer.tensor}"
    if not in_pass:
        if start == 0:
            return 1, False, f"{producer.tensor} is ready before the first pass"
        return start + 1, True, f"{producer.tensor} is ready only after pass {start // 2}"
    blocking = _blocking_read(cascade, producer, consumer, var)
    if blocking is None:
        return start, False, f"{consumer.tensor} streams {producer.tensor} along {var}"
    return start + 2, True, blocking


def _blocking_read(cascade: Cascade, producer: Einsum, consumer: Einsum, var: str) -> str | None:
    """Why `consumer`, iterating `var`, cannot read `producer` within the same traversal; None
    when every read is a fixed distance from the current coordinate (`m`, `m-1`, `m+1`: a
    bounded window) or a fixed early coordinate (`0`), ready after a bounded number of steps."""
    position = next(
        (k for k, index in enumerate(producer.indices) if var in index_vars(index)), None
    )
    if position is None:
        op = producer.reduce.value if producer.reduce else "sum"
        return f"{producer.tensor} reduces {var} fully ({op}); {consumer.tensor} iterates {var}"
    current = index_symbol(var)
    for access in consumer.read_accesses():
        if access.tensor != producer.tensor:
            continue
        index = access.indices[position]
        if sympy.expand(index - current).is_Integer or index.is_Integer:
            continue
        read = f"{access.tensor}[{','.join(format_index(i) for i in access.indices)}]"
        return (
            f"{consumer.tensor} reads {read}, which is complete only after the whole "
            f"traversal of {var}"
        )
    return None


def _witness(
    cascade: Cascade, graph: nx.DiGraph, order: list[Einsum], var: str, time: dict[str, int]
) -> tuple[Link, ...]:
    """The chain of dependencies that places the last Einsum of the last pass there."""
    in_passes = [e for e in order if time[e.tensor] % 2]
    if not in_passes:
        return ()
    position = {e.tensor: k for k, e in enumerate(cascade.einsums)}
    consumer = max(in_passes, key=lambda e: (time[e.tensor], position[e.tensor]))
    links: list[Link] = []
    visited = {consumer.tensor}
    while True:
        earliest = [
            (producer, _earliest(cascade, producer, consumer, var, time))
            for producer in _producers(cascade, graph, consumer)
            if producer.tensor not in visited
        ]
        causes = [
            (producer, new_pass, reason)
            for producer, (needed, new_pass, reason) in earliest
            if needed == time[consumer.tensor]
        ]
        if not causes:
            return tuple(reversed(links))
        # Prefer the dependency that forces a pass, then the latest producer.
        producer, new_pass, reason = max(
            causes, key=lambda c: (c[1], time[c[0].tensor], position[c[0].tensor])
        )
        links.append(Link(producer.tensor, consumer.tensor, new_pass, reason))
        visited.add(producer.tensor)
        consumer = producer
