"""What each pass over a rank must keep on chip, and the traffic when it cannot.

A pass reads three kinds of values produced before it (FuseMax, Section IV-B):
- fibers: a tensor that still varies along the rank, produced in an earlier pass (QK[m,p] read
  again in the second pass of 3-pass attention). Keeping it costs a whole fiber per point of
  the other ranks, O(M); not keeping it means writing it out and reading it back;
- reduced values: results of earlier traversals (GM[p]), O(1) per fiber;
- running state: the current value of a running update over the rank (RM, RD, RNV), which
  replaces a fiber by a constant-size summary; that is what makes a 1-pass cascade's
  footprint independent of the sequence length.
Values produced and consumed in the same pass stream through and are not counted.

Over the inner rank of a partition (M0 of M -> M1, M0) the passes happen within one tile, so
sizes are per tile: the outer rank (M1) is left out of every count.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

import sympy

from attncc.analysis.cost import extent
from attncc.analysis.passes import RankPasses
from attncc.ir import Access, Cascade, Einsum, index_vars


class LiveKind(enum.Enum):
    FIBER = "fiber"
    REDUCED = "reduced"
    RUNNING = "running"


@dataclass(frozen=True)
class LiveTensor:
    """A value a pass must hold: `elements` in all; for a fiber, `fiber_length` per fiber."""

    tensor: str
    kind: LiveKind
    elements: sympy.Expr
    fiber_length: sympy.Expr | None = None


@dataclass(frozen=True)
class PassFootprint:
    pass_number: int
    live: tuple[LiveTensor, ...]

    @property
    def elements(self) -> sympy.Expr:
        return sympy.expand(sum((t.elements for t in self.live), start=sympy.Integer(0)))


@dataclass(frozen=True)
class Footprint:
    """Per-pass live values over one rank, and the elements moved to and from memory when
    no fiber fits on chip: each fiber written once and read back by every later pass."""

    rank: str
    passes: tuple[PassFootprint, ...]
    spill_elements: sympy.Expr

    @property
    def peak_elements(self) -> sympy.Expr:
        return sympy.Max(*(p.elements for p in self.passes)) if self.passes else sympy.Integer(0)

    def fibers(self) -> tuple[LiveTensor, ...]:
        """Every tensor some pass must hold as a whole fiber (or spill and re-read)."""
        seen: dict[str, LiveTensor] = {}
        for footprint in self.passes:
            for live in footprint.live:
                if live.kind is LiveKind.FIBER:
                    seen.setdefault(live.tensor, live)
        return tuple(seen.values())


def footprint(cascade: Cascade, passes: RankPasses) -> Footprint:
    outer = next(
        (p.outer for p in cascade.partitions if passes.level == "inner" and p.inner == passes.rank),
        None,
    )
    sizes = _Sizes(cascade, frozenset({outer}) if outer else frozenset())
    by_pass: dict[int, dict[str, LiveTensor]] = {k: {} for k in range(1, passes.passes + 1)}
    readers: dict[str, set[int]] = {}
    for einsum in cascade.einsums:
        number = passes.placement(einsum.tensor).pass_number
        if number is None:
            continue
        live = by_pass[number]
        if einsum.iterative_index == passes.index:
            live.setdefault(einsum.tensor, sizes.running(einsum, passes.index))
        for name in dict.fromkeys(a.tensor for a in einsum.read_accesses()):
            producer = cascade.writer(name)
            if producer is None or producer.tensor == einsum.tensor:
                continue
            held = _held(sizes, producer, number, passes)
            if held is not None:
                live.setdefault(name, held)
                if held.kind is LiveKind.FIBER:
                    readers.setdefault(name, set()).add(number)
    fibers = {
        n: t for live in by_pass.values() for n, t in live.items() if t.kind is LiveKind.FIBER
    }
    spill = sum(
        (t.elements * (1 + len(readers[n])) for n, t in fibers.items()), start=sympy.Integer(0)
    )
    footprints = tuple(PassFootprint(k, tuple(by_pass[k].values())) for k in sorted(by_pass))
    return Footprint(passes.rank, footprints, sympy.expand(spill))


@dataclass(frozen=True)
class _Sizes:
    """Element counts of tensors, leaving out the ranks in `excluded`."""

    cascade: Cascade
    excluded: frozenset[str]

    def elements(self, einsum: Einsum, skip: str | None = None) -> sympy.Expr:
        decl = self.cascade.declaration(einsum.tensor)
        assert decl is not None, "verified cascades declare every tensor they write"
        total: sympy.Expr = sympy.Integer(1)
        for name, index in zip(decl.ranks, einsum.indices, strict=True):
            if name in self.excluded or (skip is not None and skip in index_vars(index)):
                continue
            rank = self.cascade.rank(name)
            assert rank is not None, "verified cascades declare every rank they use"
            total *= rank.size
        return total

    def running(self, einsum: Einsum, var: str) -> LiveTensor:
        """The state of a running update: one value per point of its other ranks."""
        return LiveTensor(einsum.tensor, LiveKind.RUNNING, self.elements(einsum, skip=var))


def _held(sizes: _Sizes, producer: Einsum, number: int, passes: RankPasses) -> LiveTensor | None:
    """What pass `number` must hold of `producer`'s output, if anything."""
    placement = passes.placement(producer.tensor)
    if placement.pass_number == number or _is_input_view(sizes.cascade, producer):
        return None
    elements = sizes.elements(producer)
    if placement.pass_number is not None and passes.index in producer.lhs_vars:
        length = extent(sizes.cascade, passes.index)
        return LiveTensor(producer.tensor, LiveKind.FIBER, elements, length)
    return LiveTensor(producer.tensor, LiveKind.REDUCED, elements)


def _is_input_view(cascade: Cascade, einsum: Einsum) -> bool:
    """`BV[f,m1,m0] = V[f,m1*M0+m0]`: a re-indexed input, which any pass can read again from
    memory like the input itself, so no pass needs to hold it."""
    return (
        isinstance(einsum.expr, Access)
        and einsum.expr.tensor in cascade.input_names()
        and einsum.filter is None
    )
