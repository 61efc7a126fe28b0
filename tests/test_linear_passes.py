"""The linear-attention passes: `reassociate` ((phi(Q) phi(K)^T) V -> phi(Q) (phi(K)^T V)) and
`chunk-causal` (Lightning Attention-2's chunks), each checked by differential execution, with
what they must leave alone (softmax attention, masks, factors tying keys to queries, a query
projection summed over features) and the cost and pass counts `attncc analyze` reports,
derived by hand below; the query and the key ranks they and `partition` share (MoH's key is M,
not the heads its router maxes over).

The rewrites as text are tests/pass_cases/reassociate.ein and chunk_causal.ein."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import sympy

import attncc.passes.reassociate as reassociate_pass
from attncc.analysis import analyze_passes, cascade_cost, key_ranks, query_index, softmax_keys
from attncc.cli import main
from attncc.differential import mismatches
from attncc.errors import PassError
from attncc.frontends.library import (
    attention_1pass,
    attention_2pass,
    attention_3pass,
    attention_sigmoid,
    toy_cascade1,
)
from attncc.frontends.zoo.hilo import hilo
from attncc.frontends.zoo.linear import lightning_attention, linear_attention
from attncc.frontends.zoo.moh import moh
from attncc.ir import Cascade, parse, print_cascade
from attncc.passes import run_pipeline

E, F, M, P = sympy.symbols("E F M P", positive=True, integer=True)

NON_CAUSAL: dict[str, Callable[[], Cascade]] = {
    "elu1": linear_attention,
    "relu_unnormalized": lambda: linear_attention(feature_map="relu", normalize=False),
    "hedgehog_batched": lambda: linear_attention(feature_map="hedgehog", batched=True),
    "elu1_gqa": lambda: linear_attention(gqa_group=2),
    "lightning_noncausal": lambda: lightning_attention(causal=False, batched=True),
}

CAUSAL: dict[str, Callable[[], Cascade]] = {
    "elu1": lambda: linear_attention(causal=True),
    "relu_gqa": lambda: linear_attention(feature_map="relu", causal=True, gqa_group=2),
    "hedgehog": lambda: linear_attention(feature_map="hedgehog", causal=True, feature_dim=3),
    "lightning": lightning_attention,
    "lightning_mqa": lambda: lightning_attention(gqa_group=3, head_dim=5),
}

SOFTMAX: dict[str, Callable[[], Cascade]] = {
    "3pass": attention_3pass,
    "2pass_causal": lambda: attention_2pass(causal=True),
    "1pass_gqa": lambda: attention_1pass(gqa_group=2),
    "sigmoid": attention_sigmoid,
}


def _run(cascade: Cascade, pipeline: str) -> tuple[Cascade, tuple[str, ...]]:
    result, records = run_pipeline(cascade, pipeline)
    return result, records[-1].remarks


def _tensors(cascade: Cascade) -> list[str]:
    return [e.tensor for e in cascade.einsums]


# ----------------------------------------------------------------------------- reassociate


@pytest.mark.parametrize("pipeline", ["reassociate", "partition(tile=4),reassociate"])
@pytest.mark.parametrize("name", sorted(NON_CAUSAL))
def test_reassociation_computes_what_the_quadratic_form_computes(name: str, pipeline: str) -> None:
    before = NON_CAUSAL[name]()
    after, remarks = _run(before, pipeline)
    assert remarks == ()
    assert "QK" not in _tensors(after), "the scores are gone"
    assert mismatches(before, after, trials=4) == []


def test_reassociated_scores_keep_heads_and_grouped_reads() -> None:
    after, _ = _run(linear_attention(gqa_group=2), "reassociate")
    text = print_cascade(after)
    assert "FKV[b,h,e,f] = FK[b,h,e,m] * V[b,h//2,f,m]" in text
    assert "QKV[b,h,f,p] = FQ[b,h,e,p] * FKV[b,h,e,f]" in text
    assert "QKS[b,h,p] = FQ[b,h,e,p] * FKS[b,h,e]" in text


def test_reassociate_is_idempotent() -> None:
    once, _ = _run(linear_attention(feature_map="hedgehog"), "reassociate")
    twice, remarks = _run(once, "reassociate")
    assert twice == once
    assert remarks == tuple(
        f"{state} kept: in {sum_} the factors over j (FK[j,m], FQ[j,p]) vary with the query p: "
        "their sum would serve one query only"
        for state, sum_ in (("FKV", "QKV"), ("FKS", "QKS"))
    )


@pytest.mark.parametrize("name", sorted(SOFTMAX))
def test_softmax_attention_is_left_unchanged(name: str) -> None:
    before = SOFTMAX[name]()
    for pipeline in ("reassociate", "chunk-causal"):
        after, remarks = _run(before, pipeline)
        assert after == before
        assert remarks and all("sits between" in r for r in remarks), remarks


def test_the_remark_names_softmax_exp() -> None:
    _, remarks = _run(attention_3pass(), "reassociate")
    assert remarks[0] == (
        "SD sums SN = exp(QK[m,p] - GM[p]): exp sits between the sum QK and the sum over m; "
        "left unchanged"
    )


def test_the_paper_toy_is_not_attention() -> None:
    before = toy_cascade1()
    assert _run(before, "reassociate") == (before, ("no sum over keys reads a sum of products",))


LINEAR_HEADER = """\
rank E, F, M, P
input Q[e,p] : f32
input K[e,m] : f32
input V[f,m] : f32
input D[m,p] : f32
output AV[f,p] : f32
"""


@pytest.mark.parametrize(
    ("body", "remark"),
    [
        (  # a decay or bias over keys and queries: the keys serve no query alone
            "QK[m,p] = Q[e,p] * K[e,m]\nAV[f,p] = QK[m,p] * D[m,p] * V[f,m]",
            "QK kept: in AV the factors over m (K[e,m], D[m,p], V[f,m]) vary with the query p: "
            "their sum would serve one query only",
        ),
        (  # the scores are needed as they are
            "QK[m,p] = Q[e,p] * K[e,m]\nGM[p] = max(m) QK[m,p]\nAV[f,p] = QK[m,p] * V[f,m] * GM[p]",
            "QK kept: GM reads QK but is not an unfiltered sum",
        ),
        (  # a sliding window
            "QK[m,p] = Q[e,p] * K[e,m] where p - m < 8\nAV[f,p] = QK[m,p] * V[f,m]",
            "QK kept: it is masked (where p - m < 8), which ties the keys to the queries, so "
            "the keys cannot be summed once for all queries; for a causal mask run chunk-causal",
        ),
        (  # the scores are wanted as they are
            "output QK[m,p] : f32\nQK[m,p] = Q[e,p] * K[e,m]\nAV[f,p] = QK[m,p] * V[f,m]",
            "QK kept: it is an output",
        ),
    ],
    ids=["key_query_factor", "scores_read_elsewhere", "masked", "scores_are_an_output"],
)
def test_reassociate_refuses_with_the_reason(body: str, remark: str) -> None:
    before = parse(LINEAR_HEADER + body)
    assert _run(before, "reassociate") == (before, (remark,))


PROJECTED = """\
cascade projected
rank D, E, F, M, P
input X[d,p] : f32
input W[e,d] : f32
input K[e,m] : f32
input V[f,m] : f32
output AV[f,p] : f32

