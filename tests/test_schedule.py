"""The loop nest of a one-pass cascade: which Einsum runs where, and refusals with reasons."""

from __future__ import annotations

import pytest

from attncc.backends.schedule import schedule
from attncc.errors import LoweringError
from attncc.frontends.library import attention_1pass, attention_3pass
from attncc.ir import Einsum, parse, print_cascade
from attncc.passes import run_pipeline


def names(einsums: tuple[Einsum, ...]) -> list[str]:
    return [e.tensor for e in einsums]


def test_flash_pipeline_output_is_one_loop_nest() -> None:
    cascade, _ = run_pipeline(
        attention_3pass(causal=True, batched=True, gqa_group=2), "flash-sparse,canonicalize"
    )

    nest = schedule(cascade)

    assert (nest.query, nest.query_tile, nest.grid) == ("p", 64, ("b", "h"))
    assert names(nest.prologue) == ["QS"]
    assert names(nest.loads) == ["BK", "BV"]
    assert names(nest.body) == [
        "QK", "LM", "RM", "SN", "LSD", "LSNV", "PRM", "PSD", "RSD", "PSNV", "RSNV",
    ]  # fmt: skip
    assert names(nest.carried) == ["RM", "RSD", "RSNV"]
    assert names(nest.epilogue) == ["AV"]
    assert nest.sparse == cascade.sparse[0]


def test_dense_library_cascade_tiles_queries_by_the_option() -> None:
    nest = schedule(attention_1pass(), query_tile=128)
    assert (nest.query, nest.query_tile, nest.grid, nest.sparse) == ("p", 128, (), None)


def test_whatever_reads_the_results_runs_after_the_loop() -> None:
    text = print_cascade(attention_1pass()) + "Y[f,p] = AV[f,p] * 2\n"
    text = text.replace("output AV[f,p] : f32", "output Y[f,p] : f32")
    nest = schedule(parse(text))
    assert names(nest.epilogue) == ["AV", "Y"]


@pytest.mark.parametrize(
    ("pipeline", "message"),
    [
        ("", "runs over exactly one partitioned key rank"),
        ("partition", "GM reduces over all of M1, and SN reads it inside the same key loop"),
    ],
)
def test_cascades_that_are_not_one_pass_are_refused(pipeline: str, message: str) -> None:
    cascade = attention_3pass()
    if pipeline:
        cascade, _ = run_pipeline(cascade, pipeline)
    with pytest.raises(LoweringError, match=message):
        schedule(cascade)


def test_a_total_over_the_key_tiles_is_carried_through_the_loop() -> None:
    text = print_cascade(attention_1pass()) + "T[p] = SLD[m1,p]\n"
    text = text.replace("output AV[f,p] : f32", "output AV[f,p] : f32\noutput T[p] : f32")
    nest = schedule(parse(text))
    assert names(nest.accumulated) == ["T"]
    assert "T" not in names(nest.epilogue)


def test_a_total_read_inside_the_loop_needs_another_pass() -> None:
    text = print_cascade(attention_1pass()) + "T[p] = SLD[m1,p]\nU[m1,p] = SLD[m1,p] / T[p]\n"
    text = text.replace("output AV[f,p] : f32", "output AV[f,p] : f32\noutput U[m1,p] : f32")
    with pytest.raises(LoweringError, match="U reads it inside the same key loop"):
        schedule(parse(text))


def test_per_tile_values_do_not_outlive_the_loop() -> None:
    text = print_cascade(attention_1pass()) + "T[p] = LM[0,p]\n"
    text = text.replace("output AV[f,p] : f32", "output AV[f,p] : f32\noutput T[p] : f32")
    with pytest.raises(LoweringError, match="T reads LM after the key loop"):
        schedule(parse(text))
