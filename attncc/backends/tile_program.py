"""A schedule as operations on tiles: what both emitters (Triton, fast NumPy) translate.

Inside one program of the grid (one batch and head, one query tile), every tensor of the
loop nest is a tile over at most two *tile axes*: the query axis (p, `query_tile` long), the
key axis (m0, one key tile) and feature axes (e, f, whole). Grid indices (b, h) are fixed per
program and the key tile index m1 is the loop counter, so neither is an axis. Each Einsum
becomes one TileOp:

- MAP: elementwise over its axes (scores' scaling, exp, running updates);
- REDUCE: a reduction over one tile axis (the row max over m0);
- CONTRACT: a sum over one axis of a product of two 2-D tiles, a matrix product (Q K^T, P V).

Every access is resolved to an Operand: an input read at tile coordinates (tile views such as
`BK[b,g,e,m1,m0] = K[b,g,e,m1*M0+m0]` are inlined into the read of K), or a value the nest
computed, possibly a running value before this key tile's update. What does not fit (a tile
of three axes, a reduction over a head, a read that shifts a computed tile) is refused with
the Einsum and the reason, so an emitter never has to guess.
"""

from __future__ import annotations

import enum
import functools
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import sympy

from attncc.backends.schedule import Schedule
from attncc.errors import LoweringError
from attncc.ir import (
    Access,
    Coord,
    Einsum,
    Expr,
    ReduceOp,
    index_name,
    index_symbol,
    indices_used,
    iteration_successor,
    product_factors,
    size_symbol,
    substitute,
    walk,
)

IDENTITY: dict[ReduceOp, float] = {
    ReduceOp.SUM: 0.0,
    ReduceOp.MAX: -math.inf,
    ReduceOp.MIN: math.inf,
}
"""Each reduce operator's identity: what masked lanes and empty reductions hold."""


class OpKind(enum.Enum):
    MAP = "map"
    REDUCE = "reduce"
    CONTRACT = "contract"


@dataclass(frozen=True)
class InputRead:
    """An input read at tile coordinates; its indices use grid, tile and loop variables."""

    access: Access


@dataclass(frozen=True)
class ValueRead:
    """A tensor the nest computes; `previous` reads a running value before this tile's update."""

    tensor: str
    previous: bool = False


Operand = InputRead | ValueRead


@dataclass(frozen=True)
class Contraction:
    """`sum(k) lhs * rhs * scale...`: lhs and rhs span k, the `rest` factors do not."""

    lhs: Expr
    rhs: Expr
    rest: tuple[Expr, ...]


@dataclass(frozen=True)
class TileOp:
    """One Einsum as a tile operation. `axes` are its result's tile axes in canonical order;
    `sparse_mask` says its filter is the block-sparse mask, which FULL tiles skip."""

    einsum: Einsum
    kind: OpKind
    axes: tuple[str, ...]
    reduced: str | None = None
    contraction: Contraction | None = None
    sparse_mask: bool = False
    accumulated: bool = False

    @property
    def tensor(self) -> str:
        return self.einsum.tensor

    @property
    def carried(self) -> bool:
        """A running update over the key tiles, or a total over them (`accumulated`)."""
        return self.einsum.iterative_index is not None or self.accumulated


@dataclass(frozen=True)
class TileProgram:
    """The tile operations of `schedule` by phase, with every access resolved.

    `axis_order` is the canonical order of tile axes (query, key, then features as the
    cascade first uses them); every tile lists its axes in that order."""

    schedule: Schedule
    axis_order: tuple[str, ...]
    prologue: tuple[TileOp, ...]
    body: tuple[TileOp, ...]
    epilogue: tuple[TileOp, ...]
    operands: Mapping[Access, Operand]
    value_axes: Mapping[str, tuple[str, ...]]

    @property
    def query(self) -> str:
        return self.schedule.query

    @property
    def key(self) -> str:
        return index_name(self.schedule.key.inner)

    @property
    def key_tiles(self) -> str:
        return self.schedule.key_tile_index

    @property
    def grid(self) -> tuple[str, ...]:
        return self.schedule.grid

    @property
    def features(self) -> tuple[str, ...]:
        return self.axis_order[2:]

    def feature_sizes(self, sizes: Mapping[str, int]) -> dict[str, int]:
        """The size of each feature axis (head dimension) from rank sizes."""
        return {var: sizes[self.schedule.rank_of(var)] for var in self.features}

    def operand(self, access: Access) -> Operand:
        return self.operands[access]

    def axes_of(self, expr: Expr) -> tuple[str, ...]:
        """The tile axes `expr` spans, in canonical order."""
        spanned: set[str] = set()
        for node in walk(expr):
            if isinstance(node, Coord) and node.name in self.axis_order:
                spanned.add(node.name)
            elif isinstance(node, Access):
                spanned.update(self.operand_axes(self.operands[node]))
        return self.ordered(spanned)

    def ordered(self, axes: Iterable[str]) -> tuple[str, ...]:
        chosen = set(axes)
        return tuple(a for a in self.axis_order if a in chosen)

    def operand_axes(self, operand: Operand) -> tuple[str, ...]:
        if isinstance(operand, ValueRead):
            return self.value_axes[operand.tensor]
        used = set().union(*(i.free_symbols for i in operand.access.indices))
        return self.ordered(s.name for s in used if isinstance(s, sympy.Symbol))