QP[e,p] = W[e,d] * X[d,p]
QK[m,p] = QP[e,p] * K[e,m]
"""
SOFTMAX_TAIL = """\
GM[p] = max(m) QK[m,p]
SN[m,p] = exp(QK[m,p] - GM[p])
SD[p] = SN[m,p]
A[m,p] = SN[m,p] / SD[p]
AV[f,p] = A[m,p] * V[f,m]
"""
LINEAR_TAIL = "QKV[f,p] = QK[m,p] * V[f,m]\nQKS[p] = QK[m,p]\nAV[f,p] = QKV[f,p] / QKS[p]\n"
PROJECTION_KEPT = (
    "QP kept: QK sums it over E, not the key rank (M): a projection, not attention's scores"
)


def test_a_query_projection_is_not_reassociated() -> None:
    """QK reads the projection QP as a factor and sums it over e, but e is no key: summing
    W * K over e first (WK[d,m] = W[e,d] * K[e,m], QK[m,p] = X[d,p] * WK[d,m]) trades
    D*E*P + E*M*P multiply-accumulates for D*E*M + D*M*P, D/E = 32 times more at D = 4096,
    E = 128 and M = P long."""
    before = parse(PROJECTED + SOFTMAX_TAIL)
    assert _run(before, "reassociate") == (before, (PROJECTION_KEPT,))
    refused = PROJECTED.replace(
        "QP[e,p] = W[e,d] * X[d,p]\nQK[m,p] = QP[e,p] * K[e,m]",
        "WK[d,m] = W[e,d] * K[e,m]\nQK[m,p] = X[d,p] * WK[d,m]",
    )
    d, n = sympy.symbols("D N", positive=True, integer=True)
    macs = {
        "projected": _totals(before)["mac"],
        "reassociated": _totals(parse(refused + SOFTMAX_TAIL))["mac"],
    }
    assert macs == {
        "projected": d * E * P + E * M * P + F * M * P,
        "reassociated": d * E * M + d * M * P + F * M * P,
    }
    projection = {k: (v - F * M * P).subs({M: n, P: n, d: 4096, E: 128}) for k, v in macs.items()}
    assert sympy.limit(projection["reassociated"] / projection["projected"], n, sympy.oo) == 32


def test_the_cost_check_alone_keeps_the_projection(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without the key-rank check, the cost check still keeps the projection: with M = P = N
    the work is O(N^2) before (E*M*P) and after (D*M*P)."""
    monkeypatch.setattr(reassociate_pass, "_off_key", lambda cascade, splits: None)
    before = parse(PROJECTED + SOFTMAX_TAIL)
    assert _run(before, "reassociate") == (
        before,
        (
            "QP kept: summing over E first costs O(N^2) with keys and queries N long, no less "
            "than the O(N^2) it saves",
        ),
    )


