"""Recognizing a softmax-attention cascade, so it can be checked against PyTorch.

`match_sdpa` finds, in a cascade with three inputs and one output in FuseMax layout
(Q[..,e,p], K[..,e,m], V[..,f,m] -> AV[..,f,p]), which input plays which part, the constant
scale of the scores and whether the scores carry the causal filter `m <= p`. It does not prove
the cascade computes softmax attention (that is what comparing with PyTorch is for); it only
finds the call to `torch.nn.functional.scaled_dot_product_attention` that should agree.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import sympy

from attncc.backends.numpy.ops import MAP_OPS
from attncc.ir import (
    Access,
    Call,
    Cascade,
    Const,
    Coord,
    Einsum,
    Expr,
    Size,
    as_index,
    index_symbol,
    product,
    product_factors,
    walk,
)


@dataclass(frozen=True)
class SdpaCall:
    """The PyTorch call a cascade should agree with. `scale` is a value expression of sizes."""

    query: str
    key: str
    value: str
    output: str
    scale: Expr
    causal: bool
    gqa: bool


def match_sdpa(cascade: Cascade) -> SdpaCall | None:
    """The SDPA call matching `cascade`, or None when it does not look like attention."""
    if len(cascade.inputs) != 3 or len(cascade.outputs) != 1:
        return None
    out = cascade.outputs[0]
    if len(out.ranks) < 2 or not _uses_softmax(cascade):
        return None
    for q, k, v in itertools.permutations(cascade.inputs):
        if len({len(q.ranks), len(k.ranks), len(v.ranks), len(out.ranks)}) != 1:
            continue
        if (q.ranks[-1], q.ranks[-2], v.ranks[-2], k.ranks[-1]) != (
            out.ranks[-1],
            k.ranks[-2],
            out.ranks[-2],
            v.ranks[-1],
        ):
            continue
        if q.ranks[:-2] != out.ranks[:-2] or k.ranks[:-2] != v.ranks[:-2]:
            continue
        # The scores contract Q with the keys; Q merely rescaled (canonicalize's QS) is not
        # recognized, so no comparison is made with a scale attncc cannot see.
        scores = next(
            (
                e
                for e in cascade.einsums
                if q.name in e.reads
                and sum(isinstance(f, Access) for f in product_factors(e.expr)) >= 2
            ),
            None,
        )
        if scores is None:
            continue
        scale = _constant_factor(scores.expr)
        causal = _is_causal(cascade, scores, key_rank=k.ranks[-1], query_rank=q.ranks[-1])
        if scale is None or causal is None:
            continue
        gqa = q.ranks[:-2] != k.ranks[:-2]
        return SdpaCall(q.name, k.name, v.name, out.name, scale, causal, gqa)
    return None


def _uses_softmax(cascade: Cascade) -> bool:
    """exp and a division; exp2 means scores in log2 units, whose scale is not SDPA's."""
    ops = {n.op for e in cascade.einsums for n in walk(e.expr) if isinstance(n, Call)}
    return "exp" in ops and "exp2" not in ops and "div" in ops


def _constant_factor(expr: Expr) -> Expr | None:
    """The product of the factors of `expr` that are not accesses (None if one is not constant)."""
    factors = product_factors(expr)
    constants = [f for f in factors if not isinstance(f, Access)]
    if any(_reads_data(f) for f in constants):
        return None
    return product([Const(1.0), *constants])


def _reads_data(expr: Expr) -> bool:
    return any(isinstance(n, Access | Coord) for n in walk(expr))


def _is_causal(cascade: Cascade, scores: Einsum, key_rank: str, query_rank: str) -> bool | None:
    """True for the filter key <= query with fill -inf, False for no filter, else None."""
    if scores.filter is None:
        return False
    predicate, fill = scores.filter.predicate, scores.filter.fill
    if not (isinstance(predicate, Call) and predicate.op == "le") or fill != -math.inf:
        return None
    key, query = (as_index(a) for a in predicate.args)
    keys = [index_symbol(key_rank.lower())]
    keys += [p.recombined() for p in cascade.partitions if p.rank == key_rank]
    if key is None or query != index_symbol(query_rank.lower()):
        return None
    return any(sympy.expand(key - k) == 0 for k in keys)


def sdpa_reference(
    call: SdpaCall, inputs: Mapping[str, np.ndarray], sizes: Mapping[str, int]
) -> np.ndarray:
    """PyTorch's scaled_dot_product_attention on the cascade's inputs, in the cascade's layout."""
    # torch takes a second to import; only the commands that compare with it pay for that.
    import torch

    def torch_layout(name: str) -> torch.Tensor:
        # FuseMax layout keeps the sequence last (Q[e,p]); PyTorch wants it second to last.
        array = torch.from_numpy(np.ascontiguousarray(inputs[name]))
        return array.transpose(-1, -2)

    q, k, v = (torch_layout(n) for n in (call.query, call.key, call.value))
    out = torch.nn.functional.scaled_dot_product_attention(
        q,
        k,
        v,
        is_causal=call.causal,
        scale=_evaluate_scale(call.scale, sizes),
        enable_gqa=call.gqa,
    )
    return out.transpose(-1, -2).numpy()


def _evaluate_scale(expr: Expr, sizes: Mapping[str, int]) -> float:
    if isinstance(expr, Const):
        return expr.value
    if isinstance(expr, Size):
        return float(sizes[expr.rank])
    assert isinstance(expr, Call)
    return float(MAP_OPS[expr.op](*(_evaluate_scale(a, sizes) for a in expr.args)))
