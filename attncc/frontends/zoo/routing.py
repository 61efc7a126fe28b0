"""Content-based block sparsity: a scoring stage chooses, for each block of queries, the key
blocks it attends, and the attention reads that choice as a block-table mask.

This is the routing of BiFormer (Zhu et al. 2023, bi-level routing attention: region queries
and keys are the means of their tokens, region affinity Q_r K_r^T over all channels, top-k key
regions per query region, then token attention inside the chosen regions) on 1-D blocks of
`block` consecutive tokens. BiFormer's regions are S x S windows of an image: they are blocks
here only if the tokens arrive region-major (the `reorder` pass cannot do it: it permutes
tensors read at plain positions, and this cascade reads Q and K at i*QB + qb and the table at
p // 64).
SeerAttention (a learned gate on pooled Q and K) and SALE (a low-bit estimate of the scores)
choose blocks the same way per head, from another estimate of the block affinity: `per_head`
chooses per head from the mean-pooled one; MoA's per-head spans are static masks, and the
Routing Transformer's k-means clusters another kind of table, neither built here. As Einsums
(blocks of QB queries and KB keys):

    QP[h,e,i]  = sum(qb) Q[h,e,i*QB+qb] where i*QB + qb < P
    QM[h,e,i]  = QP[h,e,i] / min(QB, P - i*QB)                   pooled queries (block means)
    KM[g,e,j]  = ... K[g,e,j*KB+kb] ...                          pooled keys, the same way
    S[i,j]     = QM[h,e,i] * KM[h//R,e,j]                        block affinity, all heads
    S2[i,j2]   = S[i,j] where j == j2                            S along a second block index
    CNT[i,j]   = sum(j2) 1 where S2[i,j2] > S[i,j] or S2[i,j2] == S[i,j] and j2 < j
    BLOCKS[i,j] = CNT[i,j] < k                                   the top k of each row
    QK[h,m,p]  = Q[h,e,p] * K[h//R,e,m] * rsqrt(E) where BLOCKS[p//64, m//64] != 0 else -inf
    ...                                                          softmax attention

Top-k is not a contraction; it is stated exactly as a count: key block j is kept when fewer
than k blocks beat it (a higher score, or the same score and a lower index, so exactly k are
kept, ties going to the lower index as a stable sort's would). That costs I*J^2 comparisons,
against the attention's O(P*M*E), and keeps the whole variant in the IR, the text form and the
reference interpreter. `causal` (SeerAttention on decoders) is self-attention (P = M,
so that query block i and key block i cover the same tokens): it scores only earlier blocks
(j < i), keeps the top k of those, always keeps the diagonal block, and masks m <= p. MoBA
(Lu et al. 2025) gates the same way per query token, not per query block: each query scores
the key blocks' means; a table per query block stands in for it here.

The cascade holds both stages, so `attncc analyze routing` reports both. The tiled backends run
it in two (`routing_stages`, see attncc.frontends.zoo.stages): their tile lists come from the
runtime classifier, which reads the block table's data before the kernel starts and decides
each tile exactly (`BLOCKS[p // 64, m // 64] != 0`: any/all of the table over the tile); the
kernel then visits only the chosen key blocks. The shared choice (BiFormer's: affinity summed
over heads) gives one table for the whole grid. `per_head=True` chooses per query head
(SeerAttention's heads choose apart): the table gains a head index, and the classifier decides
tiles per head (`BLOCKS[h, p // 64, m // 64]`). Triton's programs, one per head and query
tile, visit each head's own blocks; NumPy, which runs every head of a query tile at once,
visits the union of the heads' blocks and masks the rest. There is no batch rank: routing
depends on each sequence's content and the table is per sequence, so a batch is one call per
sequence.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import sympy

from attncc.frontends.builder import CascadeBuilder, Index, TensorRef, Value, minimum, value
from attncc.frontends.library import AttentionFrame, declare_heads, softmax_3pass
from attncc.frontends.zoo.softmax import declare_operands
from attncc.frontends.zoo.stages import Cut, staged
from attncc.ir import Cascade, DType


def routing(
    *,
    block: int = 64,
    top_k: int = 4,
    causal: bool = False,
    per_head: bool = False,
    gqa_group: int | None = None,
    head_dim: int | None = None,
    value_dim: int | None = None,
) -> Cascade:
    """Routed block-sparse attention (module docstring): Q[h,e,p], K[g,e,m], V[g,f,m] (g = h
    without `gqa_group`), outputs AV[h,f,p] and the block table BLOCKS[i,j] (BLOCKS[h,i,j]
    with `per_head`) of `block`-token blocks, `top_k` key blocks per query block; `causal`
    is self-attention (rank P = M)."""
    for name, number in (("block", block), ("top_k", top_k)):
        if isinstance(number, bool) or not isinstance(number, int) or number < 1:
            raise ValueError(f"routing: {name} must be a positive integer, got {number!r}")
    b = CascadeBuilder("routing")
    heads = declare_heads(b, batch=None, gqa_group=gqa_group)
    e, f, m = b.rank("E", head_dim), b.rank("F", value_dim), b.rank("M")
    # Causal routing keeps the diagonal block j == i: query block i is key block i.
    p = b.rank("P", b.size("M") if causal else None)
    x = replace(declare_operands(b, heads, e=e, f=f, m=m, p=p), causal=causal)
    blocks = _blocks(b, block)
    table = heads.query[-1:] if per_head else ()
    b.output("AV", [*heads.query, x.f, x.p])
    b.output("BLOCKS", [*table, blocks.i, blocks.j], DType.I32)
    chosen = _scores(b, x, blocks, table, top_k=top_k)
    softmax_3pass(x, also=chosen[(*table, x.p // block, x.m // block)] != 0)
    return b.build()


@dataclass(frozen=True)
class _Blocks:
    """Query blocks i of QB queries, key blocks j (and j2) of KB keys, offsets qb and kb."""

    i: Index
    j: Index
    j2: Index
    qb: Index
    kb: Index


def _blocks(b: CascadeBuilder, block: int) -> _Blocks:
    """Ranks of blocks and of offsets in them: plain ranks, not partitions of P and M, so
    that the pass analysis still reports the attention's passes over M itself."""
    qb, kb = b.rank("QB", block), b.rank("KB", block)
    count = {
        name: Index(sympy.ceiling(b.size(r).expr / block)) for name, r in (("I", "P"), ("J", "M"))
    }
    return _Blocks(
        b.rank("I", count["I"]), b.rank("J", count["J"]), b.rank("J2", count["J"]), qb, kb
    )


