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

Options: `shape` (the grid as digits, row-major: `8x16x16` for T x H x W, `4x8x4x8` for a
32 x 32 image in 8 x 8 tiles), `order` (the new order of the digits, most significant first:
`120`, `0213`; see attncc.passes.token_order), `query` and `key` (the ranks, P and M). The pass
fixes both ranks to the grid's token count, the length the grid's masks assume. It runs before
`flash`: the tiled backends take the cascade in the new order (`in_token_order`) with inputs
permuted before the kernel and the output after it, as PAROAttention fuses its permutations
into the neighbouring operators.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import sympy

from attncc.errors import PassError
from attncc.ir import (
    Access,
    Cascade,
    Einsum,
    Rank,
    TensorDecl,
    format_index,
    index_symbol,
    index_vars,
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
        if not self.shape or not self.order:
            raise PassError(
                "reorder: give the grid and the new order, e.g. shape=8x16x16,order=120"
            )
        try:
            order = TokenOrder.parse(self.shape, self.order)
        except ValueError as error:
            raise PassError(f"reorder: {error}") from None
        ranks = (self.query, self.key)
        refusal = _refusal(cascade, ranks, order)
        if refusal is not None:
            return PassResult(cascade, (refusal,))
        taken = taken_names(cascade)
        inputs = {d.name: fresh_name(f"{d.name}R", taken) for d in _ordered(cascade.inputs, ranks)}
        outputs = {
            d.name: fresh_name(f"{d.name}R", taken) for d in _ordered(cascade.outputs, ranks)
        }
        # The cascade in the new order reads the permuted inputs and writes permuted outputs.
        core = rename_tensors(
            in_token_order(cascade, order, query=self.query, key=self.key), {**inputs, **outputs}
        )
        gathers = [
            _view(d, inputs[d.name], ranks, order) for d in cascade.inputs if d.name in inputs
        ]
        restores = [
            _view(replace(d, name=outputs[d.name]), d.name, ranks, order, inverse=True)
            for d in cascade.outputs
            if d.name in outputs
        ]
        rewritten = replace(
            core,
            inputs=cascade.inputs,
            outputs=cascade.outputs,
            einsums=(*gathers, *core.einsums, *restores),
        )
        grid = "x".join(map(str, order.shape))
        digits = "".join(map(str, order.order))
        remark = (
            f"{self.query} and {self.key} hold the {order.tokens} tokens of {grid}, now in digit "
            f"order {digits}; {', '.join(inputs)} read permuted, {', '.join(outputs)} put back"
        )
        return PassResult(rewritten, (remark,))


def in_token_order(
    cascade: Cascade, order: TokenOrder, *, query: str = "P", key: str = "M"
) -> Cascade:
    """`cascade` on tokens in `order`: the inputs and outputs laid out along ranks `query` and
    `key` are taken and given in the new order (permute them with `order.permutation()`), every
    coordinate of those ranks in a mask or a score is the token's old position, written in the
    digits of its new one, and inputs indexed by positions otherwise (a block table read at
    p // 64) are read at the old positions. Both ranks are fixed to `order.tokens`."""
    refusal = _refusal(cascade, (query, key), order)
    if refusal is not None:
        raise PassError(f"reorder: {refusal}")
    variables = frozenset(_var(cascade, r) for r in (query, key))
    ordered = {d.name for d in _ordered(cascade.inputs, (query, key))}
    old = index_mapping(order, variables)

    def access(a: Access) -> Access:
        if a.tensor in ordered or a.tensor not in cascade.input_names():
            return a
        return Access(
            a.tensor,
            tuple(i.xreplace({index_symbol(v): s for v, s in old.items()}) for i in a.indices),
        )

    def rewrite(einsum: Einsum) -> Einsum:
        return map_expressions(
            einsum, lambda x: order.in_new_order(replace_accesses(x, access), variables)
        )

    sizes = sympy.Integer(order.tokens)
    return replace(
        cascade,
        ranks=tuple(Rank(r.name, sizes) if r.name in (query, key) else r for r in cascade.ranks),
        einsums=tuple(rewrite(e) for e in cascade.einsums),
    )


def _var(cascade: Cascade, rank: str) -> str:
    found = cascade.rank(rank)
    assert found is not None, "checked by _refusal"
    return found.index


def _ordered(decls: tuple[TensorDecl, ...], ranks: tuple[str, str]) -> list[TensorDecl]:
    """Declarations laid out along the reordered ranks: they are permuted as wholes."""
    return [d for d in decls if set(d.ranks) & set(ranks)]


def _refusal(cascade: Cascade, ranks: tuple[str, str], order: TokenOrder) -> str | None:
    """Why the pass cannot reorder `ranks` of `cascade` (PassError for unknown ranks)."""
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
    variables = {r.lower() for r in ranks}
    inputs = set(cascade.input_names())
    for einsum in cascade.einsums:
        for a in einsum.read_accesses():
            laid_out = a.tensor not in inputs or a.tensor in {
                d.name for d in _ordered(cascade.inputs, ranks)
            }
            for index in a.indices:
                if laid_out and index_vars(index) & variables and not index.is_Symbol:
                    text = f"{a.tensor}[{','.join(format_index(i) for i in a.indices)}]"
                    return (
                        f"{einsum.tensor} reads {text} at {format_index(index)}: "
                        "only tensors read at plain positions can be permuted"
                    )
    return None


def _view(
    decl: TensorDecl, name: str, ranks: tuple[str, str], order: TokenOrder, *, inverse: bool = False
) -> Einsum:
    """`name`[...] = `decl`[...] read at sigma (an input in the new order) or sigma^-1 (a
    result back in the old order) along the reordered ranks."""
    indices = tuple(index_symbol(r.lower()) for r in decl.ranks)
    move = order.new_position if inverse else order.old_position
    read = tuple(move(i) if r in ranks else i for i, r in zip(indices, decl.ranks, strict=True))
    return Einsum(name, indices, Access(decl.name, read))
