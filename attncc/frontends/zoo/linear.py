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
phi(x) = [exp(W x + b), exp(-(W x + b))], over a feature rank J = 2*D. Its projections are
inputs: WQ[*heads, d, e] for queries and WK[*heads, d, e] for keys, and with `feature_bias`
the biases BIASQ[*heads, d] and BIASK[*heads, d] (without it, b = 0; not BK, the name the
`partition` pass gives the tiled view of K).

Causal cascades are self-attention: the query rank is declared as long as the key rank
(`rank P = M`), which `chunk-causal` relies on (a query's chunk is a key chunk). Under GQA the
key features are formed per query head, from K read at h//R: the loop nests of the tiled
backends run per query head, and phi(K) per key/value head would be a value shared between
programs (Hedgehog's per-head projections need it per query head anyway).

Heads, GQA and the causal filter are the library's (`attention_frame`, `causal_filter`), so
that they follow the library's cascades exactly.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from attncc.frontends.builder import Index, TensorRef, Value, exp, maximum, select
from attncc.frontends.library import AttentionFrame, attention_frame, causal_filter
from attncc.ir import Cascade, size_symbol, verify

FEATURE_MAPS = ("elu1", "relu", "identity", "hedgehog")

LIGHTNING_DEFAULTS: dict[str, object] = {
    "feature_map": "identity",
    "normalize": False,
    "causal": True,
}
"""Where Lightning Attention's options differ from linear_attention's."""


def linear_attention(
    *,
    feature_map: str = "elu1",
    normalize: bool = True,
    causal: bool = False,
    head_dim: int | None = None,
    value_dim: int | None = None,
    feature_dim: int | None = None,
    feature_bias: bool = False,
    batched: bool = False,
    gqa_group: int | None = None,
) -> Cascade:
    """Linear attention as written (module docstring). `feature_map` is one of FEATURE_MAPS;
    `feature_dim` is Hedgehog's D (rows of its projections; symbolic when None) and
    `feature_bias` adds Hedgehog's bias b; `normalize` False drops the normalizer (Lightning
    Attention); `causal` hides key m from query p unless m <= p; `batched` and `gqa_group`
    as in the library's attention cascades."""
    if feature_map not in FEATURE_MAPS:
        raise ValueError(f"feature_map {feature_map!r}: choose one of {', '.join(FEATURE_MAPS)}")
    if (feature_dim is not None or feature_bias) and feature_map != "hedgehog":
        raise ValueError(
            f"feature_dim and feature_bias are Hedgehog's projection size and bias; "
            f"{feature_map} has no projection"
        )
    a = attention_frame(
        "linear_attention",
        head_dim=head_dim,
        value_dim=value_dim,
        scale=1.0,
        batched=batched,
        gqa_group=gqa_group,
    )
    b, h, hk, f, m, p = a.builder, a.heads.query, a.heads.read, a.f, a.m, a.p
    features = _features(a, feature_map, feature_dim, feature_bias)
    # The masked point is a zero weight (0 is the sum's default fill): nothing of key m
    # reaches query p, where softmax attention's -inf becomes 0 through exp.
    QK = b.let("QK", [*h, m, p], features, where=causal_filter(causal, None, m, p))
    if normalize:
        QKV = b.let("QKV", [*h, f, p], QK[(*h, m, p)] * a.v[(*hk, f, m)])
        QKS = b.let("QKS", [*h, p], QK[(*h, m, p)])
        b.let("AV", a.out(f, p), QKV[(*h, f, p)] / QKS[(*h, p)])
    else:
        b.let("AV", a.out(f, p), QK[(*h, m, p)] * a.v[(*hk, f, m)])
    cascade = b.build()
    return _self_attention(cascade) if causal else cascade


def lightning_attention(**options: Any) -> Cascade:
    """Lightning Attention's cascade (Qin et al. 2024, Lightning Attention-1 and -2): causal
    linear attention without normalization, AV[f,p] = sum_{m <= p} (Q[.,p]·K[.,m]) V[f,m].
    Lightning Attention-1 computes it as tiles of this quadratic form (what the tiled backends
    run); Lightning Attention-2 splits it into chunks, a quadratic part inside each chunk and
    a running state across them (the `chunk-causal` pass). Options as in linear_attention,
    with LIGHTNING_DEFAULTS for those not given."""
    cascade = linear_attention(**{**LIGHTNING_DEFAULTS, **options})
    return replace(cascade, name="lightning_attention")


def _features(
    a: AttentionFrame, feature_map: str, feature_dim: int | None, feature_bias: bool
) -> Value:
    """phi(Q)·phi(K) at (heads, m, p): Q·K itself for `identity`, else through the feature
    Einsums FQ and FK (Hedgehog's from its projections HQ and HK)."""
    b, h, hk, e, m, p = a.builder, a.heads.query, a.heads.read, a.e, a.m, a.p
    if feature_map == "identity":
        return a.q[(*h, e, p)] * a.k[(*hk, e, m)]
    if feature_map != "hedgehog":
        FQ = b.let("FQ", [*h, e, p], _elementwise(feature_map, a.q[(*h, e, p)]))
        FK = b.let("FK", [*h, e, m], _elementwise(feature_map, a.k[(*hk, e, m)]))
        return FQ[(*h, e, p)] * FK[(*h, e, m)]
    d = b.rank("D", feature_dim)
    j = b.rank("J", 2 * b.size("D"))
    WQ, WK = b.input("WQ", [*h[1:], d, e]), b.input("WK", [*h[1:], d, e])
    BQ = b.input("BIASQ", [*h[1:], d]) if feature_bias else None
    BK = b.input("BIASK", [*h[1:], d]) if feature_bias else None
    FQ = _hedgehog(a, "Q", (WQ, BQ), a.q[(*h, e, p)], p, j)
    FK = _hedgehog(a, "K", (WK, BK), a.k[(*hk, e, m)], m, j)
    return FQ[(*h, j, p)] * FK[(*h, j, m)]


def _elementwise(feature_map: str, x: Value) -> Value:
    if feature_map == "elu1":
        # elu(x) + 1 = x + 1 for x > 0, exp(x) otherwise: positive, so weights never cancel
        return select(x > 0, x + 1.0, exp(x))
    assert feature_map == "relu", "identity reads Q and K as they are"
    return maximum(x, 0.0)


def _hedgehog(
    a: AttentionFrame,
    side: str,
    weights: tuple[TensorRef, TensorRef | None],
    x: Value,
    position: Index,
    j: Index,
) -> TensorRef:
    """phi(x)[j] = exp(+-(W x + b)[j % D]): the first D features exp(W x + b), the next D
    exp(-(W x + b)). The bias joins after the sum over e (HQ sums W x), in the exponent."""
    b, h = a.builder, a.heads.query
    (W, B), row = weights, j % b.size("D")
    projected = b.let(f"H{side}", [*h, j, position], W[(*h[1:], row, a.e)] * x)
    Wx = projected[(*h, j, position)]
    if B is not None:
        Wx = Wx + B[(*h[1:], row)]
    return b.let(f"F{side}", [*h, j, position], exp(select(j < b.size("D"), Wx, -Wx)))


def _self_attention(cascade: Cascade) -> Cascade:
    """`cascade` with the query rank as long as the key rank (rank P = M)."""
    ranks = tuple(replace(r, size=size_symbol("M")) if r.name == "P" else r for r in cascade.ranks)
    causal = replace(cascade, ranks=ranks)
    verify(causal)
    return causal
