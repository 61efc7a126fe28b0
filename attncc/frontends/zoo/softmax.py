"""Softmax attention as the zoo's variants embed it: head ranks (batch, query heads, key/value
groups under GQA/MQA) and the 3-pass cascade of FuseMax (Cascade 4), written into a builder
that already holds the variant's other stages (a router, a scoring stage, pooling).

The library's cascades (`attncc.frontends.library`) are whole cascades with masks over ids at
the key or the query position; the zoo's variants mask with tensors their own stages compute
(a block table from a scoring stage) and hold more than one attention (HiLo's two branches), so
they emit the same Einsums here, under names with a suffix per attention.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from attncc.frontends.builder import CascadeBuilder, Index, TensorRef, Value, exp, rsqrt


@dataclass(frozen=True)
class Heads:
    """Head indices: `query` index query-side tensors (b, h), `kv` key/value tensors (b, g)
    and `read` key/value tensors from a query head's point of view (b, h//R under GQA)."""

    query: tuple[Index, ...]
    kv: tuple[Index, ...]
    read: tuple[Index, ...]


def declare_heads(
    b: CascadeBuilder,
    *,
    batch: Index | None,
    heads: str = "H",
    groups: str = "G",
    gqa_group: int | None = None,
) -> Heads:
    """Declare query heads `heads` and, under GQA (`gqa_group` query heads per key/value head;
    MQA is a single group, G = 1), key/value groups `groups`; `batch` leads every head tuple
    when given."""
    lead = () if batch is None else (batch,)
    if gqa_group is None:
        h = b.rank(heads)
        return Heads((*lead, h), (*lead, h), (*lead, h))
    if isinstance(gqa_group, bool) or not isinstance(gqa_group, int) or gqa_group < 1:
        raise ValueError(f"gqa_group must be a positive integer, got {gqa_group!r}")
    g = b.rank(groups)
    h = b.rank(heads, gqa_group * b.size(groups))
    return Heads((*lead, h), (*lead, g), (*lead, h // gqa_group))


@dataclass(frozen=True)
class Operands:
    """What one attention reads: Q[*query, e, p], K[*kv, e, m], V[*kv, f, m]."""

    q: TensorRef
    k: TensorRef
    v: TensorRef
    e: Index
    f: Index
    m: Index
    p: Index


def softmax_attention(
    b: CascadeBuilder,
    heads: Heads,
    x: Operands,
    *,
    output: str,
    suffix: str = "",
    mask: Value | None = None,
) -> TensorRef:
    """FuseMax Cascade 4 into `b`, writing `output`[*query heads, f, p]:

        QK[m,p] = Q[e,p] * K[e,m] * rsqrt(E)  where mask else -inf
        GM[p]   = max(m) QK[m,p]
        SN[m,p] = exp(QK[m,p] - GM[p])
        SD[p]   = SN[m,p]
        A[m,p]  = SN[m,p] / SD[p]
        AV[f,p] = A[m,p] * V[f,m]

    Temporaries are named as above plus `suffix`. `mask` is a predicate over the iteration
    space of QK (key position m, query position p, the heads); the flash pipeline turns the
    cascade into its one-pass form, as it does the library's."""
    h, r, e, f, m, p = heads.query, heads.read, x.e, x.f, x.m, x.p
    scores = x.q[(*h, e, p)] * x.k[(*r, e, m)] * rsqrt(b.size("E"))
    QK = b.let(f"QK{suffix}", [*h, m, p], scores, where=mask, fill=-math.inf)
    GM = b.let(f"GM{suffix}", [*h, p], QK[(*h, m, p)], reduce="max")
    SN = b.let(f"SN{suffix}", [*h, m, p], exp(QK[(*h, m, p)] - GM[(*h, p)]))
    SD = b.let(f"SD{suffix}", [*h, p], SN[(*h, m, p)])
    A = b.let(f"A{suffix}", [*h, m, p], SN[(*h, m, p)] / SD[(*h, p)])
    return b.let(output, [*h, f, p], A[(*h, m, p)] * x.v[(*r, f, m)])
