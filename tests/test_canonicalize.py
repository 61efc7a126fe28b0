"""canonicalize: each rewrite as text (input Einsums and expected Einsums side by side) and each
result run differentially against its input; the library's attention cascades come out in
FlashAttention-2's form (exp2 of scores already in base 2, Q scaled once) with their pass counts.

Every cascade that goes through `canonicalize` below is also checked to verify, to round-trip
through the text form, to keep its inputs and outputs, and to be a fixed point of a second run.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import sympy
from hypothesis import given, settings
from strategies import cascades

from attncc.analysis.passes import analyze_passes
from attncc.differential import mismatches
from attncc.frontends.library import attention_1pass, attention_2pass, attention_3pass
from attncc.ir import Cascade, parse, parse_file, print_cascade
from attncc.passes import run_pipeline
from attncc.passes.base2 import LOG2_E
from attncc.passes.canonicalize import Canonicalize
from attncc.passes.registry import parse_pipeline

CORPUS = sorted((Path(__file__).parent / "analysis_cascades").glob("*.ein"))


def canonicalize(cascade: Cascade, pipeline: str = "canonicalize") -> tuple[Cascade, list[str]]:
    """The pass through the pass manager (which verifies its output), checked as the module
    docstring says; returns the cascade and the remarks."""
    after, (record,) = run_pipeline(cascade, pipeline)
    found = mismatches(cascade, after)
    assert not found, f"{print_cascade(after)}differs: {[str(m) for m in found]}"
    assert parse(print_cascade(after)) == after
    assert (after.inputs, after.outputs) == (cascade.inputs, cascade.outputs)
    again, (second,) = run_pipeline(after, pipeline)
    assert again == after, f"not idempotent:\n{print_cascade(after)}{print_cascade(again)}"
    assert not second.changed
    return after, list(record.remarks)


def einsums(cascade: Cascade) -> list[str]:
    return print_cascade(cascade).split("\n\n", 1)[1].splitlines()


def pass_counts(cascade: Cascade) -> list[tuple[str, int]]:
    return [(r.rank, r.passes) for r in analyze_passes(cascade)]


# ---------------------------------------------------------------------------------------------
# fold

FOLD_HEADER = "cascade t\nrank E = 64, M\ninput X[m] : f64\noutput Y[m] : f64\n\n"

FOLDED = [
    ("Y[m] = X[m] * rsqrt(E) * 2", "Y[m] = X[m] * 0.25"),
    ("Y[m] = X[m] * (exp(0) + log2(8) + sqrt(E))", "Y[m] = X[m] * 12"),
    ("Y[m] = (X[m] * 1 - 0) / 1", "Y[m] = X[m]"),
    ("Y[m] = max(X[m], -inf) + min(X[m], X[m])", "Y[m] = X[m] + X[m]"),
    ("Y[m] = select(0, 2, X[m]) * neg(neg(X[m]))", "Y[m] = X[m] * X[m]"),
    ("Y[m] = X[m] * sigmoid(1) + -0", "Y[m] = X[m] * 0.7310585786300049"),
    ("Y[m] = 2 * E * X[m]", "Y[m] = 128 * X[m]"),
]

KEPT = [
    "Y[m] = X[m] + 0",  # -0 + 0 is +0: dropping the 0 would keep a -0
    "Y[m] = X[m] - X[m]",  # inf - inf is NaN, not 0
    "Y[m] = X[m] * 0",  # inf * 0 is NaN, and -1 * 0 is -0
    "Y[m] = X[m] / (1 - 1)",  # the zero 1 - 1 has a sign that decides X / 0
    "Y[m] = X[m] * sqrt(-1)",  # not a real number
    "Y[m] = X[m] * rsqrt(M)",  # M is not known before the cascade runs
    "Y[m] = X[m] * E",  # a size alone stays a size: E reads better than 64
]


@pytest.mark.parametrize(("before", "after"), FOLDED)
def test_fold(before: str, after: str) -> None:
    folded, _ = canonicalize(parse(FOLD_HEADER + before))
    assert einsums(folded) == [after]


@pytest.mark.parametrize("line", KEPT)
def test_fold_keeps_what_ieee_arithmetic_does_not_simplify(line: str) -> None:
    cascade = parse(FOLD_HEADER + line)
    assert canonicalize(cascade)[0] == cascade


def test_log2_e_is_correctly_rounded() -> None:
    assert float(sympy.N(1 / sympy.log(2), 40)) == LOG2_E


# ---------------------------------------------------------------------------------------------
# scale

QK_HEADER = (
    "cascade t\nrank E = 64, M, P\ninput Q[e,p] : f64\ninput K[e,m] : f64\noutput S[m,p] : f64\n\n"
)


@pytest.mark.parametrize(
    ("before", "after"),
    [
        (
            ["S[m,p] = Q[e,p] * K[e,m] * rsqrt(E)"],
            ["QS[e,p] = Q[e,p] * 0.125", "S[m,p] = QS[e,p] * K[e,m]"],
        ),
        (
            ["S[m,p] = 2 * Q[e,p] * K[e,m] * rsqrt(E) where m <= p else -inf"],
            ["QS[e,p] = Q[e,p] * 0.25", "S[m,p] = QS[e,p] * K[e,m] where m <= p else -inf"],
        ),
    ],
)
def test_scale_moves_the_constant_onto_q(before: list[str], after: list[str]) -> None:
    scaled, remarks = canonicalize(parse(QK_HEADER + "\n".join(before)), "canonicalize(exp2=false)")
    assert einsums(scaled) == after
    assert remarks == []


@pytest.mark.parametrize(
    ("text", "remark"),
    [
        (
            "rank E, M, P\ninput Q[e,p]\ninput K[e,m]\noutput S[m,p]\noutput T[p]\noutput U[m]\n"
            "S[m,p] = Q[e,p] * K[e,m] * 2\nT[p] = Q[e,p]\nU[m] = K[e,m]",
            "scale: S keeps 2: Q is read 2 times; K is read 2 times",
        ),
        (
            "rank E, P\ninput X[e,p]\noutput S[p]\nS[p] = X[e,p] * 3",
            "scale: S keeps 3: X varies along every index of S",
        ),
        (
            "rank E, P\ninput X[e,p]\noutput S[p]\nB[e,p] = X[e,p] + 1\nS[p] = B[e,p] * 3",
            "scale: S keeps 3: B is not an input",
        ),
    ],
)
def test_scale_says_why_it_keeps_a_constant(text: str, remark: str) -> None:
    cascade = parse(text)
    after, remarks = canonicalize(cascade)
    assert after == cascade
    assert remarks == [remark]


# ---------------------------------------------------------------------------------------------
# exp2

SOFTMAX = """
SN[m,p] = exp(S[m,p] - GM[p])
SD[p] = SN[m,p]
Y[m,p] = SN[m,p] / SD[p]
"""
SCORES = "cascade t\nrank E, M, P\ninput Q[e,p]\ninput K[e,m]\noutput Y[m,p]\n"


def test_exp2_puts_scores_in_base_2_and_scales_their_fill() -> None:
    text = SCORES + "S[m,p] = Q[e,p] * K[e,m] * 0.5 where m <= p else -100\nGM[p] = max(m) S[m,p]"
    after, remarks = canonicalize(parse(text + SOFTMAX))
    assert einsums(after)[:4] == [
        f"QS[e,p] = Q[e,p] * {0.5 * LOG2_E!r}",
        f"S[m,p] = QS[e,p] * K[e,m] where m <= p else {-100 * LOG2_E!r}",
        "GM[p] = max(m) S[m,p]",
        "SN[m,p] = exp2(S[m,p] - GM[p])",
    ]
    assert remarks == []


def test_exp2_multiplies_the_exponent_where_the_scores_are_inputs() -> None:
    text = "cascade t\nrank M, P\ninput S[m,p]\noutput Y[m,p]\nGM[p] = max(m) S[m,p]"
    after, remarks = canonicalize(parse(text + SOFTMAX))
    assert "SN[m,p] = exp2((S[m,p] - GM[p]) * 1.4426950408889634)" in einsums(after)
    assert remarks == ["exp2: GM, S keep base-e units (S is an input); exp(x) -> exp2(x * log2e)"]


@pytest.mark.parametrize(
    ("pipeline", "scores", "result", "reason"),
    [
        (
            "canonicalize",
            "S[m,p] = Q[e,p] * K[e,m] * 2",
            "Y[m,p] = SN[m,p] / SD[p] + S[m,p]",
            "Y reads S other than in exp or a comparison with 0 or inf",
        ),
        (  # S < GM can flip when both are rounded after scaling; S == -inf could not
            "canonicalize",
            "S[m,p] = Q[e,p] * K[e,m] * 2",
            "Y[m,p] = select(S[m,p] < GM[p], 0, SN[m,p] / SD[p])",
            "Y reads S other than in exp or a comparison with 0 or inf",
        ),
        (  # S - SD > 0 would compare base-2 scores with a base-e sum
            "canonicalize",
            "S[m,p] = Q[e,p] * K[e,m] * 2",
            "Y[m,p] = select(S[m,p] - SD[p] > 0, 0, SN[m,p] / SD[p])",
            "Y reads S other than in exp or a comparison with 0 or inf",
        ),
        (
            "canonicalize(scale=false)",
            "S[m,p] = Q[e,p] * K[e,m]",
            "Y[m,p] = SN[m,p] / SD[p]",
            "S has no constant factor to take log2(e)",
        ),
    ],
)
def test_exp2_refuses_scores_it_cannot_rescale(
    pipeline: str, scores: str, result: str, reason: str
) -> None:
    softmax = "GM[p] = max(m) S[m,p]\nSN[m,p] = exp(S[m,p] - GM[p])\nSD[p] = SN[m,p]\n"
    after, remarks = canonicalize(parse(f"{SCORES}{scores}\n{softmax}{result}"), pipeline)
    assert "SN[m,p] = exp2((S[m,p] - GM[p]) * 1.4426950408889634)" in einsums(after)
    assert remarks == [f"exp2: GM, S keep base-e units ({reason}); exp(x) -> exp2(x * log2e)"]


def test_exp2_of_something_else_is_remarked() -> None:
    after, remarks = canonicalize(parse(FOLD_HEADER + "Y[m] = exp(X[m] * X[m])"))
    assert einsums(after) == ["Y[m] = exp2(X[m] * X[m] * 1.4426950408889634)"]
    assert remarks == [
        "exp2: in Y, X[m] * X[m] is no sum or max of scores; exp(x) -> exp2(x * log2e)"
    ]


# ---------------------------------------------------------------------------------------------
# cse and dce

CSE_HEADER = "cascade t\nrank M, P\ninput X[m,p]\noutput Y[p]\n"


@pytest.mark.parametrize(
    ("before", "after", "remark"),
    [
        (
            ["A[p] = X[m,p]", "B[p] = X[m,p]", "Y[p] = A[p] * B[p]"],
            ["A[p] = X[m,p]", "Y[p] = A[p] * A[p]"],
            "cse: B computes what A does; its readers read A",
        ),
        (  # an output keeps its name; the temporary equal to it goes, though it came first
            ["A[p] = X[m,p]", "Y[p] = X[m,p]", "Z[p] = A[p] * 2"],
            ["Y[p] = X[m,p]", "Z[p] = Y[p] * 2"],
            "cse: A computes what Y does; its readers read Y",
        ),
        (  # running updates compare by structure, their own names aside
            [
                *("RA[0,p] = 0", "RA[m+1,p] = RA[m,p] + X[m,p]"),
                *("RB[0,p] = 0", "RB[m+1,p] = RB[m,p] + X[m,p]"),
                "Y[p] = RA[M,p] - RB[M,p]",
            ],
            ["RA[0,p] = 0", "RA[m+1,p] = RA[m,p] + X[m,p]", "Y[p] = RA[M,p] - RA[M,p]"],
            "cse: RB computes what RA does; its readers read RA",
        ),
        (  # once B reads as A, D equals C
            [
                *("A[p] = X[m,p]", "B[p] = X[m,p]"),
                *("C[p] = A[p] * 2", "D[p] = B[p] * 2"),
                "Y[p] = C[p] + D[p]",
            ],
            ["A[p] = X[m,p]", "C[p] = A[p] * 2", "Y[p] = C[p] + C[p]"],
            "cse: D computes what C does; its readers read C",
        ),
        (
            ["D[p] = X[m,p] * 3", "Y[p] = X[m,p]"],
            ["Y[p] = X[m,p]"],
            "dce: removed D: no output depends on them",
        ),
    ],
)
def test_cse_and_dce(before: list[str], after: list[str], remark: str) -> None:
    outputs = "output Z[p]\n" * any(line.startswith("Z") for line in before)
    result, remarks = canonicalize(parse(CSE_HEADER + outputs + "\n".join(before)))
    assert einsums(result) == after
    assert remark in remarks


def test_cse_keeps_equal_outputs() -> None:
    cascade = parse(CSE_HEADER + "output Z[p]\nY[p] = X[m,p]\nZ[p] = X[m,p]")
    after, remarks = canonicalize(cascade)
    assert after == cascade
    assert remarks == ["cse: outputs Y and Z are equal; both kept"]


@pytest.mark.parametrize(
    ("options", "kept"),
    [
        ("fold=false", "QS[e,p] = Q[e,p] * rsqrt(E) * 1.4426950408889634"),
        ("exp2=false", "SN[m,p] = exp(QK[m,p] - GM[p])"),
        ("scale=false", "QK[m,p] = Q[e,p] * K[e,m] * 0.18033688011112042"),
        ("cse=false,dce=false", "SD2[p] = SN[m,p]"),
    ],
)
def test_each_rewrite_can_be_switched_off(options: str, kept: str) -> None:
    cascade = parse(print_cascade(attention_2pass(head_dim=64)) + "SD2[p] = SN[m,p]\n")
    assert parse_pipeline(f"canonicalize({options})") == (
        Canonicalize(**{k: v == "true" for k, v in (o.split("=") for o in options.split(","))}),
    )
    after, _ = canonicalize(cascade, f"canonicalize({options})")
    assert kept in einsums(after)


# ---------------------------------------------------------------------------------------------
# The library's attention, and every cascade of the analysis corpus

VARIANTS: list[dict[str, Any]] = [
    {},
    {"causal": True},
    {"batched": True},
    {"batched": True, "gqa_group": 2, "causal": True},
    {"head_dim": 64},
]
ATTENTION: dict[str, Callable[..., Cascade]] = {
    "3pass": attention_3pass,
    "2pass": attention_2pass,
    "1pass": attention_1pass,
    "flash": lambda **options: run_pipeline(attention_3pass(**options), "flash")[0],
}


@pytest.mark.parametrize("options", VARIANTS, ids=lambda o: ",".join(o) or "plain")
@pytest.mark.parametrize("name", ATTENTION)
def test_attention_in_flash_attention_2_form(name: str, options: dict[str, Any]) -> None:
    before = ATTENTION[name](**options)
    after, remarks = canonicalize(before)
    text = print_cascade(after)
    heads = "b,h," if options.get("batched") else ""
    scale = "0.18033688011112042" if options.get("head_dim") else "rsqrt(E) * 1.4426950408889634"
    assert f"QS[{heads}e,p] = Q[{heads}e,p] * {scale}\n" in text
    assert "exp(" not in text
    # Every exp2 reads scores already in base 2: none multiplies its exponent by log2(e).
    assert text.count("exp2(") == (1 if name in ("3pass", "2pass") else 2)
    assert "1.4426950408889634)" not in text
    assert remarks == []
    assert pass_counts(after) == pass_counts(before)


def test_rsqrt_of_a_known_head_dim_folds_to_0_125() -> None:
    after, _ = canonicalize(attention_3pass(head_dim=64), "canonicalize(exp2=false)")
    assert "QS[e,p] = Q[e,p] * 0.125" in einsums(after)


@pytest.mark.parametrize("path", CORPUS, ids=lambda p: p.stem)
def test_corpus_cascades(path: Path) -> None:
    before = parse_file(path)
    after, _ = canonicalize(before)
    assert pass_counts(after) == pass_counts(before)


@settings(max_examples=60, deadline=None)
@given(cascades(max_einsums=6))
def test_generated_cascades(cascade: Cascade) -> None:
    canonicalize(cascade)
