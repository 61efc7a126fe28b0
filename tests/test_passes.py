"""Rewrite passes: the flash pipeline derives FuseMax's 1-pass cascade; refusals say why."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from attncc.analysis.passes import analyze_passes
from attncc.backends.numpy.reference import interpret
from attncc.differential import check_equivalent, mismatches
from attncc.errors import PassError
from attncc.frontends.library import attention_1pass, attention_2pass, attention_3pass
from attncc.ir import canonical, parse, print_cascade
from attncc.passes import parse_pipeline, run_pipeline
from attncc.passes.fuse import fusion_groups

VARIANTS = [
    {},
    {"causal": True},
    {"batched": True},
    {"batched": True, "gqa_group": 2, "causal": True},
    {"head_dim": 64, "value_dim": 32, "scale": 0.3},
]


def passes_over(cascade, rank: str) -> int:
    return next(p.passes for p in analyze_passes(cascade) if p.rank == rank)


@pytest.mark.parametrize("options", VARIANTS, ids=lambda o: ",".join(o) or "plain")
def test_flash_derives_the_library_1pass_cascade(options: dict) -> None:
    derived, records = run_pipeline(attention_3pass(**options), "flash")

    assert canonical(derived) == canonical(attention_1pass(**options))
    assert [r.name for r in records] == ["defer-div", "partition", "running-reduce", "dce"]
    assert passes_over(derived, "M1") == 1


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("m", [37, 64, 130])
def test_flash_output_matches_sdpa(causal: bool, m: int) -> None:
    derived, _ = run_pipeline(attention_3pass(causal=causal), "partition(tile=32),flash")
    rng = np.random.default_rng(m)
    q, k, v = (
        rng.standard_normal((16, 45)),
        rng.standard_normal((16, m)),
        rng.standard_normal((8, m)),
    )

    out = interpret(derived, {"Q": q, "K": k, "V": v})["AV"]

    expected = (
        torch.nn.functional.scaled_dot_product_attention(
            *(torch.from_numpy(x.T) for x in (q, k, v)), is_causal=causal
        )
        .numpy()
        .T
    )
    assert np.abs(out - expected).max() / np.abs(expected).max() < 1e-10


def test_defer_div_gives_the_2pass_cascade() -> None:
    derived, _ = run_pipeline(attention_3pass(), "defer-div")

    assert canonical(derived) == canonical(attention_2pass())
    assert passes_over(derived, "M") == 2


CROSS_ATTENTION = """
cascade cross_attention
rank D, T, S, C
input X[d,t]
input Y[d,s]
input Z[c,s]
output O[c,t]

L[s,t] = X[d,t] * Y[d,s] * 0.5
MX[t] = max(s) L[s,t]
W[s,t] = exp(L[s,t] - MX[t])
N[t] = W[s,t]
A[s,t] = W[s,t] / N[t]
O[c,t] = A[s,t] * Z[c,s]
"""

DIFFERENTIAL_ATTENTION = """
cascade differential_attention
rank E, F, M, P
input Q1[e,p]
input Q2[e,p]
input K[e,m]
input V[f,m]
output AV[f,p]