def test_projected_linear_attention_reassociates_its_keys_only() -> None:
    before = parse(PROJECTED + LINEAR_TAIL)
    after, remarks = _run(before, "reassociate")
    assert remarks == (PROJECTION_KEPT,)
    assert _tensors(after) == ["QP", "KV", "QKV", "KS", "QKS", "AV"]
    assert "QKV[f,p] = QP[e,p] * KV[e,f]" in print_cascade(after)
    assert mismatches(before, after, trials=4) == []


# ----------------------------------------------------------------------------- key ranks


def test_moh_tiles_the_keys_not_the_heads_its_router_maxes_over() -> None:
    """MoH's router takes a max over the heads; softmax's key is M (the text form of this is
    tests/pass_cases/partition_router.ein)."""
    tiled, records = run_pipeline(moh(), "flash")
    assert [p.rank for p in tiled.partitions] == ["M"]
    assert all(r.remarks == () for r in records)
    assert softmax_keys(moh()) == ["M"]


def test_partition_refuses_a_max_that_normalizes_nothing() -> None:
    cascade = parse("cascade t\nrank M, P\ninput X[m,p]\noutput Y[p]\nY[p] = max(m) X[m,p]")
    assert _run(cascade, "partition") == (
        cascade,
        (
            "no rank is a softmax key (max-reduced: M; no max among them feeds exp(x - max) "
            "summed over its own rank); name the rank to tile with rank=...",
        ),
    )
    tiled, _ = _run(cascade, "partition(rank=M,tile=4)")
    assert [p.rank for p in tiled.partitions] == ["M"]


def test_the_query_and_the_keys() -> None:
    assert query_index(attention_3pass()) == "p"
    assert query_index(toy_cascade1()) is None
    assert key_ranks(attention_3pass()) == ["M"]
    assert key_ranks(linear_attention()) == ["M"]
    assert key_ranks(_run(linear_attention(), "reassociate")[0]) == ["M"]
    assert key_ranks(attention_sigmoid()) == ["M"]
    assert key_ranks(hilo(shape=(4, 4))) == ["M", "N"]


# ----------------------------------------------------------------------------- chunk-causal


@pytest.mark.parametrize("tile", [1, 3, 16])
@pytest.mark.parametrize("name", sorted(CAUSAL))
def test_chunks_compute_what_the_causal_form_computes(name: str, tile: int) -> None:
    before = CAUSAL[name]()
    after, remarks = _run(before, f"chunk-causal(tile={tile})")
    assert remarks == ()
    assert after.partitions[-1].inner == "M0" and after.rank("M0").size == tile  # type: ignore[union-attr]
    # sizes span a few chunks and end in a partial one (differential.random_sizes)
    assert mismatches(before, after, trials=4) == []