@functools.lru_cache(maxsize=256)
def tile_program(nest: Schedule) -> TileProgram:
    """The tile operations of `nest`; raises LoweringError where an Einsum is not one.
    Cached, like `schedule`."""
    key, key_tiles = index_name(nest.key.inner), nest.key_tile_index
    order = _axis_order(nest, key)
    fixed = {*nest.grid, key_tiles}
    phases = (nest.prologue, nest.body, nest.epilogue)
    value_axes = {
        e.tensor: tuple(a for a in order if a in e.lhs_vars - fixed) for p in phases for e in p
    }
    resolver = _Resolver(nest, value_axes)
    operands: dict[Access, Operand] = {}
    for phase in phases:
        for einsum in phase:
            for access in einsum.read_accesses():
                operands[access] = resolver.resolve(einsum, access, phase)
    sparse = nest.sparse.tensor if nest.sparse is not None else None

    def ops(phase: tuple[Einsum, ...]) -> tuple[TileOp, ...]:
        return tuple(
            _tile_op(e, order, fixed, key_tiles, value_axes, operands, e.tensor == sparse)
            for e in phase
        )

    return TileProgram(
        schedule=nest,
        axis_order=order,
        prologue=ops(nest.prologue),
        body=ops(nest.body),
        epilogue=ops(nest.epilogue),
        operands=operands,
        value_axes=value_axes,
    )


def _axis_order(nest: Schedule, key: str) -> tuple[str, ...]:
    """Query, key, then feature axes in the order the declared tensors list their ranks
    (Q[.., e, p] before V[.., f, m]: e before f), then any other in name order."""
    cascade = nest.cascade
    fixed = {*nest.grid, nest.query, key, nest.key_tile_index}
    declared = [
        rank.index
        for decl in (*cascade.inputs, *cascade.outputs)
        for name in decl.ranks
        if (rank := cascade.rank(name)) is not None
    ]
    computed = (*nest.prologue, *nest.body, *nest.epilogue)
    used = set().union(*(e.space for e in computed))
    features = dict.fromkeys(v for v in [*declared, *sorted(used)] if v in used and v not in fixed)
    whole_key = index_name(nest.key.rank)
    if whole_key in features:
        reader = next(e.tensor for e in computed if whole_key in e.space)
        raise LoweringError(
            f"Einsum {reader} spans the whole key rank {nest.key.rank} outside the key loop; "
            f"only its tiles ({nest.key.outer} x {nest.key.inner}) can be lowered"
        )
    return (nest.query, key, *features)


class _Resolver:
    """What each access reads: an input (tile views inlined) or a computed tile."""

    def __init__(self, nest: Schedule, value_axes: Mapping[str, tuple[str, ...]]) -> None:
        self.nest = nest
        self.cascade = nest.cascade
        self.value_axes = value_axes
        self.loads = {e.tensor: e for e in nest.loads}
        self.phase_of = {
            e.tensor: phase
            for phase, einsums in (
                ("prologue", nest.prologue),
                ("body", nest.body),
                ("epilogue", nest.epilogue),
            )
            for e in einsums
        }

    def resolve(self, reader: Einsum, access: Access, phase: tuple[Einsum, ...]) -> Operand:
        if access.tensor in self.cascade.input_names():
            return InputRead(access)
        if access.tensor in self.loads:
            return InputRead(self._inline_view(reader, access))
        writer = self.cascade.writer(access.tensor)
        assert writer is not None, "verified cascades define what they read"
        key_tiles = self.nest.key_tile_index
        successor = next((i for i in writer.indices if iteration_successor(i) == key_tiles), None)
        if successor is None:
            if access.indices == writer.indices:
                return ValueRead(access.tensor)
            return self._refuse(reader, access, writer)
        previous = tuple(index_symbol(key_tiles) if i == successor else i for i in writer.indices)
        if phase is self.nest.epilogue:
            final = size_symbol(self.nest.key.outer)
            last = tuple(final if i == successor else i for i in writer.indices)
            if access.indices == last:
                return ValueRead(access.tensor)
            return self._refuse(reader, access, writer)
        if access.indices == writer.indices:
            return ValueRead(access.tensor)
        if access.indices == previous:
            return ValueRead(access.tensor, previous=True)
        return self._refuse(reader, access, writer)

    def _inline_view(self, reader: Einsum, access: Access) -> Access:
        view = self.loads[access.tensor]
        source = view.expr
        assert isinstance(source, Access), "schedule's loads are plain reads"
        mapping = {}
        for written, read in zip(view.indices, access.indices, strict=True):
            if not written.is_Symbol:
                raise LoweringError(
                    f"Einsum {view.tensor} writes its tile view at {written}, not at a plain "
                    f"index; {reader.tensor} cannot read it as a tile of {source.tensor}"
                )
            mapping[written.name] = read
        inlined = substitute(source, mapping)
        assert isinstance(inlined, Access)
        return inlined

    def _refuse(self, reader: Einsum, access: Access, writer: Einsum) -> Operand:
        shown = ", ".join(map(str, access.indices))
        written = ", ".join(map(str, writer.indices))
        raise LoweringError(
            f"Einsum {reader.tensor} reads {access.tensor}[{shown}], which is not the tile "
            f"{access.tensor}[{written}] computes in this program (nor, for a running value, "
            f"its previous or final step); a tile program only reads whole tiles it computed"
        )


