"""The tiled NumPy path against the float64 reference, for every variant in lowering_cases.

Shapes are ragged against the tiles (the last query and key tiles are partial) and tile sizes
vary, including tiles that do not divide one another, so the block lists, FULL/PARTIAL split
and partial edges are all exercised."""

from __future__ import annotations

import numpy as np
import pytest
from lowering_cases import CASES, Case, inputs_for, reference, relative_error, sizes

from attncc.backends.numpy.tiled import lower_tiled, numpy_source, run_tiled
from attncc.backends.schedule import retile
from attncc.errors import LoweringError
from attncc.frontends.library import attention_3pass
from attncc.ir import parse, print_cascade
from attncc.passes import run_pipeline

TILES = [(None, None), (64, 48), (32, 128)]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
@pytest.mark.parametrize(("query_tile", "key_tile"), TILES)
def test_numpy_path_matches_the_float64_reference(
    case: Case, query_tile: int | None, key_tile: int | None
) -> None:
    _, lowered = case.cascades()
    n = 90 if case.name == "neighborhood_2d" else 301
    inputs, bound = inputs_for(lowered, sizes(n), seed=1, dtype=np.float32)
    expected = reference(case, inputs, bound)
    actual = run_tiled(lowered, inputs, query_tile=query_tile, key_tile=key_tile)
    assert actual.keys() == expected.keys()
    for name, values in actual.items():
        assert values.dtype == np.float32
        assert relative_error(values, expected[name]) < 1e-5, name


def test_float64_inputs_are_computed_in_float64() -> None:
    _, lowered = CASES[1].cascades()
    inputs, bound = inputs_for(lowered, sizes(200), seed=2)
    actual = run_tiled(lowered, inputs, query_tile=64, key_tile=32)["AV"]
    assert actual.dtype == np.float64
    assert relative_error(actual, reference(CASES[1], inputs, bound)["AV"]) < 1e-12


def test_rows_with_no_visible_key_give_zero() -> None:
    """A document mask whose query ids match no key id: every row is fully masked."""
    _, lowered = next(c for c in CASES if c.name == "document").cascades()
    inputs, _ = inputs_for(lowered, sizes(130), seed=3, dtype=np.float32)
    inputs["QDOC"] = np.full_like(inputs["QDOC"], 10_000)
    assert not run_tiled(lowered, inputs, query_tile=64, key_tile=64)["AV"].any()


def test_emitted_source_skips_mask_work_on_full_tiles() -> None:
    _, lowered = next(c for c in CASES if c.name == "causal").cascades()
    source = numpy_source(lower_tiled(lowered, query_tile=128, key_tile=128))
    full, partial = source.split("if full[qt, j]:")[1].split("else:")[:2]
    assert "<=" not in full
    assert "<=" in partial
    compile(source, "kernel.py", "exec")


def test_retiling_keeps_what_depends_on_the_tile_size() -> None:
    text = print_cascade(run_pipeline(attention_3pass(), "flash")[0])
    for old, new in [
        ("* BK[e,m1,m0]", "* BK[e,m1,m0] * M0"),
        ("- RM[m1+1,p]))", "- RM[m1+1,p] + m0))"),
    ]:
        assert old in text
        with pytest.raises(LoweringError, match="key tile size M0"):
            retile(parse(text.replace(old, new, 1)), key_tile=128)


def test_a_cascade_that_is_not_one_pass_is_refused_with_the_reason() -> None:
    with pytest.raises(LoweringError, match="run the flash pipeline"):
        run_tiled(attention_3pass(), {})
