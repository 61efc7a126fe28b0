"""Partition a rank into tiles: M -> M1, M0 with m = m1*M0 + m0 (FuseMax Cascade 5's BK, BV).

    QK[m,p] = Q[e,p] * K[e,m]          BK[e,m1,m0] = K[e,m1*M0+m0]
    GM[p] = max(m) QK[m,p]       ->    QK[m1,m0,p] = Q[e,p] * BK[e,m1,m0]
                                       GM[p] = max(m0, m1) QK[m1,m0,p]

Inputs are read through tiled views (`B` + name); every temporary indexed by m gets the two
indices m1, m0; coordinates m become m1*M0 + m0; reductions over m reduce over both. The last
tile may be partial: the IR's partition domain (m1*M0 + m0 < M) leaves its tail out. Outputs
keep their layout and read tiled temporaries at (m // M0, m % M0).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import sympy

from attncc.analysis import key_ranks, reduced_ranks, softmax_keys
from attncc.errors import PassError
from attncc.ir import (
    Access,
    Cascade,
    Einsum,
    Expr,
    Partition,
    Rank,
    ReduceOp,
    TensorDecl,
    format_index,
    index_name,
    index_symbol,
    replace_accesses,
    size_symbol,
    substitute,
)
from attncc.passes.base import CascadePass, PassResult
from attncc.passes.names import taken_names
from attncc.passes.registry import register


@register
@dataclass(frozen=True)
class PartitionRank(CascadePass):
    """`rank`: the rank to tile (default: each softmax's key, `softmax_keys`: a rank whose max
    feeds exp(x - max), summed over it and contracted along it with values, so MoH's key M and
    not the heads its router maxes over; failing that, a softmax without values (its max and
    sum are outputs); a cascade that max-reduces with no exp(x - max) summed over the same
    rank is left whole and asks for a rank. Without a max, linear attention's key rank,
    `key_ranks`); `tile`: its tile size."""

    name = "partition"
    rank: str | None = None
    tile: int = 64

    def apply(self, cascade: Cascade) -> PassResult:
        if self.tile < 1:
            raise PassError(f"partition: tile={self.tile} must be a positive integer")
        ranks = [self.rank] if self.rank else _default_ranks(cascade)
        if isinstance(ranks, str):
            return PassResult(cascade, (ranks,))
        remarks = []
        for name in ranks:
            if cascade.rank(name) is None:
                known = ", ".join(r.name for r in cascade.all_ranks())
                raise PassError(f"partition: {cascade.name} has no rank {name}; ranks: {known}")
            refusal = _refusal(cascade, name)
            if refusal and self.rank is None:
                _check_gathers(cascade, name)
            if refusal:
                remarks.append(f"{name} left whole: {refusal}")
            else:
                cascade = _Tiling(cascade, name, self.tile).apply()
        return PassResult(cascade, tuple(remarks))


_NO_RANK = "no rank is max-reduced or reduced by an output; name one with rank=..."


def _default_ranks(cascade: Cascade) -> list[str] | str:
    """The ranks to tile (PartitionRank's docstring), or why there are none."""
    keys = softmax_keys(cascade)
    if keys:
        return keys
    maxed = reduced_ranks(cascade, lambda e: e.reduce is ReduceOp.MAX)
    tiled = {name for p in cascade.partitions for name in (p.rank, p.outer, p.inner)}
    if maxed and not set(maxed) <= tiled:
        return (
            f"no rank is a softmax key (max-reduced: {', '.join(maxed)}; no max among them "
            "feeds exp(x - max) summed over its own rank); name the rank to tile with rank=..."
        )
    if maxed:
        # A one-pass cascade: its max runs over the key tiles already; say so per rank.
        return maxed
    if cascade.partitions:
        # The rules for linear attention look for its key rank; here it is tiled already.
        outputs = set(cascade.output_names())
        return reduced_ranks(cascade, lambda e: e.tensor in outputs) or _NO_RANK
    return key_ranks(cascade) or _NO_RANK


def _check_gathers(cascade: Cascade, rank: str) -> None:
    """Refuse the key rank an input is read along in another order (reorder's
    QR[e,p] = Q[e,sigma(p)]): left whole, it would fail in the backends for want of a tiled
    rank, far from the reason; a loop nest loads tiles of its inputs as they are laid out."""
    inputs = set(cascade.input_names())
    for einsum in cascade.einsums:
        read = einsum.expr
        if einsum.reduce or einsum.filter or not isinstance(read, Access):
            continue
        decl, copy = cascade.declaration(read.tensor), cascade.declaration(einsum.tensor)
        if read.tensor not in inputs or decl is None or copy is None or rank not in decl.ranks:
            continue
        index = read.indices[decl.ranks.index(rank)]
        if copy.ranks == decl.ranks and index != index_symbol(index_name(rank)):
            text = f"{read.tensor}[{','.join(format_index(i) for i in read.indices)}]"
            raise PassError(
                f"partition: {einsum.tensor} copies input {read.tensor} in another order along "
                f"the key rank {rank} ({einsum.tensor} = {text}), as `reorder` writes it; a "
                "loop nest loads tiles of inputs as they are laid out, so the tiled backends "
                "cannot run this cascade: give them the cascade in the new order "
                "(attncc.passes.reorder.in_token_order) on inputs permuted with "
                "TokenOrder.permutation(), and put the output back (the reference interpreter "
                "runs this one)"
            )


def _tile_names(rank: str) -> tuple[str, str]:
    return f"{rank}1", f"{rank}0"


def _refusal(cascade: Cascade, rank: str) -> str | None:
    """Why `rank` cannot be tiled, or None."""
    if any(rank in (p.rank, p.outer, p.inner) for p in cascade.partitions):
        return "it is already partitioned"
    if any(cascade.rank(n) is not None for n in _tile_names(rank)):
        return f"ranks {' and '.join(_tile_names(rank))} exist already"
    var = rank.lower()
    taken = taken_names(cascade)
    for decl in cascade.inputs:
        if rank in decl.ranks and f"B{decl.name}" in taken:
            return f"the name B{decl.name} for the tiled view of {decl.name} is taken"
    for einsum in cascade.einsums:
        if einsum.iterative_index == var:
            return f"{einsum.tensor} is a running update over {var}"
        for access in einsum.read_accesses():
            read = cascade.declaration(access.tensor)
            if read is None or rank not in read.ranks:
                continue
            index = access.indices[read.ranks.index(rank)]
            if index != index_symbol(var):
                text = f"{access.tensor}[{','.join(format_index(i) for i in access.indices)}]"
                return f"{einsum.tensor} reads {text} at {format_index(index)}, not at {var}"
    return None


class _Tiling:
    """One application: tile `rank` of `cascade` by `tile`."""

    def __init__(self, cascade: Cascade, rank: str, tile: int) -> None:
        self.cascade = cascade
        self.tile = tile
        self.rank = rank
        self.var = rank.lower()
        self.outer, self.inner = _tile_names(rank)
        o, i = index_symbol(self.outer.lower()), index_symbol(self.inner.lower())
        self.tiled = (o, i)
        self.split = (
            sympy.floor(index_symbol(self.var) / size_symbol(self.inner)),
            sympy.Mod(index_symbol(self.var), size_symbol(self.inner)),
        )
        self.coordinate = o * size_symbol(self.inner) + i
        self.views = {d.name: f"B{d.name}" for d in cascade.inputs if rank in d.ranks}
        outputs = set(cascade.output_names())
        self.retiled = {
            e.tensor for e in cascade.einsums if self.var in e.lhs_vars and e.tensor not in outputs
        } | set(self.views)

    def apply(self) -> Cascade:
        cascade = self.cascade
        views = tuple(self._view(d) for d in cascade.inputs if d.name in self.views)
        return replace(
            cascade,
            ranks=(*cascade.ranks, Rank(self.inner, sympy.Integer(self.tile))),
            partitions=(*cascade.partitions, Partition(self.rank, self.outer, self.inner)),
            einsums=views + tuple(self._einsum(e) for e in cascade.einsums),
        )

    def _view(self, decl: TensorDecl) -> Einsum:
        k = decl.ranks.index(self.rank)
        indices = tuple(index_symbol(r.lower()) for r in decl.ranks)
        read = Access(decl.name, (*indices[:k], self.coordinate, *indices[k + 1 :]))
        return Einsum(self.views[decl.name], (*indices[:k], *self.tiled, *indices[k + 1 :]), read)

    def _einsum(self, einsum: Einsum) -> Einsum:
        var = self.var
        if var not in einsum.space:
            return einsum
        in_tiles = einsum.tensor in self.retiled
        indices = einsum.indices
        if in_tiles:
            k = next(n for n, index in enumerate(indices) if index == index_symbol(var))
            indices = (*indices[:k], *self.tiled, *indices[k + 1 :])
        split = self.tiled if in_tiles or var not in einsum.lhs_vars else self.split

        def rewrite(expr: Expr) -> Expr:
            tiled = replace_accesses(expr, lambda a: self._access(a, split))
            return substitute(tiled, {var: self.coordinate}) if split == self.tiled else tiled

        filter_ = einsum.filter
        if filter_ is not None:
            filter_ = replace(filter_, predicate=rewrite(filter_.predicate))
        init = None if einsum.init is None else rewrite(einsum.init)
        return replace(
            einsum, indices=indices, expr=rewrite(einsum.expr), filter=filter_, init=init
        )

    def _access(self, access: Access, split: tuple[sympy.Expr, sympy.Expr]) -> Expr:
        if access.tensor not in self.retiled:
            return access
        decl = self.cascade.declaration(access.tensor)
        assert decl is not None, "verified cascades declare what they read"
        k = decl.ranks.index(self.rank)
        name = self.views.get(access.tensor, access.tensor)
        return Access(name, (*access.indices[:k], *split, *access.indices[k + 1 :]))
