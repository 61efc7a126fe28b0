"""Chunked causal linear attention (Lightning Attention-2, Qin et al. 2024; the chunkwise form
of the causal recurrence of Katharopoulos et al. 2020): the causal sum over keys m <= p of the
scores times V, split at chunks of M0 = `tile` keys into a running state over the chunks before
the query's own and a quadratic part inside it. With the key rank partitioned (M -> M1, M0,
m = m1*M0 + m0) and c = p // M0 the query's chunk:

    QK[m,p] = FQ[e,p] * FK[e,m] where m <= p
    QKV[f,p] = QK[m,p] * V[f,m]
                  ->
    CQK[m0,p] = FQ[e,p] * FK[e,p//M0*M0+m0] where p//M0*M0+m0 <= p     intra-chunk scores
    LFKV[e,f,m1] = FK[e,m1*M0+m0] * V[f,m1*M0+m0]                     chunk m1's phi(K)^T V
    RFKV[e,f,0] = 0
    RFKV[e,f,m1+1] = RFKV[e,f,m1] + LFKV[e,f,m1]                       state after chunk m1
    IQKV[f,p] = FQ[e,p] * RFKV[e,f,p//M0]                             inter: chunks before c
    CQKV[f,p] = CQK[m0,p] * V[f,p//M0*M0+m0] where p//M0*M0+m0 <= p    intra: chunk c
    QKV[f,p] = IQKV[f,p] + CQKV[f,p]

and the normalizer QKS[p] = QK[m,p] the same way (LFKS, RFKS, IQKS, CQKS). Correct because
the keys m <= p are those of the chunks before c, all of them (RFKV at c sums chunks 0..c-1,
unmasked), and those of chunk c up to p (the mask, kept inside the chunk). Work drops from
O(M*P) to O(P*M0) inside the chunks plus O(M + P) for the state.

Applies to scores S, a sum of products masked by exactly `m <= p` (hidden points 0), read only
by sums over m of a product with S as one factor, when the factors over the keys do not vary
with the query p (nothing but the mask ties them) and the query rank is no longer than the
key rank (self-attention, `rank P = M`): query p's chunk is then a chunk of keys and the state
at p // M0 exists. The key rank must not be partitioned yet. The tiled backends run the
quadratic causal form (Lightning Attention-1's tiling, with the causal tiles skipped); this
form reads the state at the query's own chunk, a scan from one query tile to the next that
their loop nest, parallel over query tiles, does not have.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import sympy

from attncc.errors import PassError
from attncc.ir import (
    Access,
    Call,
    Cascade,
    Const,
    Coord,
    Einsum,
    Expr,
    Filter,
    Partition,
    Rank,
    ReduceOp,
    format_expr,
    index_name,
    index_symbol,
    product,
    product_factors,
    size_symbol,
    substitute,
)
from attncc.passes.base import CascadePass, PassResult
from attncc.passes.names import fresh_name, taken_names
from attncc.passes.registry import register
from attncc.passes.score_sums import Found, ScoreSum, query_varying, rewrite_score_sums


@register
@dataclass(frozen=True)
class ChunkCausal(CascadePass):
    """`tile`: keys per chunk (M0)."""

    name = "chunk-causal"
    tile: int = 64

    def apply(self, cascade: Cascade) -> PassResult:
        if self.tile < 1:
            raise PassError(f"chunk-causal: tile={self.tile} must be a positive integer")
        return rewrite_score_sums(cascade, self._chunked)

    def _chunked(self, cascade: Cascade, scores: Einsum, found: Found) -> Cascade | str:
        """`cascade` with the causal `scores` and their sums chunked, or why they stay."""
        causal = _causal(cascade, scores)
        if isinstance(causal, str):
            return f"{scores.tensor} kept: {causal}"
        splits = [f for f in found if isinstance(f, ScoreSum)]
        refusal = next((f for f in found if isinstance(f, str)), None)
        refusal = refusal or _refusal(cascade, scores, splits, *causal)
        if refusal is not None:
            return f"{scores.tensor} kept: {refusal}"
        return _Chunking(cascade, scores, splits, *causal, self.tile).apply()


def _causal(cascade: Cascade, scores: Einsum) -> tuple[str, str] | str:
    """(key, query) index of the causal mask `key <= query` on `scores`, or why it has none."""
    if scores.filter is None:
        return "it has no causal mask; run reassociate"
    predicate = scores.filter.predicate
    if not (
        isinstance(predicate, Call)
        and predicate.op == "le"
        and all(isinstance(a, Coord) for a in predicate.args)
    ):
        return f"its mask {format_expr(predicate)} is not the causal m <= p"
    key, query = (a.name for a in predicate.args if isinstance(a, Coord))
    if scores.filter.fill not in (None, 0.0):
        return f"hidden points take {scores.filter.fill}, not 0"
    if not {key, query} <= scores.lhs_vars:
        return f"{scores.tensor} does not keep both {key} and {query}"
    return key, query


def _refusal(
    cascade: Cascade, scores: Einsum, splits: list[ScoreSum], key: str, query: str
) -> str | None:
    key_rank, query_rank = cascade.rank_of_index(key), cascade.rank_of_index(query)
    assert key_rank is not None and query_rank is not None, "verified cascades declare ranks"
    if scores.tensor in cascade.output_names():
        return "it is an output"
    if any(key_rank.name in (p.rank, p.outer, p.inner) for p in cascade.partitions):
        return f"the key rank {key_rank.name} is partitioned already"
    outer, inner = f"{key_rank.name}1", f"{key_rank.name}0"
    if any(cascade.rank(name) is not None for name in (outer, inner)):
        return f"ranks {outer} and {inner} exist already"
    longer = sympy.simplify(query_rank.size - key_rank.size)
    if not (longer.is_zero or (longer.is_number and longer <= 0)):
        return (
            f"the query rank {query_rank.name} = {query_rank.size} may be longer than the key "
            f"rank {key_rank.name} = {key_rank.size}, and a query's chunk must be a key chunk; "
            f"declare 'rank {query_rank.name} = {key_rank.name}' (self-attention)"
        )
    for split in splits:
        consumer = split.consumer
        if consumer.reduced != {key}:
            return f"{consumer.tensor} sums over more than the keys {key}"
        if scores.output not in consumer.read_accesses():
            return f"{consumer.tensor} reads {scores.tensor} at other indices than it writes"
        varying = query_varying(split, query)
        if varying is not None:
            return (
                f"in {consumer.tensor} the factors over the keys ({varying}) vary with the "
                f"query {query}: no state over the chunks serves every query"
            )
    return None


class _Chunking:
    """One application: chunk the causal `scores` and their sums over `key` (module doc)."""

    def __init__(
        self,
        cascade: Cascade,
        scores: Einsum,
        splits: list[ScoreSum],
        key: str,
        query: str,
        tile: int,
    ) -> None:
        self.cascade = cascade
        self.scores = scores
        self.splits = splits
        self.key = key
        rank = cascade.rank_of_index(key)
        assert rank is not None
        self.rank = rank.name
        self.outer, self.inner = f"{rank.name}1", f"{rank.name}0"
        self.tile = tile
        self.o = index_symbol(index_name(self.outer))
        self.i = index_symbol(index_name(self.inner))
        width = size_symbol(self.inner)
        self.chunk = sympy.floor(index_symbol(query) / width)
        # m in chunk m1, and m in the query's own chunk
        self.in_tile = self.o * width + self.i
        self.in_own = self.chunk * width + self.i
        self.taken = taken_names(cascade)

    def apply(self) -> Cascade:
        cascade = self.cascade
        intra = self._intra_scores()
        einsums: list[Einsum] = []
        chunked = {split.consumer.tensor: split for split in self.splits}
        for einsum in cascade.einsums:
            if einsum.tensor == self.scores.tensor:
                einsums.append(intra)
            elif einsum.tensor in chunked:
                einsums += self._sum(chunked[einsum.tensor], intra)
            else:
                einsums.append(einsum)
        return replace(
            cascade,
            ranks=(*cascade.ranks, Rank(self.inner, sympy.Integer(self.tile))),
            partitions=(*cascade.partitions, Partition(self.rank, self.outer, self.inner)),
            einsums=tuple(einsums),
        )

    def _own(self, expr: Expr) -> Expr:
        return substitute(expr, {self.key: self.in_own})

    def _intra_scores(self) -> Einsum:
        # S[m,p] = A * B where m <= p  ->  CS[m0,p] = A * B[m := c*M0+m0] where c*M0+m0 <= p
        scores = self.scores
        assert scores.filter is not None
        indices = tuple(self.i if i == index_symbol(self.key) else i for i in scores.indices)
        mask = Filter(self._own(scores.filter.predicate), scores.filter.fill)
        name = fresh_name(f"C{scores.tensor}", self.taken)
        return replace(
            scores, tensor=name, indices=indices, expr=self._own(scores.expr), filter=mask
        )

    def _sum(self, split: ScoreSum, intra: Einsum) -> list[Einsum]:
        consumer = split.consumer
        state_vars = tuple(index_symbol(v) for v in split.state_vars)
        base = split.state_name
        local_name = fresh_name(f"L{base}", self.taken)
        running = fresh_name(f"R{base}", self.taken)
        # L[.., m1] = sum_m0 B * X at m = m1*M0 + m0; R[.., m1+1] = R[.., m1] + L[.., m1]
        in_tile = [substitute(f, {self.key: self.in_tile}) for f in split.keyed]
        local = Einsum(local_name, (*state_vars, self.o), product(in_tile), ReduceOp.SUM)
        previous = Access(running, (*state_vars, self.o))
        step = Call("add", (previous, local.output))
        state = Einsum(running, (*state_vars, self.o + 1), step, init=Const(0.0))
        # I = sum_e A * R[.., c]: every key of the chunks before the query's
        inter_expr = product([*split.rest, Access(running, (*state_vars, self.chunk))])
        inter = _summed(fresh_name(f"I{consumer.tensor}", self.taken), consumer, inter_expr)
        # C = sum_m0 CS * X at m = c*M0 + m0: the keys of the query's chunk, masked
        factors = [
            intra.output if f == self.scores.output else self._own(f)
            for f in product_factors(consumer.expr)
        ]
        own = _summed(fresh_name(f"C{consumer.tensor}", self.taken), consumer, product(factors))
        # the mask again: past it the keys of a ragged last chunk are not there to be read
        own = replace(own, filter=replace(intra.filter, fill=None) if intra.filter else None)
        total = replace(consumer, expr=Call("add", (inter.output, own.output)), reduce=None)
        return [local, state, inter, own, total]


def _summed(name: str, consumer: Einsum, expr: Expr) -> Einsum:
    """`name`[consumer's indices] = expr, summed over whatever else it uses."""
    einsum = Einsum(name, consumer.indices, expr, span=consumer.span)
    return replace(einsum, reduce=ReduceOp.SUM if einsum.reduced else None)
