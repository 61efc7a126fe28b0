"""Sums over keys of scores, the shape both linear-attention passes rewrite (`reassociate`,
`chunk-causal`): scores S = sum(inner) A1 * A2 * ... (a sum of products), read as one factor of
a sum C over keys R. `score_sums` splits each such C into the factors that vary with the keys
and the rest; `rewrite_score_sums` runs a pass's rewrite over every candidate in turn, each
read as the rewrites before it left the cascade, and collects the remarks.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

from attncc.ir import (
    Access,
    Call,
    Cascade,
    Coord,
    Einsum,
    Expr,
    ReduceOp,
    format_expr,
    index_vars,
    product_factors,
    substitute,
    tensors_read,
    walk,
)
from attncc.passes.base import PassResult


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

    @property
    def state_name(self) -> str:
        """FK * V -> FKV (phi(K)^T V), FK alone -> FKS (the normalizer's sum of phi(K))."""
        names = [f.tensor for f in self.keyed if isinstance(f, Access)]
        if len(names) > 1:
            return "".join(names)
        return f"{names[0]}S" if names else f"{self.consumer.tensor}S"


Found = list[ScoreSum | str]
"""The sums over keys of one scores tensor, each split or the reason it cannot be."""

Rewrite = Callable[[Cascade, Einsum, Found], "Cascade | str"]
"""A pass's rewrite of one scores tensor and its sums: the new cascade, or why not."""


def rewrite_score_sums(cascade: Cascade, rewrite: Rewrite) -> PassResult:
    """`rewrite` applied to each candidate scores tensor of `cascade` in turn, each read as
    the rewrites before it left the cascade; the reasons it gives are the remarks, and when
    nothing changes and nothing was said, why no sum over keys could be rewritten."""
    remarks: list[str] = []
    result = cascade
    for name in [scores.tensor for scores, _ in candidate_scores(cascade)]:
        scores = result.writer(name)  # as rewritten so far
        if scores is None or not is_contraction(scores):
            continue
        found = score_sums(result, scores)
        if not found:
            continue
        outcome = rewrite(result, scores, found)
        if isinstance(outcome, str):
            remarks.append(outcome)
        else:
            result = outcome
    if not remarks and result == cascade:
        remarks += nonlinearities(cascade) or ["no sum over keys reads a sum of products"]
    return PassResult(result, tuple(dict.fromkeys(remarks)))


def candidate_scores(cascade: Cascade) -> Iterator[tuple[Einsum, Found]]:
    """Each sum of products that some sum over keys reads, with those sums (`score_sums`)."""
    for einsum in cascade.einsums:
        if is_contraction(einsum):
            found = score_sums(cascade, einsum)
            if found:
                yield einsum, found


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


def query_varying(split: ScoreSum, query: str) -> str | None:
    """The keyed factors of `split`, written out, when the state they sum to over the keys
    varies with `query` (so it serves no other query); None when it does not."""
    if query not in split.state_vars:
        return None
    return ", ".join(format_expr(f) for f in split.keyed)


def vars_of(expr: Expr) -> frozenset[str]:
    return frozenset(ordered_vars([expr]))


def score_sums(cascade: Cascade, scores: Einsum) -> Found:
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
    keyed = tuple(f for f in whole if vars_of(f) & keys)
    rest = tuple(f for f in whole if not vars_of(f) & keys)
    return ScoreSum(consumer, frozenset(keys), keyed, rest)


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
