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
    (summing phi(K)^T V over the features e again gives back the scores).
The scores S go once nothing reads them (an output S stays, and so does everything). The pass
works as well on a partitioned key rank (C summing over m1, m0: `partition,reassociate`).
Lowered, the sums over the keys are totals over the key tiles, read after the key loop, which
then runs once per batch and head, before the query tiles (`Schedule.hoisted`).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from attncc.ir import (
    Access,
    Call,
    Cascade,
    Coord,
    Einsum,
    Expr,
    ReduceOp,
    format_expr,
    index_symbol,
    index_vars,
    product,
    product_factors,
    substitute,
    tensors_read,
    walk,
)
from attncc.passes.base import CascadePass, PassResult
from attncc.passes.names import fresh_name, taken_names
from attncc.passes.registry import register


@dataclass(frozen=True)
class ScoreSum:
    """A sum `consumer` over `keys` reading the scores S = sum(inner) A1 * A2 * ... as a
    factor: its whole product split into the `keyed` factors, which vary with the keys, and
    the `rest`, which do not (S's factors written in the consumer's indices)."""

    consumer: Einsum
    keys: frozenset[str]
    keyed: tuple[Expr, ...]
    rest: tuple[Expr, ...]

    @property
    def state_vars(self) -> tuple[str, ...]:
        """The indices of the sum over the keys of the keyed factors, in order of use."""
        return tuple(v for v in ordered_vars(self.keyed) if v not in self.keys)


@register
@dataclass(frozen=True)
class Reassociate(CascadePass):
    name = "reassociate"

    def apply(self, cascade: Cascade) -> PassResult:
        remarks: list[str] = []
        original = cascade
        for name in [e.tensor for e in cascade.einsums if is_contraction(e)]:
            scores = cascade.writer(name)  # as rewritten so far
            if scores is None or not is_contraction(scores):
                continue
            found = score_sums(cascade, scores)
            if not found:
                continue
            refusal = _refusal(cascade, scores, found)
            if refusal is not None:
                remarks.append(refusal)
                continue
            cascade = _rewrite(cascade, scores, [f for f in found if isinstance(f, ScoreSum)])
        if not remarks and cascade == original:
            remarks += nonlinearities(cascade) or ["no sum over keys reads a sum of products"]
        return PassResult(cascade, tuple(dict.fromkeys(remarks)))


def is_contraction(einsum: Einsum) -> bool:
    """A sum of products over some index (filtered or not): scores, or a sum over keys."""
    return einsum.reduce is ReduceOp.SUM and bool(einsum.reduced) and einsum.init is None


def ordered_vars(factors: tuple[Expr, ...] | list[Expr]) -> tuple[str, ...]:
    """The index variables of `factors` in order of first use."""
    found: dict[str, None] = {}
    for factor in factors:
        for node in walk(factor):
            if isinstance(node, Access):
                for index in node.indices:
                    found |= dict.fromkeys(sorted(index_vars(index)))
            elif isinstance(node, Coord):
                found[node.name] = None
    return tuple(found)


def score_sums(cascade: Cascade, scores: Einsum) -> list[ScoreSum | str]:
    """Each sum over keys that reads `scores`, split (ScoreSum), or why it cannot be (str);
    empty when no sum over keys reads them (they are not scores)."""
    readers = [e for e in cascade.einsums if scores.tensor in e.reads]
    if not any(_sums_keys_of(reader, scores.tensor) for reader in readers):
        return []
    return [_split(scores, reader) for reader in readers]


def _sums_keys_of(reader: Einsum, tensor: str) -> bool:
    """`reader` sums over an index along which it reads `tensor`."""
    if reader.reduce is not ReduceOp.SUM:
        return False
    read = {v for a in reader.read_accesses() if a.tensor == tensor for v in _access_vars(a)}
    return bool(read & reader.reduced)


def _access_vars(access: Access) -> frozenset[str]:
    return frozenset().union(*(index_vars(i) for i in access.indices))


def _split(scores: Einsum, consumer: Einsum) -> ScoreSum | str:
    name = scores.tensor
    if not (is_contraction(consumer) and consumer.filter is None):
        return f"{consumer.tensor} reads {name} but is not an unfiltered sum"
    factors = product_factors(consumer.expr)
    reading = [f for f in factors if name in tensors_read(f)]
    access = reading[0]
    if len(reading) != 1 or not isinstance(access, Access):
        return f"{consumer.tensor} reads {name} other than as one factor of a product"
    keys = consumer.reduced & _access_vars(access)
    if not keys:
        return f"{consumer.tensor} reads {name} but does not sum over its indices"
    clash = scores.reduced & consumer.space
    if clash:
        return (
            f"{consumer.tensor} uses index {', '.join(sorted(clash))}, which {name} sums over: "
            "the sums cannot be merged"
        )
    mapping = {str(w): r for w, r in zip(scores.indices, access.indices, strict=True)}
    inner = [substitute(f, mapping) for f in product_factors(scores.expr)]
    whole = [*inner, *(f for f in factors if f is not access)]
    keyed = tuple(f for f in whole if _vars_of(f) & keys)
    rest = tuple(f for f in whole if not _vars_of(f) & keys)
    return ScoreSum(consumer, frozenset(keys), keyed, rest)


