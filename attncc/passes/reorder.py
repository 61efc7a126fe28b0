"""reorder: permute the tokens of a 2-D or 3-D layout so that a scattered local pattern becomes
dense blocks (PAROAttention; Zhao et al. 2025, "PAROAttention: Pattern-Aware ReOrdering for
Efficient Sparse and Quantized Attention in Visual Generation Models").

A mask that is local in a grid is scattered in its row-major order: a 3-D window over frames
touches every frame's rows (bands H*W apart), an 8 x 8 window of an image spans 8 rows of it,
Group Pose's same-type queries are every `parts`-th one. Tiles of 64 x 64 then mix kept and
hidden points, and few are EMPTY. Read in another order of the grid's digits (spatial-major for
video, tile-major for images, type-major for groups) the same pattern is a block diagonal, and
the block-sparse loop skips most tiles (tests/test_reorder.py measures the density before and
after). Attention is equivariant under a permutation of its tokens, so the results are the
same once the output is put back:

    QR[e,p] = Q[e,sigma(p)]          the inputs, read in the new order
    KR[e,m] = K[e,sigma(m)]          (sigma(y): the old position of new position y)
    ...                              the cascade on QR, KR, VR, its mask and coordinates
                                     rewritten in the digits of the new positions
    AV[f,p] = AVR[f,sigma^-1(p)]     the output, back in the old order

Reads of a tensor laid out along P or M (the inputs read permuted, every temporary and result
over those ranks) at the plain index p or m stay as they are: both ranks move by the same
sigma. A read there at another position t, an old position, becomes a read at sigma^-1(t),
in the digits of t where they split exactly (HiLo's pooled keys read KL at
16*(n//4) + 2*(n%4) + 8*sy + sx, window-major 16*(n//4) + 4*(n%4) + 2*sy + sx); a position
not provably on the grid (a shift, p - 1) is refused with a PassError naming the read. Reads
along other ranks (a block table at p // 64) take the old positions.

Options: `shape` (the grid as digits, row-major: `8x16x16` for T x H x W, `4x8x4x8` for a
32 x 32 image in 8 x 8 tiles), `order` (the new order of the digits, most significant first:
`120`, `0213`; see attncc.passes.token_order), `query` and `key` (the ranks, P and M). The pass
fixes both ranks to the grid's token count, the length the grid's masks assume. It runs before
`flash`, and its output runs on the reference interpreter. The tiled backends load tiles of
inputs as they are laid out, not through sigma, so lowering it is refused (`partition` says
why); they run the cascade in the new order instead (`in_token_order`), on inputs permuted
before the kernel (`TokenOrder.permutation`) and the output put back after it, as
PAROAttention fuses its permutations into the neighbouring operators (tests/test_reorder.py).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import sympy

from attncc.errors import PassError
from attncc.ir import (
    Access,
    Cascade,
    Einsum,
    Expr,
    TensorDecl,
    format_index,
    index_name,
    index_symbol,
    map_expressions,
    rename_tensors,
    replace_accesses,
)
from attncc.passes.base import CascadePass, PassResult
from attncc.passes.names import fresh_name, taken_names
from attncc.passes.registry import register
from attncc.passes.token_order import TokenOrder, index_mapping


@register
@dataclass(frozen=True)
class Reorder(CascadePass):
    """Options `shape`, `order`, `query`, `key` (module docstring)."""

    name = "reorder"
    shape: str = ""
    order: str = ""
    query: str = "P"
    key: str = "M"

    def apply(self, cascade: Cascade) -> PassResult:
        order = self._token_order()
        ranks = (self.query, self.key)
        refusal = _refusal(cascade, ranks, order)
        if refusal is not None:
            return PassResult(cascade, (refusal,))
        rewritten, renamed = _reordered(cascade, order, ranks)
        inputs = [n for n in cascade.input_names() if n in renamed]
        outputs = [n for n in cascade.output_names() if n in renamed]
        grid = "x".join(map(str, order.shape))
        digits = "".join(map(str, order.order))
        remark = (
            f"{self.query} and {self.key} hold the {order.tokens} tokens of {grid}, now in digit "
            f"order {digits}; {', '.join(inputs)} read permuted, {', '.join(outputs)} put back"
        )
        return PassResult(rewritten, (remark,))

    def _token_order(self) -> TokenOrder:
        if not self.shape or not self.order:
            raise PassError(
                "reorder: give the grid and the new order, e.g. shape=8x16x16,order=120"
            )
        try:
            return TokenOrder.parse(self.shape, self.order)
        except ValueError as error:
            raise PassError(f"reorder: {error}") from None


def _reordered(
    cascade: Cascade, order: TokenOrder, ranks: tuple[str, str]
) -> tuple[Cascade, dict[str, str]]:
    """`cascade` on its inputs gathered into the new order (QR[e,p] = Q[e,sigma(p)]), its
    results put back (AV[f,p] = AVR[f,sigma^-1(p)]), and the names of the permuted copies."""
    taken = taken_names(cascade)
    laid_out = _ordered((*cascade.inputs, *cascade.outputs), ranks)
    renamed = {d.name: fresh_name(f"{d.name}R", taken) for d in laid_out}
    query, key = ranks
    core = rename_tensors(in_token_order(cascade, order, query=query, key=key), renamed)
    gathers = [_view(d, renamed[d.name], ranks, order) for d in cascade.inputs if d.name in renamed]
    restores = [
        _view(replace(d, name=renamed[d.name]), d.name, ranks, order, inverse=True)
        for d in cascade.outputs
        if d.name in renamed
    ]
    einsums = (*gathers, *core.einsums, *restores)
    return replace(core, inputs=cascade.inputs, outputs=cascade.outputs, einsums=einsums), renamed


def in_token_order(
    cascade: Cascade, order: TokenOrder, *, query: str = "P", key: str = "M"
) -> Cascade:
    """`cascade` on tokens in `order`: the inputs and outputs laid out along ranks `query` and
    `key` are taken and given in the new order (permute them with `order.permutation()`), every
    coordinate of those ranks in a mask or a score is the token's old position, written in the
    digits of its new one, reads along those ranks at other positions than p and m go through
    sigma^-1, and reads along other ranks (a block table read at p // 64) are at the old
    positions (module docstring). Both ranks are fixed to `order.tokens`."""
    ranks = (query, key)
    refusal = _refusal(cascade, ranks, order)
    if refusal is not None:
        raise PassError(f"reorder: {refusal}")
    tokens = sympy.Integer(order.tokens)
    resized = replace(
        cascade,
        ranks=tuple(replace(r, size=tokens) if r.name in ranks else r for r in cascade.ranks),
    )
    reading = _Reading(resized, order, ranks)
    return replace(resized, einsums=tuple(reading.einsum(e) for e in resized.einsums))


class _Reading:
    """The Einsums of a cascade (P and M sized to the grid) with their reads in the new token
    order (in_token_order)."""

    def __init__(self, cascade: Cascade, order: TokenOrder, ranks: tuple[str, str]) -> None:
        self.cascade = cascade
        self.order = order
        self.ranks = ranks
        self.variables = frozenset(index_name(r) for r in ranks)
        old = index_mapping(order, self.variables)
        self.old = {index_symbol(v): x for v, x in old.items()}
        self.extents = {r.index: int(r.size) for r in cascade.all_ranks() if r.size.is_Integer}

    def einsum(self, einsum: Einsum) -> Einsum:
        if einsum.iterative_index in self.variables:
            raise PassError(
                f"reorder: {einsum.tensor} is a running update over {einsum.iterative_index}, "
                "which runs through the tokens in their order; reorder before running-reduce"
            )

        def rewrite(expr: Expr) -> Expr:
            read = replace_accesses(expr, lambda a: self.access(einsum, a))
            return self.order.in_new_order(read, self.variables)

        return map_expressions(einsum, rewrite)

    def access(self, einsum: Einsum, access: Access) -> Access:
        decl = self.cascade.declaration(access.tensor)
        assert decl is not None, "verified cascades declare what they read"
        indices = tuple(
            self.index(einsum, access, rank, index)
            for rank, index in zip(decl.ranks, access.indices, strict=True)
        )
        return Access(access.tensor, indices)

    def index(self, einsum: Einsum, access: Access, rank: str, index: sympy.Expr) -> sympy.Expr:
        """`index` of `access` along `rank`, read in the new order."""
        if rank not in self.ranks:
            return index.xreplace(self.old)  # a position used as data: the old one
        if isinstance(index, sympy.Symbol) and index.name in self.variables:
            return index  # both ranks move by the same sigma
        # KLR[y] = KL[sigma(y)], so the old read KL[t] is KLR[sigma^-1(t)]
        moved = self.order.new_index(index.xreplace(self.old), self.extents)
        if moved is None:
            text = f"{access.tensor}[{','.join(format_index(i) for i in access.indices)}]"
            raise PassError(
                f"reorder: {einsum.tensor} reads {text} at {format_index(index)} along "
                f"{rank}, a position not provably among the grid's {self.order.tokens} tokens "
                "(a shift, or a rank of no fixed size), so it has no place in the new order; "
                "reorder only cascades whose reads along the token ranks stay on the grid"
            )
        return moved


def _ordered(decls: tuple[TensorDecl, ...], ranks: tuple[str, str]) -> list[TensorDecl]:
    """Declarations laid out along the reordered ranks: they are permuted as wholes."""
    return [d for d in decls if set(d.ranks) & set(ranks)]


def _refusal(cascade: Cascade, ranks: tuple[str, str], order: TokenOrder) -> str | None:
    """Why the pass leaves `cascade` as it is (PassError for ranks that are unknown or of
    another length than the grid)."""
    for name in ranks:
        rank = cascade.rank(name)
        if rank is None:
            known = ", ".join(r.name for r in cascade.all_ranks())
            raise PassError(f"reorder: {cascade.name} has no rank {name}; ranks: {known}")
        if rank.size.is_number and int(rank.size) != order.tokens:
            raise PassError(
                f"reorder: rank {name} holds {rank.size} tokens, the grid "
                f"{'x'.join(map(str, order.shape))} holds {order.tokens}"
            )
        if any(name in (p.rank, p.outer, p.inner) for p in cascade.partitions) or cascade.sparse:
            return f"{name} is partitioned already; reorder before the flash pipeline"
    return None


def _view(
    decl: TensorDecl, name: str, ranks: tuple[str, str], order: TokenOrder, *, inverse: bool = False
) -> Einsum:
    """`name`[...] = `decl`[...] read at sigma (an input in the new order) or sigma^-1 (a
    result back in the old order) along the reordered ranks."""
    indices = tuple(index_symbol(index_name(r)) for r in decl.ranks)
    move = order.new_position if inverse else order.old_position
    read = tuple(move(i) if r in ranks else i for i, r in zip(indices, decl.ranks, strict=True))
    return Einsum(name, indices, Access(decl.name, read))