def test_chunked_state_is_read_at_the_query_chunk() -> None:
    after, _ = _run(linear_attention(causal=True), "chunk-causal(tile=8)")
    text = print_cascade(after)
    assert "RFKV[e,f,m1+1] = RFKV[e,f,m1] + LFKV[e,f,m1]" in text
    assert "IQKV[f,p] = FQ[e,p] * RFKV[e,f,p//M0]" in text
    assert "IQKS[p] = FQ[e,p] * RFKS[e,p//M0]" in text
    assert "QKS[p] = IQKS[p] + CQKS[p]" in text


CAUSAL_HEADER = LINEAR_HEADER.replace("rank E, F, M, P", "rank E, F, M, P = M")


@pytest.mark.parametrize(
    ("text", "remark"),
    [
        (
            LINEAR_HEADER + "QK[m,p] = Q[e,p] * K[e,m]\nAV[f,p] = QK[m,p] * V[f,m]",
            "QK kept: it has no causal mask; run reassociate",
        ),
        (
            LINEAR_HEADER + "QK[m,p] = Q[e,p] * K[e,m] where m <= p\nAV[f,p] = QK[m,p] * V[f,m]",
            "QK kept: the query rank P = P may be longer than the key rank M = M, and a query's "
            "chunk must be a key chunk; declare 'rank P = M' (self-attention)",
        ),
        (
            CAUSAL_HEADER + "QK[m,p] = Q[e,p] * K[e,m] where p - m < 8\nAV[f,p] = QK[m,p] * V[f,m]",
            "QK kept: its mask p - m < 8 is not the causal m <= p",
        ),
        (
            CAUSAL_HEADER
            + "QK[m,p] = Q[e,p] * K[e,m] where m <= p\nAV[f,p] = QK[m,p] * D[m,p] * V[f,m]",
            "QK kept: in AV the factors over the keys (K[e,m], D[m,p], V[f,m]) vary with the "
            "query p: no state over the chunks serves every query",
        ),
    ],
    ids=["no_mask", "query_rank_may_be_longer", "sliding_window", "key_query_factor"],
)
def test_chunk_causal_refuses_with_the_reason(text: str, remark: str) -> None:
    before = parse(text)
    assert _run(before, "chunk-causal") == (before, (remark,))


def test_chunk_causal_needs_an_untiled_key_rank_and_a_positive_tile() -> None:
    tiled, _ = _run(linear_attention(causal=True), "partition")
    assert _run(tiled, "chunk-causal")[1] == (
        "QK kept: its mask m1 * M0 + m0 <= p is not the causal m <= p",
    )
    declared = parse(
        CAUSAL_HEADER.replace("rank E", "rank M0 = 4\npartition M -> M1, M0\nrank E")
        + "QK[m,p] = Q[e,p] * K[e,m] where m <= p\nAV[f,p] = QK[m,p] * V[f,m]"
    )
    assert _run(declared, "chunk-causal")[1] == ("QK kept: the key rank M is partitioned already",)
    with pytest.raises(PassError, match="tile=0 must be a positive integer"):
        run_pipeline(linear_attention(causal=True), "chunk-causal(tile=0)")


# ----------------------------------------------------------------------------- costs


def _totals(cascade: Cascade) -> dict[str, sympy.Expr]:
    return dict(cascade_cost(cascade).totals())


def test_reassociation_turns_quadratic_cost_into_linear() -> None:
    quadratic = linear_attention()
    # FQ, FK: elu+1 is a compare, an add, an exp and a select per element of Q and of K;
    # QK: E*M*P multiply-accumulates; QKV: F*M*P; QKS sums QK: M*P adds; AV: F*P divisions.
    assert _totals(quadratic) == {
        "add": E * M + E * P + M * P,
        "compare": E * M + E * P,
        "div": F * P,
        "exp": E * M + E * P,
        "mac": E * M * P + F * M * P,
        "select": E * M + E * P,
    }
    reassociated, _ = _run(quadratic, "reassociate")
    # FKV = FK * V: E*F*M; QKV = FQ * FKV: E*F*P; FKS sums FK: E*M adds; QKS = FQ * FKS: E*P
    assert _totals(reassociated) == {
        "add": 2 * E * M + E * P,
        "compare": E * M + E * P,
        "div": F * P,
        "exp": E * M + E * P,
        "mac": E * F * M + E * F * P + E * P,
        "select": E * M + E * P,
    }
    n = sympy.Symbol("N", positive=True)
    for cascade, degree in ((quadratic, 2), (reassociated, 1)):
        flops = cascade_cost(cascade).flops.subs({M: n, P: n})
        assert sympy.degree(flops, n) == degree