def _vars_of(expr: Expr) -> frozenset[str]:
    return frozenset(ordered_vars([expr]))


def _refusal(cascade: Cascade, scores: Einsum, found: list[ScoreSum | str]) -> str | None:
    name, query = scores.tensor, query_index(cascade)
    reasons = [f for f in found if isinstance(f, str)]
    if reasons:
        return f"{name} kept: {reasons[0]}"
    if name in cascade.output_names():
        return f"{name} kept: it is an output"
    if scores.filter is not None:
        predicate = format_expr(scores.filter.predicate)
        return (
            f"{name} kept: it is masked (where {predicate}), which ties the keys to the "
            "queries, so the keys cannot be summed once for all queries; for a causal mask "
            "run chunk-causal"
        )
    if query is None:
        return f"{name} kept: the first output has no index, so no query to share sums among"
    for split in found:
        assert isinstance(split, ScoreSum)
        if query in split.state_vars:
            varying = ", ".join(format_expr(f) for f in split.keyed)
            keys = ", ".join(sorted(split.keys))
            return (
                f"{name} kept: in {split.consumer.tensor} the factors over {keys} ({varying}) "
                f"vary with the query {query}: their sum would serve one query only"
            )
    return None


def query_index(cascade: Cascade) -> str | None:
    """The query: the last index of the first output (P in AV[b,h,f,p]), as the schedule
    and partition take it."""
    output = cascade.writer(cascade.outputs[0].name)
    assert output is not None, "verified cascades write their outputs"
    return next((v for i in reversed(output.indices) for v in sorted(index_vars(i))), None)


def _rewrite(cascade: Cascade, scores: Einsum, splits: list[ScoreSum]) -> Cascade:
    # C = sum_m (sum_e A * B) * X   ->   N = sum_m B * X;  C = sum_e A * N
    taken = taken_names(cascade)
    replaced: dict[str, tuple[Einsum, Einsum]] = {}
    for split in splits:
        consumer = split.consumer
        indices = tuple(index_symbol(v) for v in split.state_vars)
        state = Einsum(
            tensor=fresh_name(state_name(split, consumer), taken),
            indices=indices,
            expr=product(list(split.keyed)),
            reduce=ReduceOp.SUM,
            span=consumer.span,
        )
        summed = product([*split.rest, state.output])
        reduced = _vars_of(summed) - consumer.lhs_vars
        rewritten = replace(consumer, expr=summed, reduce=ReduceOp.SUM if reduced else None)
        replaced[consumer.tensor] = (state, rewritten)
    einsums: list[Einsum] = []
    for einsum in cascade.einsums:
        if einsum.tensor == scores.tensor:
            continue
        einsums += replaced.get(einsum.tensor, (einsum,))
    return replace(cascade, einsums=tuple(einsums))


def state_name(split: ScoreSum, consumer: Einsum) -> str:
    """FK * V -> FKV (phi(K)^T V), FK alone -> FKS (the normalizer's sum of phi(K))."""
    names = [f.tensor for f in split.keyed if isinstance(f, Access)]
    if len(names) > 1:
        return "".join(names)
    return f"{names[0]}S" if names else f"{consumer.tensor}S"


def nonlinearities(cascade: Cascade) -> list[str]:
    """Why sums over keys of maps of scores stay: the map between (softmax's exp)."""
    found = []
    for consumer in cascade.einsums:
        if consumer.reduce is not ReduceOp.SUM:
            continue
        for factor in product_factors(consumer.expr):
            writer = cascade.writer(factor.tensor) if isinstance(factor, Access) else None
            if writer is None or writer.reduced or not isinstance(writer.expr, Call):
                continue
            sums = sorted(
                t
                for t in tensors_read(writer.expr)
                if (w := cascade.writer(t)) and is_contraction(w)
            )
            if sums and writer.expr.op != "mul":
                found.append(
                    f"{consumer.tensor} sums {writer.tensor} = {format_expr(writer.expr)}: "
                    f"{writer.expr.op} sits between the sum {sums[0]} and the sum over "
                    f"{', '.join(sorted(consumer.reduced))}; left unchanged"
                )
    return found
