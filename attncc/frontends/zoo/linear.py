"""Linear attention (Katharopoulos et al. 2020, "Transformers are RNNs"): the softmax kernel
exp(q·k) replaced by phi(q)·phi(k) for a feature map phi, stated in the quadratic form a user
writes, with the layout of the library (Q[e,p], K[e,m], V[f,m], AV[f,p]):

    FQ[e,p] = phi(Q[e,p])
    FK[e,m] = phi(K[e,m])
    QK[m,p] = FQ[e,p] * FK[e,m]            where m <= p  (causal)
    QKV[f,p] = QK[m,p] * V[f,m]
    QKS[p] = QK[m,p]                       the normalizer, sum_m phi(q)·phi(k)
    AV[f,p] = QKV[f,p] / QKS[p]            AV = QK * V summed over m, without normalization

This form costs O(M*P); the `reassociate` pass turns it into phi(Q) (phi(K)^T V), O(M + P),
and `chunk-causal` does the same for the causal form in chunks (Lightning Attention-2).

Feature maps: `elu1` (elu(x) + 1, Katharopoulos et al.), `relu`, `identity` (Lightning
Attention, whose activation sits in the projections before it: TransNormerLLM, Qin et al.
2023) and `hedgehog` (Zhang et al. 2024, "The Hedgehog & the Porcupine"): a learned linear
map W of D rows per query head and its negation, exponentiated and concatenated,
phi(x) = [exp(W x), exp(-W x)], over a feature rank J = 2*D. Its projections are inputs:
WQ[*heads, d, e] for queries and WK[*heads, d, e] for keys.

Causal cascades are self-attention: the query rank is declared as long as the key rank
(`rank P = M`), which `chunk-causal` relies on (a query's chunk is a key chunk). Under GQA the
key features are formed per query head, from K read at h//R: the loop nests of the tiled
backends run per query head, and phi(K) per key/value head would be a value shared between
programs (Hedgehog's per-head projections need it per query head anyway).

Uses the library's private `_attention` (ranks, Q, K, V, heads, the output) and `_masked`
(the causal filter), so that heads and GQA follow the library exactly.
"""

from __future__ import annotations

from dataclasses import replace

from attncc.frontends.builder import Index, TensorRef, Value, exp, maximum, select
from attncc.frontends.library import _Attention, _attention, _masked
from attncc.ir import Cascade, size_symbol, verify

FEATURE_MAPS = ("elu1", "relu", "identity", "hedgehog")


def linear_attention(
    *,
    feature_map: str = "elu1",
    normalize: bool = True,
    causal: bool = False,
    head_dim: int | None = None,
    value_dim: int | None = None,
    feature_dim: int | None = None,
    batched: bool = False,
    gqa_group: int | None = None,
) -> Cascade:
    """Linear attention as written (module docstring). `feature_map` is one of FEATURE_MAPS;
    `feature_dim` is Hedgehog's D (rows of its projections; symbolic when None); `normalize`
    False drops the normalizer (Lightning Attention); `causal` hides key m from query p
    unless m <= p; `batched` and `gqa_group` as in the library's attention cascades."""
    return _linear(
        "linear_attention",
        feature_map=feature_map,
        normalize=normalize,
        causal=causal,
        head_dim=head_dim,
        value_dim=value_dim,
        feature_dim=feature_dim,
        batched=batched,
        gqa_group=gqa_group,
    )


def lightning_attention(
    *,
    feature_map: str = "identity",
    normalize: bool = False,
    causal: bool = True,
    head_dim: int | None = None,
    value_dim: int | None = None,
    feature_dim: int | None = None,
    batched: bool = False,
    gqa_group: int | None = None,
) -> Cascade:
    """Lightning Attention's cascade (Qin et al. 2024, Lightning Attention-1 and -2): causal
    linear attention without normalization, AV[f,p] = sum_{m <= p} (Q[.,p]·K[.,m]) V[f,m].
    Lightning Attention-1 computes it as tiles of this quadratic form (what the tiled backends
    run); Lightning Attention-2 splits it into chunks, a quadratic part inside each chunk and
    a running state across them (the `chunk-causal` pass). Options as in linear_attention."""
    return _linear(
        "lightning_attention",
        feature_map=feature_map,
        normalize=normalize,
        causal=causal,
        head_dim=head_dim,
        value_dim=value_dim,
        feature_dim=feature_dim,
        batched=batched,
        gqa_group=gqa_group,
    )


