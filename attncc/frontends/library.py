"""The library of named cascades: the reference attention cascades and the paper's toys.

Attention cascades follow FuseMax (MICRO 2024) with Q[e,p], K[e,m], V[f,m]: P is the query
sequence, M the key/value sequence, E and F the head dimensions. `batched` adds batch and head
ranks in front (Q[b,h,e,p]); `gqa_group` makes `gqa_group` query heads share one key/value
head (K[b,g,e,m] read as K[b,h//R,e,m]). `causal` masks key m from query p unless m <= p
(scaled_dot_product_attention's is_causal); `mask` is any predicate over key position m and
query position p (`attncc.frontends.masks`). `score` (a ScoreMod) changes the scores before
the softmax: soft-capping, ALiBi, an additive bias, a relative-position table. Sizes left as
None stay symbolic.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace

from attncc.frontends.builder import (
    CascadeBuilder,
    Index,
    TensorRef,
    Value,
    exp,
    exp2,
    log,
    maximum,
    rsqrt,
    select,
    sigmoid,
    tanh,
)
from attncc.ir import Access, Call, Cascade, DType, Expr, substitute, walk


@dataclass(frozen=True)
class ScoreMod:
    """Changes to the score s = Q·K * scale before the softmax (or sigmoid) reads it.

    In this order: s gains the additive terms that are on, ALiBi's, then BIAS's, then REL's,
    and is then soft-capped; masks (causal, mask=) apply last, to the result.

    - `softcap`: s -> softcap * tanh(s / softcap) (Gemma 2, Grok-1): scores stay inside
      (-softcap, softcap).
    - `alibi`: s += slope_h * (m - p) with slope_h = 2^(-8 (h+1) / H) for query head h of H
      (Press et al., ALiBi). That is the paper's formula for H a power of two; it is used as
      is for any H (ALiBi's reference code builds other head counts from the neighbouring
      powers of two instead). Needs head ranks (batched=True or gqa_group).
    - `bias`: s += BIAS[*query heads, p, m], an input in the layout of scaled_dot_product_
      attention's float attn_mask (query before key), so it passes without a transpose.
    - `rel_bias`: s += REL[h, m - p + P - 1], a learned relative-position table with one entry
      per offset m - p (Music Transformer / T5, without T5's buckets): rank R of size
      M + P - 1, one row per query head when there are heads (REL[h, r], shared by the batch),
      else REL[r].
    """

    softcap: float | None = None
    alibi: bool = False
    bias: bool = False
    rel_bias: bool = False

    def __post_init__(self) -> None:
        if self.softcap is not None and not self.softcap > 0:
            raise ValueError(f"softcap must be positive, got {self.softcap}")

    @property
    def changes_scores(self) -> bool:
        return self.softcap is not None or self.alibi or self.bias or self.rel_bias


@dataclass(frozen=True)
class Heads:
    """Head indices: `query` index query-side tensors (b, h), `kv` key/value tensors by their
    own head ranks (b, g), and `read` key/value tensors from a query head's point of view
    (b, h//R under GQA, the same as `kv` otherwise). All empty without head ranks."""

    query: tuple[Index, ...] = ()
    kv: tuple[Index, ...] = ()
    read: tuple[Index, ...] = ()


def declare_heads(
    b: CascadeBuilder,
    *,
    batch: Index | None,
    heads: str = "H",
    groups: str = "G",
    gqa_group: int | None = None,
) -> Heads:
    """Declare query heads `heads` and, under GQA (`gqa_group` query heads per key/value head;
    MQA is a single group, G = 1), key/value groups `groups` first (H = R*G); `batch` leads
    every head tuple when given."""
    lead = () if batch is None else (batch,)
    if gqa_group is not None and (
        isinstance(gqa_group, bool) or not isinstance(gqa_group, int) or gqa_group < 1
    ):
        raise ValueError(f"gqa_group must be a positive integer, got {gqa_group!r}")
    # One query head per key/value head is multi-head attention: K is read at h itself (a
    # rank G equal to H would be a second name for the same rank).
    if gqa_group is None or gqa_group == 1:
        h = b.rank(heads)
        return Heads((*lead, h), (*lead, h), (*lead, h))
    g = b.rank(groups)
    h = b.rank(heads, gqa_group * b.size(groups))
    return Heads((*lead, h), (*lead, g), (*lead, h // gqa_group))


@dataclass(frozen=True)
class AttentionFrame:
    """What one attention reads, in `builder`: Q[*query heads, e, p], K[*kv heads, e, m],
    V[*kv heads, f, m], the score modification `mod` with its inputs (BIAS, REL), and the
    mask: key m hidden from query p where `mask` (over m and p) is false, and unless m <= p
    when `causal`. `attention_frame` declares a whole cascade's; a cascade holding more than
    one attention (attncc.frontends.zoo) builds one per attention in the same builder."""

    builder: CascadeBuilder
    heads: Heads
    q: TensorRef
    k: TensorRef
    v: TensorRef
    e: Index
    f: Index
    m: Index
    p: Index
    scale: float | None = None
    mod: ScoreMod = ScoreMod()
    bias: TensorRef | None = None
    rel: TensorRef | None = None
    causal: bool = False
    mask: Expr | None = None

    def scores(self, key: Value) -> Value:
        """Q·K scaled: by `scale`, or by 1/sqrt(E) when no scale is given."""
        product = self.q[(*self.heads.query, self.e, self.p)] * key
        if self.scale is None:
            return product * rsqrt(self.builder.size("E"))
        return product if self.scale == 1.0 else product * self.scale

    def emit_scores(
        self,
        names: tuple[str, str],
        tiles: tuple[Index, ...],
        key: Index,
        k: Value,
        also: Value | None = None,
    ) -> TensorRef:
        """The scores `names[0]`[*heads, *tiles, p] = scores(k), for keys at position `key`
        (m, or m1*M0 + m0 over key tiles); when `mod` changes them, the modified and masked
        scores `names[1]`, else `names[0]` masked. `also` hides more keys: a predicate over
        the scores' iteration space (a block table the cascade computes). Returns the tensor
        the softmax reads.

        The modification is an Einsum of its own because Q·K sums over e: the bias terms and
        tanh apply once to the sum, not to each product."""
        h, p = self.heads.query, self.p
        where = causal_filter(self.causal, self.mask, key, p, also)
        fill = None if where is None else -math.inf
        if not self.mod.changes_scores:
            return self.builder.let(
                names[0], [*h, *tiles, p], self.scores(k), where=where, fill=fill
            )
        raw = self.builder.let(names[0], [*h, *tiles, p], self.scores(k))
        s = raw[(*h, *tiles, p)]
        if self.mod.alibi:
            s = s + self._alibi_slope() * (key.value() - p.value())
        if self.bias is not None:
            s = s + self.bias[(*h, p, *tiles)]
        if self.rel is not None:
            s = s + self.rel[(*self._head, key - p + self.builder.size("P") - 1)]
        if self.mod.softcap is not None:
            s = self.mod.softcap * tanh(s / self.mod.softcap)
        return self.builder.let(names[1], [*h, *tiles, p], s, where=where, fill=fill)

    @property
    def _head(self) -> tuple[Index, ...]:
        """The query head index (h), or nothing without head ranks."""
        return self.heads.query[1:]

    def _alibi_slope(self) -> Value:
        """ALiBi's slope of query head h, 2^(-8 (h+1) / H), from h's coordinate."""
        (h,) = self._head
        return exp2(-8.0 * (h + 1).value() / self.builder.size("H").value())

    def out(self, *indices: Index) -> tuple[Index, ...]:
        return (*self.heads.query, *indices)


def attention_frame(
    name: str,
    *,
    head_dim: int | None = None,
    value_dim: int | None = None,
    scale: float | None = None,
    batched: bool = False,
    gqa_group: int | None = None,
    causal: bool = False,
    mask: Expr | None = None,
    score: ScoreMod | None = None,
) -> AttentionFrame:
    """A new cascade `name` with one attention's declarations (module docstring): batch and
    head ranks when `batched` or under GQA, E, F, M, P, the inputs Q, K, V, the mask's id
    tensors, BIAS and REL for `score`, and the output AV[*query heads, f, p]."""
    mod = score or ScoreMod()
    b = CascadeBuilder(name)
    heads = Heads()
    if batched or gqa_group is not None:
        heads = declare_heads(b, batch=b.rank("B"), gqa_group=gqa_group)
    elif mod.alibi:
        raise ValueError(
            "ALiBi gives each query head its own slope, and this cascade has no head rank: "
            "pass batched=True or gqa_group"
        )
    e, f = b.rank("E", head_dim), b.rank("F", value_dim)
    m, p = b.rank("M"), b.rank("P")
    q = b.input("Q", [*heads.query, e, p])
    k = b.input("K", [*heads.kv, e, m])
    v = b.input("V", [*heads.kv, f, m])
    for tensor, position in _mask_ids(mask, {"m": m, "p": p}).items():
        b.input(tensor, [position], DType.I32)
    bias = b.input("BIAS", [*heads.query, p, m]) if mod.bias else None
    rel = None
    if mod.rel_bias:
        # One entry per offset m - p, from -(P - 1) to M - 1.
        r = b.rank("R", b.size("M") + b.size("P") - 1)
        rel = b.input("REL", [*heads.query[1:], r])
    b.output("AV", [*heads.query, f, p])
    return AttentionFrame(b, heads, q, k, v, e, f, m, p, scale, mod, bias, rel, causal, mask)


@dataclass(frozen=True)
class FrameOptions:
    """The options every library attention cascade takes (module docstring), in the order of
    the cascades' signatures, so that each builds its frame from one positional call."""

    head_dim: int | None = None
    value_dim: int | None = None
    scale: float | None = None
    causal: bool = False
    mask: Expr | None = None
    batched: bool = False
    gqa_group: int | None = None
    score: ScoreMod | None = None

    def frame(self, name: str) -> AttentionFrame:
        """`attention_frame(name, ...)` with these options."""
        return attention_frame(name, **vars(self))


def _mask_ids(mask: Expr | None, positions: dict[str, Index]) -> dict[str, Index]:
    """The id tensors a mask reads (`KDOC[m]`, `QDOC[p]`) with the position each is read at:
    inputs of the cascade, one id per key or query position."""
    found: dict[str, Index] = {}
    for node in walk(mask) if mask is not None else ():
        if not isinstance(node, Access):
            continue
        index = str(node.indices[0]) if len(node.indices) == 1 else None
        if index not in positions:
            raise ValueError(
                f"the mask reads {node.tensor} at {', '.join(map(str, node.indices))}; library "
                "cascades take masks reading ids at the key or the query position (KDOC[m])"
            )
        found[node.tensor] = positions[index]
    return found


def causal_filter(
    causal: bool, mask: Expr | None, key: Index, query: Index, also: Value | None = None
) -> Value | None:
    """Where key `key` is visible to query `query`: key <= query when `causal`, and `mask` (a
    predicate over key position m and query position p, see attncc.frontends.masks) and
    `also` (over the caller's indices) where given; None when every key is visible."""
    conditions = [substitute(mask, {"m": key.expr, "p": query.expr})] if mask is not None else []
    if causal:
        conditions.insert(0, (key <= query).expr)
    if also is not None:
        conditions.append(also.expr)
    if not conditions:
        return None
    return Value(conditions[0] if len(conditions) == 1 else Call("and", tuple(conditions)))


def softmax_3pass(
    frame: AttentionFrame, *, output: str = "AV", suffix: str = "", also: Value | None = None
) -> TensorRef:
    """FuseMax Cascade 4 into `frame`'s builder, writing `output`[*query heads, f, p]:

        QK[m,p] = Q[e,p] * K[e,m] * scale     where visible else -inf  (S when modified)
        GM[p]   = max(m) QK[m,p]
        SN[m,p] = exp(QK[m,p] - GM[p])
        SD[p]   = SN[m,p]
        A[m,p]  = SN[m,p] / SD[p]
        AV[f,p] = A[m,p] * V[f,m]

    Temporaries are named as above plus `suffix` (one attention of several in a cascade);
    `also` hides more keys (see AttentionFrame.emit_scores)."""
    b, h, r, f, m, p = frame.builder, frame.heads.query, frame.heads.read, frame.f, frame.m, frame.p
    names = (f"QK{suffix}", f"S{suffix}")
    S = frame.emit_scores(names, (m,), m, frame.k[(*r, frame.e, m)], also)
    GM = b.let(f"GM{suffix}", [*h, p], S[(*h, m, p)], reduce="max")
    SN = b.let(f"SN{suffix}", [*h, m, p], exp(S[(*h, m, p)] - GM[(*h, p)]))
    SD = b.let(f"SD{suffix}", [*h, p], SN[(*h, m, p)])
    A = b.let(f"A{suffix}", [*h, m, p], SN[(*h, m, p)] / SD[(*h, p)])
    return b.let(output, frame.out(f, p), A[(*h, m, p)] * frame.v[(*r, f, m)])


def attention_3pass(
    *,
    head_dim: int | None = None,
    value_dim: int | None = None,
    scale: float | None = None,
    causal: bool = False,
    mask: Expr | None = None,
    batched: bool = False,
    gqa_group: int | None = None,
    score: ScoreMod | None = None,
    lse: bool = False,
) -> Cascade:
    """Softmax attention as written (FuseMax Cascade 4): max, then exp and sum, then divide.
    `score` modifies the scores (see ScoreMod); `lse` adds the output LSE[*heads, p], the
    log-sum-exp of each query's scores (what a backward pass or a split-KV merge needs)."""
    options = FrameOptions(head_dim, value_dim, scale, causal, mask, batched, gqa_group, score)
    a = options.frame("attention_3pass")
    softmax_3pass(a)
    if lse:
        _log_sum_exp(a)
    return a.builder.build()


def attention_2pass(
    *,
    head_dim: int | None = None,
    value_dim: int | None = None,
    scale: float | None = None,
    causal: bool = False,
    mask: Expr | None = None,
    batched: bool = False,
    gqa_group: int | None = None,
    score: ScoreMod | None = None,
    lse: bool = False,
) -> Cascade:
    """Attention with the division deferred past the AV contraction (FlashAttention-2's
    reassociation): F*P divisions instead of M*P, and one pass fewer. `score` and `lse` as
    in attention_3pass."""
    options = FrameOptions(head_dim, value_dim, scale, causal, mask, batched, gqa_group, score)
    a = options.frame("attention_2pass")
    b, h, hk, e, f, m, p = a.builder, a.heads.query, a.heads.read, a.e, a.f, a.m, a.p
    S = a.emit_scores(("QK", "S"), (m,), m, a.k[(*hk, e, m)])
    GM = b.let("GM", [*h, p], S[(*h, m, p)], reduce="max")
    SN = b.let("SN", [*h, m, p], exp(S[(*h, m, p)] - GM[(*h, p)]))
    SD = b.let("SD", [*h, p], SN[(*h, m, p)])
    SNV = b.let("SNV", [*h, f, p], SN[(*h, m, p)] * a.v[(*hk, f, m)])
    b.let("AV", a.out(f, p), SNV[(*h, f, p)] / SD[(*h, p)])
    if lse:
        _log_sum_exp(a)
    return b.build()


def _log_sum_exp(a: AttentionFrame) -> None:
    """LSE[*heads, p] = log(sum_m exp(s)) = GM + log(SD), since SD sums exp(s - GM)."""
    h, p = a.heads.query, a.p
    GM, SD = TensorRef("GM"), TensorRef("SD")
    a.builder.output("LSE", a.out(p))
    a.builder.let("LSE", a.out(p), GM[(*h, p)] + log(SD[(*h, p)]))


def attention_1pass(
    *,
    head_dim: int | None = None,
    value_dim: int | None = None,
    tile: int | None = 64,
    scale: float | None = None,
    causal: bool = False,
    mask: Expr | None = None,
    batched: bool = False,
    gqa_group: int | None = None,
    score: ScoreMod | None = None,
) -> Cascade:
    """FuseMax Cascade 5 (FlashAttention-2's cascade): M split into M1 tiles of M0 keys, a
    running max RM, and a running denominator RD and numerator RNV rescaled by PRM when the
    max grows. The last tile may be partial (M need not be a multiple of the tile). Unlike the
    paper's cascade, SLN and PRM are guarded for tiles before the first visible key. `score`
    as in attention_3pass; BIAS is read in tiles, like K and V."""
    options = FrameOptions(head_dim, value_dim, scale, causal, mask, batched, gqa_group, score)
    a = options.frame("attention_1pass")
    b, h, hk, kv, e, f, p = a.builder, a.heads.query, a.heads.read, a.heads.kv, a.e, a.f, a.p
    m0 = b.rank("M0", tile)
    m1 = b.partition("M", "M1", "M0")
    key = m1 * b.size("M0") + m0

    BK = b.let("BK", [*kv, e, m1, m0], a.k[(*kv, e, key)])
    BV = b.let("BV", [*kv, f, m1, m0], a.v[(*kv, f, key)])
    if a.bias is not None:
        a = replace(a, bias=b.let("BBIAS", [*h, p, m1, m0], a.bias[(*h, p, key)]))
    BS = a.emit_scores(("BQK", "BS"), (m1, m0), key, BK[(*hk, e, m1, m0)])
    LM = b.let("LM", [*h, m1, p], BS[(*h, m1, m0, p)], reduce="max")
    RM, RD, RNV = TensorRef("RM"), TensorRef("RD"), TensorRef("RNV")
    b.let("RM", [*h, m1 + 1, p], maximum(RM[(*h, m1, p)], LM[(*h, m1, p)]), init=-math.inf)
    # While every key so far is masked RM is -inf, and exp(-inf - -inf) would be NaN: the
    # guards keep SLN at 0 and PRM at 1 until a key is visible (a no-op without masks).
    current = RM[(*h, m1 + 1, p)]
    empty = current == -math.inf
    SLN = b.let("SLN", [*h, m1, m0, p], select(empty, 0.0, exp(BS[(*h, m1, m0, p)] - current)))
    SLD = b.let("SLD", [*h, m1, p], SLN[(*h, m1, m0, p)])
    SLNV = b.let("SLNV", [*h, f, m1, p], SLN[(*h, m1, m0, p)] * BV[(*hk, f, m1, m0)])
    PRM = b.let("PRM", [*h, m1, p], select(empty, 1.0, exp(RM[(*h, m1, p)] - current)))
    SPD = b.let("SPD", [*h, m1, p], RD[(*h, m1, p)] * PRM[(*h, m1, p)])
    b.let("RD", [*h, m1 + 1, p], SLD[(*h, m1, p)] + SPD[(*h, m1, p)], init=0.0)
    SPNV = b.let("SPNV", [*h, f, m1, p], RNV[(*h, f, m1, p)] * PRM[(*h, m1, p)])
    b.let("RNV", [*h, f, m1 + 1, p], SLNV[(*h, f, m1, p)] + SPNV[(*h, f, m1, p)], init=0.0)
    last = b.size("M1")
    b.let("AV", a.out(f, p), RNV[(*h, f, last, p)] / RD[(*h, last, p)])
    return b.build()


def attention_sigmoid(
    *,
    head_dim: int | None = None,
    value_dim: int | None = None,
    scale: float | None = None,
    causal: bool = False,
    mask: Expr | None = None,
    batched: bool = False,
    gqa_group: int | None = None,
    score: ScoreMod | None = None,
    bias_value: float | None = None,
) -> Cascade:
    """Sigmoid attention (Ramapuram et al. 2024, "Theory, Analysis, and Best Practices for
    Sigmoid Self-Attention"): AV[f,p] = sum_m sigmoid(s[m,p] + b) * V[f,m], with no
    normalization over m and so one pass. b is `bias_value`, or -log(M) by default (the
    paper's choice: for scores near 0, sigmoid(s - log M) ~ e^s / M, so the weights sum to
    about 1, as softmax's do). Masked scores are -inf, and sigmoid(-inf) = 0: a hidden key
    adds nothing to AV, as in softmax."""
    options = FrameOptions(head_dim, value_dim, scale, causal, mask, batched, gqa_group, score)
    a = options.frame("attention_sigmoid")
    b, h, hk, e, f, m, p = a.builder, a.heads.query, a.heads.read, a.e, a.f, a.m, a.p
    S = a.emit_scores(("QK", "S"), (m,), m, a.k[(*hk, e, m)])
    s = S[(*h, m, p)]
    SG = b.let(
        "SG", [*h, m, p], sigmoid(s - log(b.size("M")) if bias_value is None else s + bias_value)
    )
    b.let("AV", a.out(f, p), SG[(*h, m, p)] * a.v[(*hk, f, m)])
    return b.build()


def _toy_frame(name: str, size: int | None) -> tuple[CascadeBuilder, Index, TensorRef, TensorRef]:
    b = CascadeBuilder(name)
    k = b.rank("K", size)
    A, B = b.input("A", [k]), b.input("B", [k])
    b.output("Z", [])
    return b, k, A, B


def toy_cascade1(*, size: int | None = None) -> Cascade:
    """Y = A[k]·B[k]; Z = Y·A[k] (summed over k). Z needs Y, which needs all of A: 2 passes."""
    b, k, A, B = _toy_frame("toy_cascade1", size)
    Y = b.let("Y", [], A[k] * B[k])
    b.let("Z", [], Y[()] * A[k])
    return b.build()


def toy_cascade2(*, size: int | None = None) -> Cascade:
    """Toy 1 reassociated: X = sum of A[k] in the same pass as Y, then Z = Y·X: 1 pass."""
    b, k, A, B = _toy_frame("toy_cascade2", size)
    Y = b.let("Y", [], A[k] * B[k])
    X = b.let("X", [], A[k])
    b.let("Z", [], Y[()] * X[()])
    return b.build()


def toy_cascade3(*, size: int | None = None) -> Cascade:
    """Toy 1 as running values over k (the paper's iterative form): RY[k+1] = RY[k] + A[k]B[k]
    and RZ[k+1] = RZ[k]·RY[k+1]/RY[k] + RY[k+1]·A[k], so RZ[k] = RY[k]·(A[0] + ... + A[k-1]).
    The rescaling divides by RY[k], which is 0 at k = 0 where RZ is 0 as well; the select
    keeps that first step 0 (the paper's divide touches only points with a nonzero divisor)."""
    b, k, A, B = _toy_frame("toy_cascade3", size)
    RY, RZ = TensorRef("RY"), TensorRef("RZ")
    b.let("RY", [k + 1], RY[k] + A[k] * B[k], init=0.0)
    rescaled = select(RY[k] == 0, 0.0, RZ[k] * RY[k + 1] / RY[k])
    b.let("RZ", [k + 1], rescaled + RY[k + 1] * A[k], init=0.0)
    b.let("Z", [], RZ[b.size("K")])
    return b.build()


LIBRARY: dict[str, Callable[..., Cascade]] = {
    f.__name__: f
    for f in (
        attention_3pass,
        attention_2pass,
        attention_1pass,
        attention_sigmoid,
        toy_cascade1,
        toy_cascade2,
        toy_cascade3,
    )
}
"""Every named cascade, called with keyword options (see each function)."""
