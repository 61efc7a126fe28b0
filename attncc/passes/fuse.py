"""Fusion groups: Einsums that a backend lowers as one loop nest (DESIGN.md, "Lowering").

Over the traversed rank (the outer rank of a partition, else the rank with the most passes)
each Einsum runs in some pass or between passes; over a partition's inner rank, likewise
within a tile. Einsums with the same pair of placements form a group: for FuseMax's Cascade 5,
the tile loads and scores (BK, BV, BQK, LM), the running max (RM, PRM), the tile's exp and
sums (SLN, SLD, SLNV), the running updates (SPD, RD, SPNV, RNV), then the epilogue (AV).
The `fuse` pass orders Einsums group by group; `fusion_groups` is what lowering reads.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from attncc.analysis import Placement, RankPasses, analyze_passes, count_passes
from attncc.ir import Cascade, execution_order
from attncc.passes.base import CascadePass, PassResult
from attncc.passes.registry import register


@dataclass(frozen=True)
class FusionGroup:
    """Einsums lowered together; `placements` says where, over each analysed rank."""

    einsums: tuple[str, ...]
    placements: tuple[str, ...]

    def __str__(self) -> str:
        return f"[{', '.join(self.einsums)}] ({'; '.join(self.placements)})"


def _traversals(cascade: Cascade) -> tuple[RankPasses, ...]:
    if cascade.partitions:
        part = cascade.partitions[0]
        return (
            count_passes(cascade, part.outer, parent=part.rank, level="outer"),
            count_passes(cascade, part.inner, parent=part.rank, level="inner"),
        )
    ranked = sorted(analyze_passes(cascade), key=lambda p: -p.passes)
    return tuple(ranked[:1])


def _time(placement: Placement) -> int:
    if placement.pass_number is not None:
        return 2 * placement.pass_number - 1
    return 2 * (placement.after or 0)


def fusion_groups(cascade: Cascade) -> tuple[FusionGroup, ...]:
    """The cascade's Einsums in groups, in an order that respects every dependency."""
    traversals = _traversals(cascade)
    order = [e.tensor for step in execution_order(cascade) for e in step.einsums]

    def key(name: str) -> tuple[int, ...]:
        return tuple(_time(t.placement(name)) for t in traversals)

    groups: list[FusionGroup] = []
    # Placement times never decrease along a dependency, so sorting by them (stably, from an
    # execution order) keeps every producer before its consumers.
    for name in sorted(order, key=key):
        where = tuple(f"{t.rank} {t.placement(name)}" for t in traversals)
        if groups and groups[-1].placements == where:
            groups[-1] = replace(groups[-1], einsums=(*groups[-1].einsums, name))
        else:
            groups.append(FusionGroup((name,), where))
    return tuple(groups)


@register
@dataclass(frozen=True)
class Fuse(CascadePass):
    name = "fuse"

    def apply(self, cascade: Cascade) -> PassResult:
        groups = fusion_groups(cascade)
        by_name = {e.tensor: e for e in cascade.einsums}
        einsums = tuple(by_name[n] for g in groups for n in g.einsums)
        remarks = tuple(f"group {k + 1}: {g}" for k, g in enumerate(groups))
        return PassResult(replace(cascade, einsums=einsums), remarks)
