"""The roles of a cascade's indices in attention: the query, and the keys (the ranks softmax
normalizes over, or linear attention sums). The passes that rewrite attention ask here rather
than each guessing.

The query is the last index of the first output (P in AV[b,h,f,p]): every attention the
frontends write lays its output out that way. A softmax key is a rank R whose max
(GM = max(r) S) feeds an exponential (SN = exp(S - GM)) that is summed over R (the
denominator) and contracted along R with something the scores do not make (AV = A * V):
MoH's router also takes a max and an exponential, over the heads, but nothing contracts its
weights with values along the heads, so the heads are no key. Without a max, linear
attention's key is what its sums over keys reduce (`key_ranks`).
"""

from __future__ import annotations

from collections.abc import Callable

from attncc.ir import (
    Call,
    Cascade,
    Einsum,
    ReduceOp,
    index_vars,
    indices_used,
    product_factors,
    tensors_read,
    walk,
)


def query_index(cascade: Cascade) -> str | None:
    """The query: the last index of the first output (P in AV[b,h,f,p]); None when the first
    output has no index."""
    output = cascade.writer(cascade.outputs[0].name)
    assert output is not None, "verified cascades write their outputs"
    return next((v for i in reversed(output.indices) for v in sorted(index_vars(i))), None)


def softmax_keys(cascade: Cascade) -> list[str]:
    """The ranks softmax normalizes over (module docstring), in order of their max; failing
    those, the ranks of softmaxes without values (a max feeding exp(x - max) summed over the
    same rank: a denominator or a log-sum-exp that is itself an output)."""
    with_values: list[str] = []
    normalized: list[str] = []
    for einsum in cascade.einsums:
        if einsum.reduce is not ReduceOp.MAX:
            continue
        for var in sorted(einsum.reduced):
            rank = cascade.rank_of_index(var)
            found = _normalization(cascade, einsum, var)
            if rank is None or found is None:
                continue
            chosen = with_values if found else normalized
            if rank.name not in chosen:
                chosen.append(rank.name)
    return with_values or normalized


def _normalization(cascade: Cascade, maximum: Einsum, var: str) -> bool | None:
    """Whether `maximum` feeds exp(x - max) summed over `var` and contracted along `var` with
    a factor that does not come from it (True), only summed (False), or neither (None)."""
    sums = [e for e in cascade.einsums if e.reduce is ReduceOp.SUM and var in e.reduced]
    found = None
    for exp in (e for e in cascade.einsums if _exp_of(e, maximum.tensor)):
        if not any(exp.tensor in e.reads for e in sums):
            continue
        made = _derived(cascade, exp.tensor)
        found = False
        for e in sums:
            factors = product_factors(e.expr) if e.reads & made else []
            if any(var in indices_used(f) and not tensors_read(f) & made for f in factors):
                return True
    return found


def _exp_of(einsum: Einsum, maximum: str) -> bool:
    """`einsum` takes an exponential of something that reads `maximum` (exp(S - GM))."""
    return any(
        isinstance(node, Call) and node.op in ("exp", "exp2") and maximum in tensors_read(node)
        for node in walk(einsum.expr)
    )


def _derived(cascade: Cascade, tensor: str) -> set[str]:
    """`tensor` and every tensor computed from it (to a fixed point: a running update may
    read what a later Einsum writes)."""
    found = {tensor}
    while fresh := {e.tensor for e in cascade.einsums if e.reads & found} - found:
        found |= fresh
    return found


def key_ranks(cascade: Cascade) -> list[str]:
    """Softmax's keys; without a max, linear attention's key rank: the ranks only sums without
    the query reduce (reassociated, whose sum of phi(K)^T V serves every query); failing that,
    the ranks the outputs reduce (attention without normalization, such as sigmoid
    attention); failing that, the ranks reduced by the sums an output is computed from
    elementwise (normalized linear attention, AV = QKV / QKS)."""
    if any(e.reduce is ReduceOp.MAX for e in cascade.einsums):
        return softmax_keys(cascade)
    outputs = set(cascade.output_names())
    return (
        _shared_totals(cascade)
        or reduced_ranks(cascade, lambda e: e.tensor in outputs)
        or reduced_ranks(cascade, lambda e: e.tensor in _read_elementwise(cascade, outputs))
    )


def reduced_ranks(cascade: Cascade, chosen: Callable[[Einsum], bool]) -> list[str]:
    """The ranks the `chosen` Einsums reduce, in order of first reduction."""
    names = []
    for einsum in cascade.einsums:
        if chosen(einsum):
            for var in sorted(einsum.reduced):
                rank = cascade.rank_of_index(var)
                if rank is not None and rank.name not in names:
                    names.append(rank.name)
    return names


def _shared_totals(cascade: Cascade) -> list[str]:
    """Ranks that only sums without the query index reduce: totals shared by every query."""
    query = query_index(cascade)
    if query is None:
        return []
    sums = [e for e in cascade.einsums if e.reduce is ReduceOp.SUM and e.reduced]
    per_query = reduced_ranks(cascade, lambda e: e in sums and query in e.lhs_vars)
    shared = reduced_ranks(cascade, lambda e: e in sums and query not in e.lhs_vars)
    return [rank for rank in shared if rank not in per_query]


def _read_elementwise(cascade: Cascade, outputs: set[str]) -> set[str]:
    """The tensors the outputs read through Einsums that reduce nothing (QKV and QKS for
    AV = QKV / QKS)."""
    found: set[str] = set()
    todo = sorted(outputs)
    while todo:
        writer = cascade.writer(todo.pop())
        if writer is None or writer.reduced:
            continue
        fresh = writer.reads - found
        found |= fresh
        todo += sorted(fresh)
    return found