def _tile_op(
    einsum: Einsum,
    order: tuple[str, ...],
    fixed: set[str],
    key_tiles: str,
    value_axes: Mapping[str, tuple[str, ...]],
    operands: Mapping[Access, Operand],
    sparse_mask: bool,
) -> TileOp:
    axes = value_axes[einsum.tensor]
    if len(axes) > 2:
        raise LoweringError(
            f"Einsum {einsum.tensor} is a tile over {', '.join(axes)}: tiles have at most two "
            "axes (query and key, or one of them and a feature)"
        )
    accumulated = key_tiles in einsum.reduced
    if accumulated:
        _check_fill(einsum, key_tiles, across_tiles=True)
    reduced = sorted(einsum.reduced - {key_tiles})
    if not reduced:
        return TileOp(einsum, OpKind.MAP, axes, sparse_mask=sparse_mask, accumulated=accumulated)
    if len(reduced) > 1 or reduced[0] in fixed:
        raise LoweringError(
            f"Einsum {einsum.tensor} reduces over {', '.join(reduced)}: a tile operation "
            "reduces over one tile axis, not over grid indices or several axes"
        )
    (axis,) = reduced
    _check_fill(einsum, axis)
    contraction = _contraction(einsum, axis, order, value_axes, operands)
    if contraction is not None:
        return TileOp(einsum, OpKind.CONTRACT, axes, axis, contraction, sparse_mask, accumulated)
    if len(axes) + 1 > 2:
        raise LoweringError(
            f"Einsum {einsum.tensor} reduces over {axis} a product that is not two tiles "
            f"sharing {axis}: neither a matrix product nor a reduction of a 2-D tile"
        )
    return TileOp(
        einsum, OpKind.REDUCE, axes, axis, sparse_mask=sparse_mask, accumulated=accumulated
    )


def _check_fill(einsum: Einsum, axis: str, *, across_tiles: bool = False) -> None:
    """Lanes of `axis` a filter masks take the reduction's identity; an output point whose
    lanes are all masked then holds the identity too, which is the filter's fill only by
    default. A filter that does not read `axis` masks whole output points, which take the
    fill, except across key tiles (`axis` the key tile index): a total over them combines
    every tile's part, so each masked part must be the identity."""
    if einsum.filter is None or einsum.filter.fill is None or einsum.reduce is None:
        return
    if not across_tiles and axis not in indices_used(einsum.filter.predicate):
        return
    if einsum.filter.fill != IDENTITY[einsum.reduce]:
        raise LoweringError(
            f"Einsum {einsum.tensor} fills fully masked points with {einsum.filter.fill}, not "
            f"the identity of {einsum.reduce.value}; tile reductions give the identity there"
        )


def _contraction(
    einsum: Einsum,
    axis: str,
    order: tuple[str, ...],
    value_axes: Mapping[str, tuple[str, ...]],
    operands: Mapping[Access, Operand],
) -> Contraction | None:
    """The matrix product a sum of products is, or None when it is not one: two factors
    span the summed axis, each a 2-D tile, and the filter does not read the summed axis
    (a filter over it is not a product of whole tiles)."""
    if einsum.reduce is not ReduceOp.SUM:
        return None
    if einsum.filter is not None and axis in indices_used(einsum.filter.predicate):
        return None
    factors = product_factors(einsum.expr)

    def spans(factor: Expr) -> set[str]:
        found: set[str] = set()
        for node in walk(factor):
            if isinstance(node, Coord):
                found.add(node.name)
            elif isinstance(node, Access):
                operand = operands[node]
                if isinstance(operand, ValueRead):
                    found.update(value_axes[operand.tensor])
                else:
                    found.update(s.name for i in node.indices for s in i.free_symbols)
        return found & set(order)

    sharing = [f for f in factors if axis in spans(f)]
    if len(sharing) != 2 or any(len(spans(f)) != 2 for f in sharing):
        return None
    lhs, rhs = sharing
    if (spans(lhs) - {axis}) == (spans(rhs) - {axis}):
        return None
    rest = tuple(f for f in factors if f is not lhs and f is not rhs)
    return Contraction(lhs, rhs, rest)
