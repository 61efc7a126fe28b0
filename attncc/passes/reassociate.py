"""Reassociation (linear attention, Katharopoulos et al. 2020, "Transformers are RNNs"): a sum
over the keys of the scores times V, the scores themselves a sum of products, is summed in the
other order, so that the keys are summed once for all queries.

    QK[m,p] = FQ[e,p] * FK[e,m]            FKV[e,f] = FK[e,m] * V[f,m]
    QKV[f,p] = QK[m,p] * V[f,m]      ->    QKV[f,p] = FQ[e,p] * FKV[e,f]
    QKS[p] = QK[m,p]                       FKS[e] = FK[e,m]
                                           QKS[p] = FQ[e,p] * FKS[e]

sum_m (sum_e FQ[e,p] FK[e,m]) V[f,m] = sum_e FQ[e,p] (sum_m FK[e,m] V[f,m]): a sum of products
may be summed in any order. The quadratic form costs E*M*P + F*M*P multiply-accumulates, the
reassociated one E*F*M + E*F*P: O(M*P) becomes O(M + P). The normalizer QKS is a sum over the
keys too and goes the same way (its only factor over m is FK).

A sum C over keys R that reads the scores S (a sum of products) is rewritten when:
(1) C reads S itself as one factor of a product: nothing sits between them (softmax attention
    reads exp(S - max), and exp(a + b) is no product of sums: it is left unchanged);
(2) S has no filter: a causal mask ties key m to query p, so the keys cannot be summed once
    for every query (`chunk-causal` handles the causal case);
(3) every reader of S is such a sum (otherwise S must still be computed and nothing is saved);
(4) the new sum over R does not vary with the query (the last index of the first output, P
    in AV[..., f, p]), so it serves every query; a factor over both the keys and the queries
    (a bias, a decay) prevents that, and so does it keep the pass from undoing its own work
    (summing phi(K)^T V over the features e again gives back the scores);
(5) R is the key rank (`attncc.analysis.key_ranks`): a projection QP[e,p] = W[e,d] * X[d,p]
    read by the scores QK[m,p] = QP[e,p] * K[e,m] is a sum of products summed over e too,
    but summing W * K over e first trades D*E*P + E*M*P multiply-accumulates for
    D*E*M + D*M*P, no fewer;
(6) the work drops: `cascade_cost` before and after, with the key and query ranks both of
    length N, must fall to a lower degree in N (O(N^2) to O(N)); otherwise the cascade stays.
The scores S go once nothing reads them (an output S stays, and so does everything). The pass
works as well on a partitioned key rank (C summing over m1, m0: `partition,reassociate`).
Lowered, the sums over the keys are totals over the key tiles, read after the key loop, which
then runs once per batch and head, before the query tiles (`Schedule.hoisted`).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import sympy

from attncc.analysis import cascade_cost, key_ranks, query_index
from attncc.ir import (
    Cascade,
    Einsum,
    ReduceOp,
    format_expr,
    index_symbol,
    product,
    size_symbol,
)
from attncc.passes.base import CascadePass, PassResult
from attncc.passes.names import fresh_name, taken_names
from attncc.passes.registry import register
from attncc.passes.score_sums import (
    Found,
    ScoreSum,
    query_varying,
    rewrite_score_sums,
    vars_of,
)

SEQUENCE = sympy.Symbol("N", positive=True, integer=True)
"""The sequence length the work is compared at: keys and queries both N long."""


@register
@dataclass(frozen=True)
class Reassociate(CascadePass):
    name = "reassociate"

    def apply(self, cascade: Cascade) -> PassResult:
        return rewrite_score_sums(cascade, _reassociated)


def _reassociated(cascade: Cascade, scores: Einsum, found: Found) -> Cascade | str:
    """`cascade` with the sums over keys of `scores` reassociated, or why they stay."""
    splits = [f for f in found if isinstance(f, ScoreSum)]
    refusal = _refusal(cascade, scores, found) or _off_key(cascade, splits)
    if refusal is not None:
        return f"{scores.tensor} kept: {refusal}"
    rewritten = _rewrite(cascade, scores, splits)
    before, after = _degree(cascade), _degree(rewritten)
    if after >= before:
        summed = ", ".join(sorted(set().union(*(_ranks(cascade, s.keys) for s in splits))))
        return (
            f"{scores.tensor} kept: summing over {summed} first costs O(N^{after}) with keys "
            f"and queries N long, no less than the O(N^{before}) it saves"
        )
    return rewritten


def _refusal(cascade: Cascade, scores: Einsum, found: Found) -> str | None:
    name, query = scores.tensor, query_index(cascade)
    reasons = [f for f in found if isinstance(f, str)]
    if reasons:
        return reasons[0]
    if name in cascade.output_names():
        return "it is an output"
    if scores.filter is not None:
        predicate = format_expr(scores.filter.predicate)
        return (
            f"it is masked (where {predicate}), which ties the keys to the queries, so the "
            "keys cannot be summed once for all queries; for a causal mask run chunk-causal"
        )
    if query is None:
        return "the first output has no index, so no query to share sums among"
    for split in found:
        assert isinstance(split, ScoreSum)
        varying = query_varying(split, query)
        if varying is not None:
            return (
                f"in {split.consumer.tensor} the factors over {', '.join(sorted(split.keys))} "
                f"({varying}) vary with the query {query}: their sum would serve one query only"
            )
    return None


def _off_key(cascade: Cascade, splits: list[ScoreSum]) -> str | None:
    """Why a sum is over no key rank (a projection read by the scores), or None."""
    keys = key_ranks(cascade)
    for split in splits:
        summed = _ranks(cascade, split.keys)
        if not summed <= set(keys):
            return (
                f"{split.consumer.tensor} sums it over {', '.join(sorted(summed))}, not the key "
                f"rank ({', '.join(keys) or 'none found'}): a projection, not attention's scores"
            )
    return None


def _ranks(cascade: Cascade, variables: frozenset[str]) -> set[str]:
    ranks = (cascade.rank_of_index(v) for v in variables)
    return {r.name for r in ranks if r is not None}


def _degree(cascade: Cascade) -> int:
    """The degree in N of the work of `cascade`, its key and query ranks N long."""
    query = query_index(cascade)
    tiles = {r: p.rank for p in cascade.partitions for r in (p.outer, p.inner)}
    lengths = {tiles.get(r, r) for r in key_ranks(cascade)}
    query_rank = cascade.rank_of_index(query) if query else None
    if query_rank is not None:
        lengths.add(query_rank.name)
    symbols = {size_symbol(name): SEQUENCE for name in lengths}
    resized = replace(
        cascade,
        ranks=tuple(
            replace(r, size=SEQUENCE if r.name in lengths else r.size.subs(symbols))
            for r in cascade.ranks
        ),
    )
    flops = cascade_cost(resized).flops
    # A partition's outer rank is ceil(N / tile) long: of degree 1 in N, as N is.
    flops = flops.replace(sympy.ceiling, lambda x: x).replace(sympy.floor, lambda x: x)
    return int(sympy.Poly(sympy.expand(flops), SEQUENCE).degree())


def _rewrite(cascade: Cascade, scores: Einsum, splits: list[ScoreSum]) -> Cascade:
    # C = sum_m (sum_e A * B) * X   ->   N = sum_m B * X;  C = sum_e A * N
    taken = taken_names(cascade)
    replaced: dict[str, tuple[Einsum, Einsum]] = {}
    for split in splits:
        consumer = split.consumer
        indices = tuple(index_symbol(v) for v in split.state_vars)
        state = Einsum(
            tensor=fresh_name(split.state_name, taken),
            indices=indices,
            expr=product(list(split.keyed)),
            reduce=ReduceOp.SUM,
            span=consumer.span,
        )
        summed = product([*split.rest, state.output])
        reduced = vars_of(summed) - consumer.lhs_vars
        rewritten = replace(consumer, expr=summed, reduce=ReduceOp.SUM if reduced else None)
        replaced[consumer.tensor] = (state, rewritten)
    einsums: list[Einsum] = []
    for einsum in cascade.einsums:
        if einsum.tensor == scores.tensor:
            continue
        einsums += replaced.get(einsum.tensor, (einsum,))
    return replace(cascade, einsums=tuple(einsums))
