"""The block-sparse pass, the interpreter's skipping of EMPTY tiles, the `sparse` declaration
and the cost of a block-sparse cascade: each checked against the dense masked cascade."""

from __future__ import annotations

import math

import numpy as np
import pytest
import sympy

from attncc.analysis import analyze, cascade_cost, evaluate
from attncc.analysis.block_sparse import density_symbol, tile_count_formula, tile_map
from attncc.analysis.report import bound_sizes
from attncc.analysis.sparsity import classify_tiles
from attncc.backends.numpy.reference import interpret
from attncc.differential import check_equivalent, random_inputs
from attncc.errors import VerifyError
from attncc.frontends import masks
from attncc.frontends.library import attention_1pass, attention_3pass
from attncc.ir import Call, Const, Coord, Expr, parse, print_cascade, verify
from attncc.passes import run_pipeline

FLASH = "defer-div,partition(tile=4),running-reduce,dce,canonicalize,block-sparse(query_tile=3)"

MASKS: dict[str, Expr] = {
    "causal": masks.causal(),
    "sliding_window": masks.sliding_window(5),
    "symmetric_window": masks.sliding_window(4, causal=False),
    "dilated_window": masks.dilated_sliding_window(3, 2),
    "prefix_lm": masks.prefix_lm(5),
    "longformer": masks.longformer(4, 2),
    "block_diagonal": masks.block_diagonal(5),
    "neighborhood_2d": masks.neighborhood_2d((4, 5), 3),
    "halo_2d": masks.halo_2d((4, 5), 2, 1),
    "gna_1d": masks.generalized_neighborhood_1d(20, 5, 2),
    "anti_causal": masks.mask_not(masks.causal()),
}


@pytest.mark.parametrize("name", sorted(MASKS))
def test_flash_pipeline_with_block_sparse_computes_the_dense_mask(name: str) -> None:
    dense = attention_3pass(mask=MASKS[name], head_dim=4, value_dim=3)
    sparse, records = run_pipeline(dense, FLASH)
    assert records[-1].remarks[0] == "QK skips EMPTY tiles of M1 x 3"
    assert len(sparse.sparse) == 1
    check_equivalent(dense, sparse, trials=4)


@pytest.mark.parametrize("name", ["causal", "neighborhood_2d", "anti_causal"])
def test_block_sparse_on_the_library_1pass_cascade(name: str) -> None:
    dense = attention_1pass(mask=MASKS[name], tile=4, head_dim=4, value_dim=3)
    sparse, _ = run_pipeline(dense, "block-sparse(query_tile=2)")
    check_equivalent(dense, sparse, trials=4)


def test_a_partitioned_3pass_cascade_skips_tiles_too() -> None:
    """The proof is not tied to running updates: totals over m1 (GM, SD) and A = SN/SD get
    nothing from a hidden tile either."""
    dense = attention_3pass(causal=True, head_dim=4, value_dim=3)
    sparse, records = run_pipeline(dense, "partition(tile=4),block-sparse(query_tile=4)")
    assert records[-1].remarks == ("QK skips EMPTY tiles of M1 x 4",)
    check_equivalent(dense, sparse, trials=4)


def keys_from(first: int) -> Expr:
    """Keys m >= first, causally: queries before `first` see no key at all."""
    return Call("and", (masks.causal(), Call("ge", (Coord("m"), Const(float(first))))))


def test_rows_with_no_visible_key_give_zero_not_nan() -> None:
    dense = attention_1pass(mask=keys_from(5), tile=4, head_dim=4, value_dim=3)
    sparse, records = run_pipeline(dense, "block-sparse(query_tile=4)")
    assert "AV: rows with no visible key give 0" in records[-1].remarks
    sizes = {"M": 11, "P": 9}
    inputs = random_inputs(dense, sizes, np.random.default_rng(0))

    before = interpret(dense, inputs, sizes)["AV"]
    after = interpret(sparse, inputs, sizes)["AV"]

    assert np.isnan(before[:, :5]).all()
    assert (after[:, :5] == 0).all()
    np.testing.assert_allclose(after[:, 5:], before[:, 5:], rtol=1e-6)


def test_skipped_tiles_are_left_out_of_the_loop() -> None:
    """Per-tile values of a hidden tile are never computed: they hold the fill, while the
    dense cascade computes them (as -inf maxima)."""
    dense = attention_1pass(causal=True, tile=4, head_dim=4, value_dim=3)
    sparse, _ = run_pipeline(dense, "block-sparse(query_tile=4)")
    sizes = {"M": 8, "P": 8}
    inputs = random_inputs(dense, sizes, np.random.default_rng(1))
    slnv = interpret(sparse, inputs, sizes, keep_temporaries=True)["SLNV"]
    # Key tile 1 (keys 4..7) is hidden from query tile 0 (queries 0..3): SLNV there is the
    # fill of an Einsum outside its domain (0), and key tile 0 is visible to every query.
    assert (slnv[:, 1, :4] == 0).all()
    assert (slnv[:, 0, :] != 0).any()


