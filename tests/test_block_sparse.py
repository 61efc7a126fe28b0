"""The block-sparse pass, the interpreter's skipping of EMPTY tiles, the `sparse` declaration
and the cost of a block-sparse cascade: each checked against the dense masked cascade."""

from __future__ import annotations

import math

import numpy as np
import pytest
import sympy

from attncc.analysis import analyze, cascade_cost, evaluate, format_report
from attncc.analysis.block_sparse import density_symbol, tile_count_formula, tile_map
from attncc.analysis.report import bound_sizes
from attncc.analysis.sparsity import classify_tiles
from attncc.backends.numpy.reference import interpret
from attncc.differential import check_equivalent, random_inputs
from attncc.errors import ParseError, VerifyError
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
    # Random ids (0..3, unsorted): classified from per-tile minima and maxima, soundly.
    "document": masks.document(),
    "causal_document": masks.document(causal=True),
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


def test_a_size_is_not_a_key_tile_index() -> None:
    text = print_cascade(attention_1pass(causal=True, tile=4))
    text = text.replace("output AV[f,p] : f32", "output AV[f,p] : f32\nsparse BQK[M1,p//4]")
    with pytest.raises(ParseError, match="a key tile index, then queries // tile"):
        parse(text)


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
        ("sparse BQK[m1,p//X]", "the query tile uses size X, which no rank declares"),
        ("sparse BQK[m1,p//4]\nsparse BQK[m1,p//2]", "BQK is declared sparse more than once"),
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


HEAD = """cascade c
rank E = 2, M, P, M0 = 4
partition M -> M1, M0
input Q[e,p] : f32
input K[e,m] : f32
"""

# Cascades where skipping hidden tiles would change a result: the pass must keep them dense.
UNSAFE = {
    "a sum over queries adds 1 per hidden point": """output O[m1,m0] : f32
QK[m1,m0,p] = Q[e,p] * K[e,m1*M0+m0] where m1 * M0 + m0 <= p else 0
T[m1,m0,p] = QK[m1,m0,p] + 1
O[m1,m0] = T[m1,m0,p]
""",
    "a running update with a filter of its own": """output O[p] : f32
QK[m1,m0,p] = Q[e,p] * K[e,m1*M0+m0] where m1 * M0 + m0 <= p else -inf
LS[m1,p] = exp(QK[m1,m0,p])
R[0,p] = 0
R[m1+1,p] = R[m1,p] + LS[m1,p] where m1 == 0 else 5
O[p] = R[M1,p]
""",
    "a read of another tile": """output O[p] : f32
QK[m1,m0,p] = Q[e,p] * K[e,m1*M0+m0] where m1 * M0 + m0 <= p else -inf
SH[m1,m0,p] = QK[M1-1-m1,m0,p]
O[p] = exp(SH[m1,m0,p])
""",
    "per-tile values read after the loop": """output O[m,p] : f32
QK[m1,m0,p] = Q[e,p] * K[e,m1*M0+m0] where m1 * M0 + m0 <= p else -inf
T[m1,m0,p] = QK[m1,m0,p] + 1
O[m,p] = T[m//M0, m%M0, p]
""",
    "a running update that sums its previous value": """output O[] : f32
QK[m1,m0,p] = Q[e,p] * K[e,m1*M0+m0] where m1 * M0 + m0 <= p else -inf
R[0] = 0
R[m1+1] = R[m1] + exp(QK[m1,m0,p])
O[] = R[M1]
""",
    "a mask over tile indices alone": """output O[p] : f32
QK[m1,m0,p] = Q[e,p] * K[e,m1*M0+m0] where m1 <= p and m0 <= p else -inf
O[p] = sum(m1,m0) exp(QK[m1,m0,p])
""",
}

