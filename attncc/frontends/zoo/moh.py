"""Mixture-of-Head attention (MoH; Jin et al. 2024, "MoH: Multi-Head Attention as Mixture-of-Head
Attention"): each token weighs the heads' outputs with a router, and only its top-k routed heads
(plus the shared heads, always on) get a nonzero weight.

MoH(x) = sum_i g_i H^i W_O^i, with, for hs shared heads and the routed rest (the paper's eq. 5),

    g_i = a_1 softmax(W_s x)_i                   i < hs
    g_i = a_2 softmax(W_r x)_i  if i in topk(W_r x), else 0         (softmax over routed heads)
    [a_1, a_2] = softmax(W_h x)

The router reads the token features X[b,d,p]; WG[h,d] stacks W_s (rows h < hs) on W_r, WA[c,d]
is W_h (C = 2). Top-k is a count, as in `routing`: routed head h is kept when fewer than k
routed heads beat it (higher logit, or equal and lower index), with a copy LG2 of the logits
along a second head index. The cascade's outputs are HW[b,h,p] (the weights g) and O[b,h,f,p] =
HW[b,h,p] * AV[b,h,f,p], each head's output weighted: the sum over heads with W_O^i is the
output projection of the concatenated heads, a matrix product after attention.

The tiled backends run the router as a stage of its own in the reference interpreter (see
attncc.frontends.zoo.stages) and the attention with HW as an input: `moh_stages`.

What is skipped. A head with weight 0 for a query sees no key: the attention's mask is
`HW[b,h,p] != 0` (and `m <= p` when causal), so its row of AV is 0/0 as written, and the
weighted output O = select(HW != 0, HW * AV, 0) is exactly 0 there on every backend. The
block-sparse pass declares the mask: it reads HW at the grid indices (b, h), and the tiles are
classified per (batch, head) when the attention runs (attncc.analysis.data_masks). Triton
walks one tile list per (batch, head, query tile): a head with weight 0 for every query of a
64-query tile visits no key tile there (nor, when causal, the tiles above the diagonal). NumPy
and the reference interpreter loop over the union of those lists, so they skip only the tiles
every (batch, head) skips: the causal ones, and a query tile only where every head has weight
0 for all its queries, which the shared heads (always on) rule out. For token-level routing
Triton's per-head skip is rare: with top-2 of 6 routed heads, a head is unchosen by all 64
queries of a tile with probability (4/6)^64 ~ 5e-12 for independent tokens; it pays when
neighbouring tokens route alike (tests/test_zoo_moh.py builds such a tile).
"""

from __future__ import annotations

from dataclasses import replace

from attncc.frontends.builder import (
    CascadeBuilder,
    Index,
    TensorRef,
    Value,
    exp,
    select,
    value,
)
from attncc.frontends.library import Heads, declare_heads, softmax_3pass
from attncc.frontends.zoo.softmax import declare_operands
from attncc.frontends.zoo.stages import Cut, staged
from attncc.ir import Cascade