QK1[m,p] = Q1[e,p] * K[e,m]
QK2[m,p] = Q2[e,p] * K[e,m]
GM1[p] = max(m) QK1[m,p]
GM2[p] = max(m) QK2[m,p]
SN1[m,p] = exp(QK1[m,p] - GM1[p])
SN2[m,p] = exp(QK2[m,p] - GM2[p])
SD1[p] = SN1[m,p]
SD2[p] = SN2[m,p]
A1[m,p] = SN1[m,p] / SD1[p]
A2[m,p] = SN2[m,p] / SD2[p]
AV1[f,p] = A1[m,p] * V[f,m]
AV2[f,p] = A2[m,p] * V[f,m]
AV[f,p] = AV1[f,p] - 0.5 * AV2[f,p]
"""


@pytest.mark.parametrize(
    ("text", "rank", "before"),
    [(CROSS_ATTENTION, "S", 3), (DIFFERENTIAL_ATTENTION, "M", 3)],
    ids=["softmax over S", "two softmaxes"],
)
def test_flash_takes_other_softmax_cascades_to_one_pass(text: str, rank: str, before: int) -> None:
    cascade = parse(text)
    derived, records = run_pipeline(cascade, "flash")

    assert passes_over(cascade, rank) == before
    assert passes_over(derived, f"{rank}1") == 1
    assert not any(r.remarks for r in records if r.name == "running-reduce" and r.changed)
    check_equivalent(cascade, derived, trials=4)
    assert parse(print_cascade(derived)) == derived


def test_refusals_leave_the_cascade_unchanged_and_say_why() -> None:
    cascade = attention_1pass()
    for pipeline, reason in [
        ("partition(rank=M)", "already partitioned"),
        ("defer-div", "no sum of products"),
        ("running-reduce", "no unfiltered max over both m1 and m0"),
    ]:
        (step,) = parse_pipeline(pipeline)
        result = step.apply(cascade)
        assert result.cascade == cascade
        assert any(reason in remark for remark in result.remarks), result.remarks


def test_defer_div_refuses_a_divisor_that_varies_with_the_sum() -> None:
    text = """
    rank M, P
    input X[m,p]
    input W[m,p]
    output Y[p]
    A[m,p] = X[m,p] / W[m,p]
    Y[p] = A[m,p] * X[m,p]
    """
    cascade = parse(text)
    (step,) = parse_pipeline("defer-div")

    result = step.apply(cascade)

    assert result.cascade == cascade
    assert "divisor W[m,p] varies with m" in result.remarks[0]


def test_running_reduce_refuses_an_exp_read_outside_a_sum() -> None:
    text = """
    rank M, P
    input X[m,p]
    output Y[m,p]
    GM[p] = max(m) X[m,p]
    SN[m,p] = exp(X[m,p] - GM[p])
    SD[p] = SN[m,p]
    Y[m,p] = SN[m,p] / SD[p]
    """
    tiled, _ = run_pipeline(parse(text), "partition(rank=M,tile=4)")
    (step,) = parse_pipeline("running-reduce")

    result = step.apply(tiled)

    assert result.cascade == tiled
    assert "Y reads SN but is not a sum" in result.remarks[0]
    assert not mismatches(parse(text), tiled)


@pytest.mark.parametrize(
    ("pipeline", "message"),
    [
        ("nope", "unknown pass 'nope'"),
        ("partition(size=3)", "partition has no option 'size'; its options: rank, tile"),
        ("partition(tile=big)", "partition(tile=big): expected int"),
        ("partition(tile=0)", "tile=0 must be a positive integer"),
        ("partition(rank=X)", "has no rank X"),
        ("running-reduce(rank=M)", "M is not the outer rank of a partition"),
        ("partition(", "bad pipeline"),
    ],
)
def test_bad_pipelines_are_reported(pipeline: str, message: str) -> None:
    with pytest.raises(PassError, match=message.replace("(", r"\(").replace(")", r"\)")):
        run_pipeline(attention_3pass(), pipeline)


def test_fusion_groups_of_the_1pass_cascade() -> None:
    groups = fusion_groups(attention_1pass())

    assert [g.einsums for g in groups] == [
        ("BK", "BV", "BQK", "LM"),
        ("RM", "PRM"),
        ("SLN", "SLD", "SLNV"),
        ("SPD", "RD", "SPNV", "RNV"),
        ("AV",),
    ]
    assert groups[2].placements == ("M1 pass 1", "M0 pass 2")
    assert groups[-1].placements[0] == "M1 after pass 1"


def test_fuse_orders_einsums_by_group_and_keeps_the_semantics() -> None:
    cascade = attention_1pass(causal=True, tile=8)
    fused, records = run_pipeline(cascade, "fuse")

    assert [e.tensor for e in fused.einsums][:6] == ["BK", "BV", "BQK", "LM", "RM", "PRM"]
    assert records[0].remarks[0].startswith("group 1: [BK, BV, BQK, LM]")
    check_equivalent(cascade, fused)


def test_running_reduce_refuses_an_exp_that_is_an_output() -> None:
    text = """
    rank M, P, M0 = 2
    partition M -> M1, M0
    input X[m,p]
    output SN[m1,m0,p]
    output SD[p]
    BX[m1,m0,p] = X[m1*M0+m0,p]
    GM[p] = max(m0, m1) BX[m1,m0,p]
    SN[m1,m0,p] = exp(BX[m1,m0,p] - GM[p])
    SD[p] = SN[m1,m0,p]
    """
    cascade = parse(text)
    (step,) = parse_pipeline("running-reduce")

    result = step.apply(cascade)

    assert result.cascade == cascade
    assert "SN is an output" in result.remarks[0]