def masked_with_zero_fill() -> str:
    """3-pass attention whose mask writes 0, not -inf: exp(0) = 1 would reach the sums."""
    dense = print_cascade(attention_3pass(causal=True, head_dim=4, value_dim=3))
    return dense.replace("else -inf", "else 0")


def test_a_mask_whose_hidden_tiles_still_count_is_kept_dense() -> None:
    dense = parse(masked_with_zero_fill())
    result, records = run_pipeline(dense, "partition(tile=4),block-sparse")
    assert result.sparse == ()
    (remark,) = records[-1].remarks
    assert remark.startswith("QK kept dense: ")
    assert remark.endswith("GM adds 0, not -oo, for a hidden tile")


def test_without_a_mask_the_pass_changes_nothing() -> None:
    dense = attention_1pass(tile=4)
    result, records = run_pipeline(dense, "block-sparse")
    assert result == dense
    assert records[-1].remarks == ("no mask over a partitioned key rank and one query",)


def test_the_sparse_line_round_trips() -> None:
    sparse, _ = run_pipeline(attention_1pass(causal=True), "block-sparse(query_tile=128)")
    text = print_cascade(sparse)
    assert "sparse BQK[m1,p//128]" in text
    assert parse(text) == sparse


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("sparse BK[m1,p//4]", "BK must be written by an Einsum with a filter"),
        ("sparse BQK[m0,p//4]", "M0 is not the outer rank of a partition"),
        ("sparse BQK[m1,f//4]", "BQK does not iterate over f"),
        ("sparse BQK[m1,e//4]", "the mask of BQK reads index p; a block-sparse mask may read only"),
    ],
)
def test_bad_sparse_lines_are_reported(line: str, message: str) -> None:
    text = print_cascade(attention_1pass(causal=True, tile=4))
    text = text.replace("output AV[f,p] : f32", f"output AV[f,p] : f32\n{line}")
    with pytest.raises(VerifyError, match=message):
        verify(parse(text, filename="bad.ein"))


def test_costs_count_only_tiles_the_mask_does_not_hide() -> None:
    sparse, _ = run_pipeline(attention_1pass(causal=True, tile=64), "block-sparse(query_tile=64)")
    sizes = {"M": 256, "P": 256, "E": 64, "F": 64}
    density = tile_map(sparse, sparse.sparse[0], {**sizes, "M0": 64}).density
    assert density == 10 / 16

    cost = cascade_cost(sparse)
    macs = dict(cost.totals())["mac"]
    assert density_symbol(sparse.sparse[0]) in macs.free_symbols
    assert evaluate(macs, bound_sizes(sparse, sizes)) == 2 * 64 * 256 * 256 * density
    dense_macs = dict(cascade_cost(attention_1pass(causal=True, tile=64)).totals())["mac"]
    assert evaluate(dense_macs, {**sizes, "M0": 64}) == 2 * 64 * 256 * 256
    assert analyze(sparse).cost == cost


@pytest.mark.parametrize(
    ("mask", "expected"),
    [
        (masks.causal(), "N**2/8192 + N/128"),
        (masks.sliding_window(256), "5*N/64 - 10"),
        (masks.block_diagonal(256), "N/16"),
        (masks.prefix_lm(100), "N**2/8192 + N/128 + 1"),
    ],
)
def test_closed_form_tile_counts_hold_beyond_the_samples(mask: Expr, expected: str) -> None:
    found = tile_count_formula(mask, key_tile=64, query_tile=64)
    assert found is not None
    formula, start = found
    assert str(formula) == expected
    n = sympy.Symbol("N", positive=True, integer=True)
    for length in (start, 64 * 100, 256 * 301):
        tiles = classify_tiles(mask, key_len=length, query_len=length, key_tile=64, query_tile=64)
        assert formula.subs(n, length) == tiles.nonempty


def test_causal_density_tends_to_one_half() -> None:
    found = tile_count_formula(masks.causal(), key_tile=128, query_tile=128)
    assert found is not None
    formula, _ = found
    n = sympy.Symbol("N", positive=True, integer=True)
    density = formula / (n / 128) ** 2
    assert sympy.limit(density, n, sympy.oo) == sympy.Rational(1, 2)
    assert math.isclose(float(density.subs(n, 128 * 16)), 136 / 256)