def moh(
    *,
    shared_heads: int = 2,
    top_k: int = 2,
    causal: bool = False,
    gqa_group: int | None = None,
    head_dim: int | None = None,
    value_dim: int | None = None,
    model_dim: int | None = None,
) -> Cascade:
    """Mixture-of-Head attention (module docstring) with batch B, heads H (`shared_heads` of
    them always on, `top_k` of the rest chosen per token), GQA with `gqa_group`, `causal`
    masking, head dimensions `head_dim`/`value_dim` and router input dimension `model_dim`."""
    for name, number, low in (("shared_heads", shared_heads, 0), ("top_k", top_k, 1)):
        if isinstance(number, bool) or not isinstance(number, int) or number < low:
            raise ValueError(f"moh: {name} must be an integer >= {low}, got {number!r}")
    b = CascadeBuilder("moh")
    batch = b.rank("B")
    heads = declare_heads(b, batch=batch, gqa_group=gqa_group)
    e, f, m, p = b.rank("E", head_dim), b.rank("F", value_dim), b.rank("M"), b.rank("P")
    d, c = b.rank("D", model_dim), b.rank("C", 2)
    h2 = b.rank("H2", b.size("H"))
    h = heads.query[-1]
    b.input("X", [batch, d, p])
    b.input("WG", [h, d])
    b.input("WA", [c, d])
    x = replace(declare_operands(b, heads, e=e, f=f, m=m, p=p), causal=causal)
    b.output("O", [*heads.query, f, p])
    b.output("HW", [*heads.query, p])
    weights = _router(b, heads, (batch, d, p, c, h2), shared=shared_heads, top_k=top_k)
    hq = heads.query
    weight = weights[(*hq, p)]
    # Zero-weight heads see no key: the block-sparse pass skips them per (head, query tile).
    chosen = weight != 0
    AV = softmax_3pass(x, also=chosen)
    # Their rows of AV are 0/0 (NaN) as written; the weighted output there is 0.
    b.let("O", [*hq, f, p], select(chosen, weight * AV[(*hq, f, p)], 0.0))
    return b.build()


def _router(
    b: CascadeBuilder,
    heads: Heads,
    indices: tuple[Index, Index, Index, Index, Index],
    *,
    shared: int,
    top_k: int,
) -> TensorRef:
    """HW[b,h,p] = g_h: MoH's router on X (eq. 5), softmax per head group, top-k by count.
    `indices` are batch, model dimension, query, the balance's two entries and a second head."""
    batch, dd, p, c, h2 = indices
    h = heads.query[-1]
    X, WG, WA = TensorRef("X"), TensorRef("WG"), TensorRef("WA")
    LG = b.let("LG", [batch, h, p], WG[h, dd] * X[batch, dd, p])
    LA = b.let("LA", [batch, c, p], WA[c, dd] * X[batch, dd, p])
    # [a_1, a_2] = softmax over c of LA.
    AM = b.let("AM", [batch, p], LA[batch, c, p], reduce="max")
    AE = b.let("AE", [batch, c, p], exp(LA[batch, c, p] - AM[batch, p]))
    AS = b.let("AS", [batch, p], AE[batch, c, p])
    # A softmax within each group of heads: shared (h < hs) and routed.
    is_shared: Value = h < shared
    GS = b.let("GS", [batch, p], LG[batch, h, p], reduce="max", where=is_shared)
    GR = b.let("GR", [batch, p], LG[batch, h, p], reduce="max", where=~is_shared)
    top = select(is_shared, GS[batch, p], GR[batch, p])
    EG = b.let("EG", [batch, h, p], exp(LG[batch, h, p] - top))
    SS = b.let("SS", [batch, p], EG[batch, h, p], where=is_shared)
    SR = b.let("SR", [batch, p], EG[batch, h, p], where=~is_shared)
    # Top k of the routed heads: h is kept when fewer than k routed heads beat it.
    LG2 = b.let("LG2", [batch, h2, p], LG[batch, h, p], where=h == h2)
    mine, other = LG[batch, h, p], LG2[batch, h2, p]
    beats = (h2 >= shared) & ((other > mine) | ((other == mine) & (h2 < h)))
    CNT = b.let("CNT", [batch, h, p], value(1), reduce="sum", where=beats)
    # a_1 and a_2 are AE[b,0,p] / AS and AE[b,1,p] / AS.
    routed = AE[batch, 1, p] / AS[batch, p] * EG[batch, h, p] / SR[batch, p]
    weight = select(
        is_shared,
        AE[batch, 0, p] / AS[batch, p] * EG[batch, h, p] / SS[batch, p],
        select(CNT[batch, h, p] < top_k, routed, 0.0),
    )
    return b.let("HW", [*heads.query, p], weight)


moh_stages = staged(moh, Cut(("HW",), kernel=False), Cut(("O",), given=("HW",)))
"""`moh(**options)` as it runs on the tiled backends: the router (the reference interpreter,
float64), then the attention with the head weights HW as an input."""