def _linear(
    name: str,
    *,
    feature_map: str,
    normalize: bool,
    causal: bool,
    head_dim: int | None,
    value_dim: int | None,
    feature_dim: int | None,
    batched: bool,
    gqa_group: int | None,
) -> Cascade:
    if feature_map not in FEATURE_MAPS:
        raise ValueError(f"feature_map {feature_map!r}: choose one of {', '.join(FEATURE_MAPS)}")
    if feature_dim is not None and feature_map != "hedgehog":
        raise ValueError(f"feature_dim is Hedgehog's projection size; {feature_map} has none")
    a = _attention(
        name,
        head_dim=head_dim,
        value_dim=value_dim,
        scale=1.0,
        batched=batched,
        gqa_group=gqa_group,
        causal=False,
        mask=None,
        score=None,
    )
    b, h, hk, f, m, p = a.builder, a.query_heads, a.kv_read, a.f, a.m, a.p
    if feature_map == "hedgehog":
        d = b.rank("D", feature_dim)
        j = b.rank("J", 2 * b.size("D"))
        WQ, WK = b.input("WQ", [*h[1:], d, a.e]), b.input("WK", [*h[1:], d, a.e])
        FQ = _hedgehog(a, "Q", WQ, a.q[(*h, a.e, p)], p, j)
        FK = _hedgehog(a, "K", WK, a.k[(*hk, a.e, m)], m, j)
        features = FQ[(*h, j, p)] * FK[(*h, j, m)]
    elif feature_map == "identity":
        features = a.q[(*h, a.e, p)] * a.k[(*hk, a.e, m)]
    else:
        FQ = b.let("FQ", [*h, a.e, p], _elementwise(feature_map, a.q[(*h, a.e, p)]))
        FK = b.let("FK", [*h, a.e, m], _elementwise(feature_map, a.k[(*hk, a.e, m)]))
        features = FQ[(*h, a.e, p)] * FK[(*h, a.e, m)]
    # The masked point is a zero weight (0 is the sum's default fill): nothing of key m
    # reaches query p, where softmax attention's -inf becomes 0 through exp.
    masking = {**_masked(causal, None, m, p), "fill": None} if causal else {}
    QK = b.let("QK", [*h, m, p], features, **masking)
    if normalize:
        QKV = b.let("QKV", [*h, f, p], QK[(*h, m, p)] * a.v[(*hk, f, m)])
        QKS = b.let("QKS", [*h, p], QK[(*h, m, p)])
        b.let("AV", a.out(f, p), QKV[(*h, f, p)] / QKS[(*h, p)])
    else:
        b.let("AV", a.out(f, p), QK[(*h, m, p)] * a.v[(*hk, f, m)])
    cascade = b.build()
    return _self_attention(cascade) if causal else cascade


def _elementwise(feature_map: str, x: Value) -> Value:
    if feature_map == "elu1":
        # elu(x) + 1 = x + 1 for x > 0, exp(x) otherwise: positive, so weights never cancel
        return select(x > 0, x + 1.0, exp(x))
    assert feature_map == "relu", "identity reads Q and K as they are"
    return maximum(x, 0.0)


def _hedgehog(
    a: _Attention, side: str, W: TensorRef, x: Value, position: Index, j: Index
) -> TensorRef:
    """phi(x)[j] = exp(+-(W x)[j % D]): the first D features exp(W x), the next D exp(-W x)."""
    b, h = a.builder, a.query_heads
    projected = b.let(f"H{side}", [*h, j, position], W[(*h[1:], j % b.size("D"), a.e)] * x)
    Wx = projected[(*h, j, position)]
    return b.let(f"F{side}", [*h, j, position], exp(select(j < b.size("D"), Wx, -Wx)))


def _self_attention(cascade: Cascade) -> Cascade:
    """`cascade` with the query rank as long as the key rank (rank P = M)."""
    ranks = tuple(replace(r, size=size_symbol("M")) if r.name == "P" else r for r in cascade.ranks)
    causal = replace(cascade, ranks=ranks)
    verify(causal)
    return causal