def test_feature_maps_and_heads_cost_what_they_compute() -> None:
    D, B, G = sympy.symbols("D B G", positive=True, integer=True)
    hedgehog, _ = _run(linear_attention(feature_map="hedgehog"), "reassociate")
    # HQ, HK project to J = 2*D features: 2*D*E macs per query and per key; FQ, FK negate
    # (an add), select and exp per feature, and compare j < D once per feature; FKV: 2*D*F*M,
    # QKV: 2*D*F*P, FKS: 2*D*M adds, QKS: 2*D*P macs; AV: F*P divisions
    assert _totals(hedgehog) == {
        "add": 4 * D * M + 2 * D * P,
        "compare": 4 * D,
        "div": F * P,
        "exp": 2 * D * M + 2 * D * P,
        "mac": 2 * D * E * M + 2 * D * E * P + 2 * D * F * M + 2 * D * F * P + 2 * D * P,
        "select": 2 * D * M + 2 * D * P,
    }
    # ReLU is a max per element; under GQA (H = 2*G) phi(K) is formed per query head
    assert _totals(linear_attention(feature_map="relu", gqa_group=2)) == {
        "add": 2 * B * G * M * P,
        "div": 2 * B * F * G * P,
        "mac": 2 * B * E * G * M * P + 2 * B * F * G * M * P,
        "max": 2 * B * E * G * M + 2 * B * E * G * P,
    }


def test_chunks_turn_causal_cost_into_n_times_chunk() -> None:
    causal = lightning_attention()  # P = M: the cost is in M alone
    # QK: E*M*M macs and a select per point of its filter; the compare m <= p per (m, p)
    assert _totals(causal) == {"compare": M**2, "mac": E * M**2 + F * M**2, "select": E * M**2}
    chunked, _ = _run(causal, "chunk-causal(tile=64)")
    m0 = sympy.Symbol("M0", positive=True, integer=True)
    tiles = sympy.ceiling(M / m0)
    # CQK: 64*E*M macs, its mask p//M0*M0 + m0 <= p (a floordiv and a mul per query, an add
    # and a compare per (m0, p)) and a select per point; LKV: E*F*M; RKV: E*F per chunk;
    # IAV: E*F*M; CAV: 64*F*M and the same mask; AV adds the two parts: F*M
    assert _totals(chunked) == {
        "add": E * F * tiles + F * M + 128 * M,
        "compare": 128 * M,
        "intdiv": 2 * M,
        "mac": 2 * E * F * M + 64 * E * M + 64 * F * M,
        "mul": 2 * M,
        "select": 64 * E * M + 64 * F * M,
    }
    assert sympy.degree(sympy.expand(cascade_cost(chunked).flops.subs(tiles, M)), M) == 1


def test_pass_counts_stay_one_over_the_keys() -> None:
    """Linear attention needs no max: one pass over M as written, and over the chunks."""
    for pipeline in ("", "reassociate"):
        cascade = run_pipeline(linear_attention(), pipeline)[0] if pipeline else linear_attention()
        assert {r.rank: r.passes for r in analyze_passes(cascade)} == {"E": 1, "M": 1}
    chunked, _ = _run(linear_attention(causal=True), "chunk-causal")
    found = {r.rank: r for r in analyze_passes(chunked)}
    assert {rank: r.passes for rank, r in found.items()} == {"E": 1, "M1": 1, "M0": 1}
    assert found["M1"].placement("RFKV").pass_number == 1
    assert found["M1"].placement("IQKV").after == 1


def test_analyze_reports_the_costs(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    reports = {}
    for name, pipeline in (("quadratic", ""), ("reassociated", "reassociate")):
        cascade = run_pipeline(linear_attention(), pipeline)[0] if pipeline else linear_attention()
        path = tmp_path / f"{name}.ein"
        path.write_text(print_cascade(cascade))
        assert main(["analyze", str(path), "--shapes", "E=64,F=64,M=4096,P=4096"]) == 0
        reports[name] = capsys.readouterr().out
    assert "passes over M: 1" in reports["quadratic"]
    assert "  mac     E*M*P + F*M*P = 2,147,483,648\n" in reports["quadratic"]
    assert "  mac     E*F*M + E*F*P + E*P = 33,816,576\n" in reports["reassociated"]