# Cascades where skipping is exact, including a running update reducing over the queries.
SAFE = {
    "a running sum of sums over queries": """output O[] : f32
QK[m1,m0,p] = Q[e,p] * K[e,m1*M0+m0] where m1 * M0 + m0 <= p else -inf
S[m1] = exp(QK[m1,m0,p])
R[0] = 0
R[m1+1] = R[m1] + S[m1]
O[] = R[M1]
""",
    "a max over queries of a -inf fill": """output O[m1,m0] : f32
QK[m1,m0,p] = Q[e,p] * K[e,m1*M0+m0] where m1 * M0 + m0 <= p else -inf
O[m1,m0] = max(p) QK[m1,m0,p]
""",
}


@pytest.mark.parametrize("name", sorted(UNSAFE))
def test_skipping_that_would_change_results_is_refused(name: str) -> None:
    dense = parse(HEAD + UNSAFE[name])
    result, records = run_pipeline(dense, "block-sparse(query_tile=2)")
    assert result.sparse == (), records[-1].remarks
    assert records[-1].remarks[0].startswith("QK kept dense: ")


@pytest.mark.parametrize("name", sorted(SAFE))
def test_skipping_that_changes_nothing_is_applied_and_exact(name: str) -> None:
    dense = parse(HEAD + SAFE[name])
    result, _ = run_pipeline(dense, "block-sparse(query_tile=2)")
    assert len(result.sparse) == 1
    check_equivalent(dense, result, trials=4)


def test_only_zero_over_zero_becomes_zero() -> None:
    """A count over a running sum that stays 0: n/0 is inf in the dense cascade and must
    stay inf; only rows that saw no key (0/0) become 0."""
    text = (
        HEAD
        + """output O[p] : f32
QK[m1,m0,p] = Q[e,p] * K[e,m1*M0+m0] where m1 * M0 + m0 <= p else -inf
Z[m1,p] = exp(QK[m1,m0,p]) * 0
N[m1,p] = exp(QK[m1,m0,p])
D[0,p] = 0
D[m1+1,p] = D[m1,p] + Z[m1,p]
C[0,p] = 0
C[m1+1,p] = C[m1,p] + N[m1,p]
O[p] = C[M1,p] / D[M1,p]
"""
    )
    dense = parse(text)
    result, _ = run_pipeline(dense, "block-sparse(query_tile=2)")
    assert len(result.sparse) == 1
    check_equivalent(dense, result, trials=3)


def test_a_density_that_depends_on_data_stays_a_symbol_in_reports() -> None:
    sparse, _ = run_pipeline(attention_1pass(mask=masks.document()), "block-sparse")
    report = format_report(analyze(sparse), {"M": 4096, "P": 4096, "E": 64, "F": 64})
    (mac,) = [line for line in report.splitlines() if line.strip().startswith("mac ")]
    assert mac.endswith("= 2.14748e+9*density_BQK")


def test_every_mask_is_tried_and_each_refusal_said() -> None:
    """Two masks in one loop: skipping the tiles of either would drop points of the other,
    so both stay dense, each with its reason."""
    text = (
        HEAD
        + """output O[p] : f32
output Z[p] : f32
X[m1,m0,p] = Q[e,p] * K[e,m1*M0+m0] where m1 * M0 + m0 <= p else -inf
Z[p] = sum(m1,m0) exp(X[m1,m0,p])
QK[m1,m0,p] = Q[e,p] * K[e,m1*M0+m0] where m1 * M0 + m0 >= p else -inf
O[p] = sum(m1,m0) exp(QK[m1,m0,p])
"""
    )
    result, records = run_pipeline(parse(text), "block-sparse(query_tile=2)")
    assert result.sparse == ()
    assert records[-1].remarks == (
        "X kept dense: QK has a filter of its own",
        "QK kept dense: X has a filter of its own",
    )


def test_the_pass_is_idempotent() -> None:
    once, _ = run_pipeline(attention_1pass(causal=True, tile=4), "block-sparse(query_tile=2)")
    twice, records = run_pipeline(once, "block-sparse(query_tile=2)")
    assert twice == once
    assert records[-1].remarks == ("BQK already block-sparse",)