def _scores(
    b: CascadeBuilder, x: AttentionFrame, blocks: _Blocks, table: tuple[Index, ...], *, top_k: int
) -> TensorRef:
    """The scoring stage: pooled Q and K, block affinities S, and the block table (the
    earlier blocks' top k and the diagonal when `x` is causal)."""
    hq, hk, hr, e, causal = x.heads.query, x.heads.kv, x.heads.read, x.e, x.causal
    i, j, j2 = blocks.i, blocks.j, blocks.j2
    qb, kb = b.size("QB"), b.size("KB")
    # Block means; the last block of a ragged length holds fewer positions.
    query, key = i * qb + blocks.qb, j * kb + blocks.kb
    QP = b.let("QP", [*hq, e, i], x.q[(*hq, e, query)], where=query < b.size("P"))
    QM = b.let("QM", [*hq, e, i], QP[(*hq, e, i)] / minimum(qb, value(b.size("P")) - value(i) * qb))
    KP = b.let("KP", [*hk, e, j], x.k[(*hk, e, key)], where=key < b.size("M"))
    KM = b.let("KM", [*hk, e, j], KP[(*hk, e, j)] / minimum(kb, value(b.size("M")) - value(j) * kb))
    S = b.let("S", [*table, i, j], QM[(*hq, e, i)] * KM[(*hr, e, j)])
    S2 = b.let("S2", [*table, i, j2], S[(*table, i, j)], where=j == j2)
    mine, other = S[(*table, i, j)], S2[(*table, i, j2)]
    beats = (other > mine) | ((other == mine) & (j2 < j))
    if causal:
        beats = (j2 < i) & beats
    CNT = b.let("CNT", [*table, i, j], value(1), reduce="sum", where=beats)
    kept: Value = CNT[(*table, i, j)] < top_k
    if causal:
        kept = (j == i) | ((j < i) & kept)
    return b.let("BLOCKS", [*table, i, j], kept)


routing_stages = staged(routing, Cut(("BLOCKS",), kernel=False), Cut(("AV",), given=("BLOCKS",)))
"""`routing(**options)` as it runs on the tiled backends: the scoring stage (the reference
interpreter, float64), then the attention with the block table as an input."""
