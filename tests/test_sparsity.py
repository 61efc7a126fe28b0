"""Tile classification (`attncc.analysis.sparsity`) against the brute-force oracle.

Every library mask, random combinations of them and hand-made predicates are classified on small
ragged problems (lengths not multiples of the tile, tiles of 1, tiles larger than the sequence,
query and key tiles that differ) and compared tile by tile with `mask_oracle.brute_force_classes`,
which evaluates the predicate at every point. Data masks are exact where their data allows
(packed document ids, block tables) and otherwise sound: never EMPTY where a point is visible,
never FULL where a point is masked, and `exact` False. Predicates outside the analysis are
refused with an AnalysisError that names the construct. `TileMap` and `BlockMask` are checked
against the class matrix they summarize.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import pytest
import sympy
from hypothesis import given, settings
from hypothesis import strategies as st
from mask_oracle import EMPTY, FULL, PARTIAL, brute_force_classes

from attncc.analysis import sparsity
from attncc.analysis.sparsity import classify_tiles
from attncc.analysis.tile_map import BlockMask, TileClass, TileMap
from attncc.errors import AnalysisError
from attncc.frontends import masks as mk
from attncc.ir import Access, Call, Const, Coord, Expr, Size, format_expr, index_symbol

M, P = Coord("m"), Coord("p")
Draw = Callable[[st.SearchStrategy], object]
# Tiles of 1, small tiles, and tiles larger than most of the lengths drawn.
TILES = st.one_of(st.integers(1, 9), st.integers(10, 48))


def c(value: float) -> Const:
    return Const(float(value))


def call(op: str, *args: Expr | int) -> Expr:
    return Call(op, tuple(c(a) if isinstance(a, int) else a for a in args))


# -- Comparing with the oracle. --------------------------------------------------------------


def classify(expr: Expr, shape: dict[str, int], data=None) -> tuple[TileMap, np.ndarray]:
    """The analysis's map and the oracle's classes for one problem `shape`."""
    tile_map = classify_tiles(expr, **shape, data=data)
    return tile_map, brute_force_classes(expr, **shape, data=data)


def describe(expr: Expr, shape: dict[str, int], wrong: np.ndarray) -> str:
    return f"{format_expr(expr)} on {shape}: (query tile, key tile) {wrong[:5].tolist()}"


def assert_exact(expr: Expr, shape: dict[str, int], data=None) -> TileMap:
    tile_map, expected = classify(expr, shape, data)
    assert tile_map.classes.shape == expected.shape
    wrong = np.argwhere(tile_map.classes != expected)
    assert not len(wrong), describe(expr, shape, wrong) + " differ"
    assert tile_map.exact
    return tile_map


def assert_sound(expr: Expr, shape: dict[str, int], data=None) -> TileMap:
    """EMPTY only where no point is visible, FULL only where none is masked; and where the map
    claims to be exact, it is."""
    tile_map, expected = classify(expr, shape, data)
    got = tile_map.classes
    missed = np.argwhere((got == EMPTY) & (expected != EMPTY))
    assert not len(missed), describe(expr, shape, missed) + " are EMPTY but have visible points"
    unmasked = np.argwhere((got == FULL) & (expected != FULL))
    assert not len(unmasked), describe(expr, shape, unmasked) + " are FULL but have masked points"
    if tile_map.exact:
        wrong = np.argwhere(got != expected)
        assert not len(wrong), describe(expr, shape, wrong) + " differ, yet the map says exact"
    return tile_map


def draw_shape(draw: Draw, key_len: int | None = None, query_len: int | None = None) -> dict:
    """Lengths (drawn up to 40 unless given) and independent tile sizes."""
    return {
        "key_len": key_len or draw(st.integers(1, 40)),
        "query_len": query_len or draw(st.integers(1, 40)),
        "key_tile": draw(TILES),
        "query_tile": draw(TILES),
    }


# -- Random parameters for every library mask. -----------------------------------------------
# Each returns the mask and the length of its token grid (None for a 1-D mask, which is
# defined for any key and query lengths).


def natten_axes(draw: Draw, ndim: int, max_length: int, strided: bool) -> dict:
    """Per-axis shape, kernel, stride, dilation and causality that NATTEN accepts:
    kernel * dilation <= length and stride <= kernel. An axis with a stride is not causal
    here: those masks have their own test, which holds one example of each."""
    axes: dict[str, list] = {"shape": [], "kernel": [], "stride": [], "dilation": [], "causal": []}
    for _ in range(ndim):
        length = draw(st.integers(1, max_length))
        dilation = draw(st.integers(1, max(length // 2, 1)))
        kernel = draw(st.integers(1, length // dilation))
        axes["shape"].append(length)
        axes["dilation"].append(dilation)
        axes["kernel"].append(kernel)
        stride = draw(st.integers(1, kernel)) if strided else 1
        axes["stride"].append(stride)
        # Causal axes with a stride: see test_causal_strided_neighborhood_is_classified.
        axes["causal"].append(draw(st.booleans()) if stride == 1 else False)
    return {name: tuple(values) for name, values in axes.items()}


def neighborhood(ndim: int, max_length: int, strided: bool):
    def make(draw: Draw) -> tuple[Expr, int]:
        a = natten_axes(draw, ndim, max_length, strided)
        args = dict(dilation=a["dilation"], causal=a["causal"])
        if ndim == 1:
            args = dict(dilation=a["dilation"][0], causal=a["causal"][0])
            shape, kernel, stride = a["shape"][0], a["kernel"][0], a["stride"][0]
        else:
            shape, kernel, stride = a["shape"], a["kernel"], a["stride"]
        if strided:
            mask = getattr(mk, f"generalized_neighborhood_{ndim}d")(shape, kernel, stride, **args)
        else:
            mask = getattr(mk, f"neighborhood_{ndim}d")(shape, kernel, **args)
        return mask, math.prod(a["shape"])

    return make


def block_pairs(draw: Draw, min_size: int) -> list[tuple[int, int]]:
    pair = st.tuples(st.integers(0, 7), st.integers(0, 7))
    return draw(st.lists(pair, min_size=min_size, max_size=5))


CAUSAL_STRIDED = {
    "1d": mk.generalized_neighborhood_1d(4, 2, 2, causal=True),
    "1d dilated": mk.generalized_neighborhood_1d(9, 3, 2, dilation=2, causal=True),
    "2d": mk.generalized_neighborhood_2d((4, 5), (2, 3), (2, 1), causal=(True, False)),
    "3d": mk.generalized_neighborhood_3d((2, 3, 4), 2, (1, 1, 2), causal=True),
}


@pytest.mark.parametrize("name", sorted(CAUSAL_STRIDED))
def test_causal_strided_neighborhood_is_classified(name):
    """Causal GNA with a stride: `m <= p and min(p // 2 * 2 + 1, 3) - m < 2` (the 1d case)
    relates m to both p and p // 2; eliminating m (coefficient 1) decides it exactly."""
    mask = CAUSAL_STRIDED[name]
    n = {"1d": 4, "1d dilated": 9, "2d": 20, "3d": 24}[name]
    assert_exact(mask, {"key_len": n, "query_len": n, "key_tile": 2, "query_tile": 3})


def halo(draw: Draw) -> tuple[Expr, int]:
    shape = (draw(st.integers(1, 8)), draw(st.integers(1, 8)))
    block = (draw(st.integers(1, 4)), draw(st.integers(1, 4)))
    halo_ = (draw(st.integers(0, 2)), draw(st.integers(0, 2)))
    return mk.halo_2d(shape, block, halo_), math.prod(shape)


AFFINE: dict[str, Callable[[Draw], tuple[Expr, int | None]]] = {
    "causal": lambda draw: (mk.causal(), None),
    "sliding_window": lambda draw: (
        mk.sliding_window(draw(st.integers(1, 12)), causal=draw(st.booleans())),
        None,
    ),
    "dilated_sliding_window": lambda draw: (
        mk.dilated_sliding_window(
            draw(st.integers(1, 6)), draw(st.integers(1, 4)), causal=draw(st.booleans())
        ),
        None,
    ),
    "prefix_lm": lambda draw: (mk.prefix_lm(draw(st.integers(0, 20))), None),
    "longformer": lambda draw: (
        mk.longformer(draw(st.integers(1, 10)), draw(st.integers(0, 4))),
        None,
    ),
    "block_diagonal": lambda draw: (mk.block_diagonal(draw(st.integers(1, 9))), None),
    "block_list": lambda draw: (
        mk.block_list(block_pairs(draw, 1), draw(st.integers(1, 6))),
        None,
    ),
    "bigbird": lambda draw: (
        mk.bigbird(
            draw(st.integers(1, 5)),
            window_blocks=draw(st.integers(1, 5)),
            global_blocks=draw(st.integers(0, 2)),
            random_pairs=block_pairs(draw, 0),
        ),
        None,
    ),
    "neighborhood_1d": neighborhood(1, 24, strided=False),
    "neighborhood_2d": neighborhood(2, 7, strided=False),
    "neighborhood_3d": neighborhood(3, 4, strided=False),
    "generalized_neighborhood_1d": neighborhood(1, 24, strided=True),
    "generalized_neighborhood_2d": neighborhood(2, 7, strided=True),
    "generalized_neighborhood_3d": neighborhood(3, 4, strided=True),
    "halo_2d": halo,
}
DATA_MASKS = {"document", "block_table"}


def test_every_library_mask_is_covered():
    assert set(AFFINE) | DATA_MASKS == set(mk.MASKS)


@pytest.mark.parametrize("name", sorted(AFFINE))
@settings(max_examples=20)
@given(data=st.data())
def test_library_mask_is_exact(name, data):
    mask, grid = AFFINE[name](data.draw)
    shape = draw_shape(data.draw, grid, grid)
    assert_exact(mask, shape)


# -- Data masks. -----------------------------------------------------------------------------


@st.composite
def packed_ids(draw: Draw) -> np.ndarray:
    """Packed sequences: document ids 0..D-1, sorted, each document of random length."""
    n = draw(st.integers(1, 40))
    starts = draw(st.lists(st.booleans(), min_size=n - 1, max_size=n - 1))
    return np.concatenate(([0], np.cumsum(starts, dtype=np.int64)))


@st.composite
def gapped_ids(draw: Draw) -> np.ndarray:
    """Sorted ids with at least one gap (0, 0, 5, 5, ...): tiles no longer hold every id
    between their smallest and largest."""
    n = draw(st.integers(2, 40))
    steps = draw(st.lists(st.sampled_from([0, 0, 1, 2, 5]), min_size=n - 1, max_size=n - 1))
    gap = draw(st.integers(0, n - 2))
    steps[gap] = draw(st.integers(2, 6))
    return np.concatenate(([0], np.cumsum(steps, dtype=np.int64)))


@st.composite
def unsorted_ids(draw: Draw) -> np.ndarray:
    n = draw(st.integers(2, 40))
    ids = np.array(draw(st.lists(st.integers(0, 4), min_size=n, max_size=n)))
    if np.all(np.diff(ids) >= 0):
        ids = ids[::-1].copy()
        if np.all(np.diff(ids) >= 0):  # constant: make one step go down
            ids[-1] = ids[0] - 1
    return ids


def doc_data(ids: np.ndarray) -> dict[str, np.ndarray]:
    return {"KDOC": ids, "QDOC": ids}


@settings(max_examples=40)
@given(ids=packed_ids(), data=st.data())
def test_document_with_packed_ids_is_exact(ids, data):
    shape = draw_shape(data.draw, len(ids), len(ids))
    assert_exact(mk.document(), shape, doc_data(ids))


@settings(max_examples=40)
@given(ids=packed_ids(), data=st.data())
def test_causal_document_is_sound_and_not_claimed_exact(ids, data):
    """Ids and positions are not independent: beside `m <= p` the map cannot promise."""
    shape = draw_shape(data.draw, len(ids), len(ids))
    tile_map = assert_sound(mk.document(causal=True), shape, doc_data(ids))
    assert not tile_map.exact


@settings(max_examples=40)
@given(ids=st.one_of(gapped_ids(), unsorted_ids()), causal=st.booleans(), data=st.data())
def test_document_with_other_ids_is_sound(ids, causal, data):
    shape = draw_shape(data.draw, len(ids), len(ids))
    tile_map = assert_sound(mk.document(causal=causal), shape, doc_data(ids))
    assert not tile_map.exact


def test_unsorted_document_ids_by_example():
    """Ids 0, 2 | 1, 1 in tiles of 2: the ranges [0, 2] and [1, 1] overlap but share no id, so
    from minima and maxima the off-diagonal tiles can only be PARTIAL (they are EMPTY)."""
    ids = np.array([0, 2, 1, 1])
    shape = {"key_len": 4, "query_len": 4, "key_tile": 2, "query_tile": 2}
    tile_map = assert_sound(mk.document(), shape, doc_data(ids))
    assert not tile_map.exact
    assert tile_map.classes.tolist() == [[PARTIAL, PARTIAL], [PARTIAL, FULL]]


def tile_for(draw: Draw, block: int) -> int:
    """A tile size that is a multiple of `block`, equal to it, a divisor of it, or none."""
    relation = draw(st.sampled_from(["block divides tile", "equal", "neither", "tile divides"]))
    if relation == "block divides tile":
        return block * draw(st.integers(2, 4))
    if relation == "equal":
        return block
    if relation == "tile divides":
        return draw(st.sampled_from([d for d in range(1, block + 1) if block % d == 0]))
    candidates = [t for t in range(1, 4 * block + 2) if t % block and block % t]
    return draw(st.sampled_from(candidates)) if candidates else block + 1


@settings(max_examples=40)
@given(data=st.data())
def test_block_table_is_exact(data):
    block = data.draw(st.integers(1, 6))
    key_len, query_len = data.draw(st.integers(1, 40)), data.draw(st.integers(1, 40))
    shape = {
        "key_len": key_len,
        "query_len": query_len,
        "key_tile": tile_for(data.draw, block),
        "query_tile": tile_for(data.draw, block),
    }
    seed = data.draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    table = rng.random((-(-query_len // block), -(-key_len // block))) < rng.random()
    dtype = data.draw(st.sampled_from([bool, np.int32]))
    assert_exact(mk.block_table(block, tensor="TOPK"), shape, {"TOPK": table.astype(dtype)})


@pytest.mark.parametrize("seed", range(6))
def test_table_with_own_divisors_and_comparison_is_exact(seed):
    """A hand-made table condition: T[m // 3, p // 2] >= 2 and 1 < T[...] (transposed indices,
    a different divisor per axis, the constant on either side)."""
    rng = np.random.default_rng(seed)
    key_len, query_len = int(rng.integers(1, 30)), int(rng.integers(1, 30))
    table = rng.integers(0, 4, size=(-(-key_len // 3), -(-query_len // 2)))
    m, p = index_symbol("m"), index_symbol("p")
    access = Access("T", (sympy.floor(m / 3), sympy.floor(p / 2)))
    shape = {
        "key_len": key_len,
        "query_len": query_len,
        "key_tile": int(rng.integers(1, 8)),
        "query_tile": int(rng.integers(1, 8)),
    }
    for expr in (call("ge", access, 2), call("lt", 1, access), access):
        assert_exact(expr, shape, {"T": table})


# -- Combinations. ---------------------------------------------------------------------------


def one_dimensional(draw: Draw) -> Expr:
    """A mask over the window family (comparisons of m - p and of m or p with constants):
    any and/or/not of these is in the analysis's reach."""
    name = draw(st.sampled_from(["causal", "sliding_window", "prefix_lm", "longformer"]))
    if name == "causal":
        return mk.causal()
    if name == "sliding_window":
        return mk.sliding_window(draw(st.integers(1, 12)), causal=draw(st.booleans()))
    if name == "prefix_lm":
        return mk.prefix_lm(draw(st.integers(0, 20)))
    return mk.longformer(draw(st.integers(1, 10)), draw(st.integers(0, 4)))


def window_family(draw: Draw) -> Expr:
    if draw(st.booleans()):
        return one_dimensional(draw)
    length = draw(st.integers(1, 40))
    kernel = draw(st.integers(1, length))
    return mk.neighborhood_1d(length, kernel, causal=draw(st.booleans()))


def block_family(draw: Draw, block: int) -> Expr:
    """Masks over p // block and m // block, for one block."""
    name = draw(st.sampled_from(["block_diagonal", "block_list", "bigbird"]))
    if name == "block_diagonal":
        return mk.block_diagonal(block)
    if name == "block_list":
        return mk.block_list(block_pairs(draw, 1), block)
    return mk.bigbird(
        block,
        window_blocks=draw(st.integers(1, 5)),
        global_blocks=draw(st.integers(0, 2)),
        random_pairs=block_pairs(draw, 0),
    )


def combine(draw: Draw, leaves: list[Expr]) -> Expr:
    """A random and/or tree over `leaves`, each leaf and the result negated now and then."""
    leaves = [mk.mask_not(x) if draw(st.booleans()) else x for x in leaves]
    while len(leaves) > 1:
        i = draw(st.integers(0, len(leaves) - 2))
        join = mk.mask_and if draw(st.booleans()) else mk.mask_or
        leaves[i : i + 2] = [join(leaves[i], leaves[i + 1])]
    return mk.mask_not(leaves[0]) if draw(st.integers(0, 3)) == 0 else leaves[0]


@settings(max_examples=40)
@given(data=st.data())
def test_combinations_are_exact(data):
    count = data.draw(st.integers(2, 3))
    if data.draw(st.booleans()):
        leaves = [window_family(data.draw) for _ in range(count)]
    else:
        block = data.draw(st.integers(1, 6))
        leaves = [block_family(data.draw, block) for _ in range(count)]
    assert_exact(combine(data.draw, leaves), draw_shape(data.draw))


@settings(max_examples=30)
@given(data=st.data())
def test_any_combination_is_exact_or_refused(data):
    """Library masks mixed freely (a window with a block mask, two block sizes): the analysis
    may refuse, naming what it cannot relate, but never answers wrongly."""
    names = data.draw(st.lists(st.sampled_from(sorted(AFFINE)), min_size=2, max_size=3))
    leaves, grids = zip(*(AFFINE[name](data.draw) for name in names), strict=True)
    grid = max((g for g in grids if g is not None), default=None)
    mask = combine(data.draw, list(leaves))
    shape = draw_shape(data.draw, grid, grid)
    try:
        tile_map = classify_tiles(mask, **shape)
    except AnalysisError as error:
        # causal with block_diagonal(4) relates m - p to m // 4: four digits in one component.
        reasons = ("cannot classify tiles exactly", "divided by two different constants")
        assert any(reason in str(error) for reason in reasons), str(error)
        return
    expected = brute_force_classes(mask, **shape)
    wrong = np.argwhere(tile_map.classes != expected)
    assert not len(wrong), describe(mask, shape, wrong) + " differ"


@settings(max_examples=40)
@given(ids=packed_ids(), data=st.data())
def test_document_combined_with_windows_is_sound(ids, data):
    mask = combine(data.draw, [mk.document(), one_dimensional(data.draw)])
    assert_sound(mask, draw_shape(data.draw, len(ids), len(ids)), doc_data(ids))


def test_exact_is_false_when_data_meets_positions():
    """Ids 0, 1, 2, 3 (one token a document) and m > p: no point is visible, since each
    document's only point is on the diagonal; combining the two as independent answers PARTIAL
    for the diagonal tiles, which is sound, but then the map must not claim `exact`."""
    ids = np.arange(4)
    mask = mk.mask_and(mk.document(), mk.mask_not(mk.causal()))
    shape = {"key_len": 4, "query_len": 4, "key_tile": 2, "query_tile": 2}
    assert_sound(mask, shape, doc_data(ids))


# -- Hand-made predicates. -------------------------------------------------------------------


def abs_(x: Expr) -> Expr:
    return call("abs", x)


def with_sizes(expr: Expr, sizes: dict[str, int]) -> Expr:
    """`expr` with each Size replaced by its value, for the oracle (which knows no sizes)."""
    if isinstance(expr, Size):
        return c(sizes[expr.rank])
    if isinstance(expr, Call):
        return Call(expr.op, tuple(with_sizes(a, sizes) for a in expr.args))
    return expr


DECIDED: dict[str, tuple[Expr, dict[str, int] | None]] = {
    "m <= p + 3": (call("le", M, call("add", P, 3)), None),
    "2*m <= p": (call("le", call("mul", 2, M), P), None),
    "m <= 2*p + 1": (call("le", M, call("add", call("mul", P, 2), 1)), None),
    "3*m >= p - 4": (call("ge", call("mul", 3, M), call("sub", P, 4)), None),
    "-m >= -p": (call("ge", call("neg", M), call("neg", P)), None),
    "m + p <= 20": (call("le", call("add", M, P), 20), None),
    "m // 4 == p // 4": (call("eq", call("floordiv", M, 4), call("floordiv", P, 4)), None),
    "(m % 8) // 2 == (p % 8) // 2": (
        call("eq", call("floordiv", call("mod", M, 8), 2), call("floordiv", call("mod", P, 8), 2)),
        None,
    ),
    "m % 3 != p % 3": (call("ne", call("mod", M, 3), call("mod", P, 3)), None),
    "m // 3 <= p // 3 + 1 and m % 3 <= p % 3": (
        call(
            "and",
            call("le", call("floordiv", M, 3), call("add", call("floordiv", P, 3), 1)),
            call("le", call("mod", M, 3), call("mod", P, 3)),
        ),
        None,
    ),
    "(m + p) % 4 == 1": (call("eq", call("mod", call("add", M, P), 4), 1), None),
    "(p - m) // 5 == 0": (call("eq", call("floordiv", call("sub", P, M), 5), 0), None),
    "min(p, 10) <= m": (call("le", call("min", P, 10), M), None),
    "max(m, 3) < p": (call("lt", call("max", M, 3), P), None),
    "abs(m - p) <= 2": (call("le", abs_(call("sub", M, P)), 2), None),
    "select(m < 5, p, m) >= 3": (call("ge", call("select", call("lt", M, 5), P, M), 3), None),
    "select(p < m, m - p, 2*(p - m)) <= 4": (
        call(
            "le",
            call("select", call("lt", P, M), call("sub", M, P), call("mul", 2, call("sub", P, M))),
            4,
        ),
        None,
    ),
    "p < 7": (call("lt", P, 7), None),
    "m < p + 0.5": (call("lt", M, call("add", P, c(0.5))), None),
    "m > p - 1.5": (call("gt", M, call("sub", P, c(1.5))), None),
    "p - m - 21 != abs(min(m, p // 2))": (
        call(
            "ne", call("sub", call("sub", P, M), 21), abs_(call("min", M, call("floordiv", P, 2)))
        ),
        None,
    ),
    "(p <= 0 or p <= m) and (m - p) // 1 > -m": (
        call(
            "and",
            call("or", call("le", P, 0), call("le", P, M)),
            call("gt", call("floordiv", call("sub", M, P), 1), call("neg", M)),
        ),
        None,
    ),
    "2*m <= p and m % 3 == 0": (
        call("and", call("le", call("mul", 2, M), P), call("eq", call("mod", M, 3), 0)),
        None,
    ),
    "m <= p and 2*m >= p": (call("and", call("le", M, P), call("ge", call("mul", 2, M), P)), None),
    "m // 4 <= p // 4 and m <= p + 1": (
        call(
            "and",
            call("le", call("floordiv", M, 4), call("floordiv", P, 4)),
            call("le", M, call("add", P, 1)),
        ),
        None,
    ),
    "1": (c(1), None),
    "0": (c(0), None),
    "m // W == p // W, W = 5": (
        call("eq", call("floordiv", M, Size("W")), call("floordiv", P, Size("W"))),
        {"W": 5},
    ),
}


@pytest.mark.parametrize("name", sorted(DECIDED))
@settings(max_examples=8)
@given(data=st.data())
def test_predicate_is_decided_exactly(name, data):
    expr, sizes = DECIDED[name]
    shape = draw_shape(data.draw)
    tile_map = classify_tiles(expr, **shape, sizes=sizes)
    expected = brute_force_classes(with_sizes(expr, sizes or {}), **shape)
    wrong = np.argwhere(tile_map.classes != expected)
    assert not len(wrong), describe(expr, shape, wrong) + " differ"
    assert tile_map.exact


def test_other_coordinate_names():
    expr = call("le", Coord("k"), Coord("q"))
    shape = {"key_len": 10, "query_len": 7, "key_tile": 3, "query_tile": 2}
    tile_map = classify_tiles(expr, **shape, key="k", query="q")
    assert np.array_equal(tile_map.classes, brute_force_classes(mk.causal(), **shape))


REFUSED: dict[str, tuple[Expr, str]] = {
    "m * p <= 3": (call("le", call("mul", M, P), 3), "multiplies two coordinates"),
    "m <= h": (call("le", M, Coord("h")), "depends on coordinate h"),
    "m % 3 == 0 and m % 4 == 1": (
        call("and", call("eq", call("mod", M, 3), 0), call("eq", call("mod", M, 4), 1)),
        "m is divided by two different constants",
    ),
    "3*m - 2*p <= 0": (
        call("le", call("sub", call("mul", 3, M), call("mul", 2, P)), 0),
        "relates m, p through m, 3m-2p, p, where no variable has coefficient 1",
    ),
    "m // p == 0": (call("eq", call("floordiv", M, P), 0), "divides by p, not a positive"),
    "m < inf": (call("lt", M, c(float("inf"))), "use a finite constant"),
    "1e19 * m <= p": (call("le", call("mul", c(1e19), M), P), "use a finite constant"),
    "m % 0 == 0": (call("eq", call("mod", M, 0), 0), "divides by 0"),
    "m / 2 <= p": (call("le", call("div", M, 2), P), "cannot use div"),
    "exp(m) <= p": (call("le", call("exp", M), P), "cannot use exp"),
    "m + p": (call("add", M, P), "is not a condition"),
    "m // W == 0 without W": (call("eq", call("floordiv", M, Size("W")), 0), "size W"),
}


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_predicate_is_refused(name):
    expr, message = REFUSED[name]
    with pytest.raises(AnalysisError, match=message):
        classify_tiles(expr, key_len=8, query_len=8, key_tile=2, query_tile=2)


SHAPE = {"key_len": 8, "query_len": 8, "key_tile": 2, "query_tile": 2}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"key_tile": 0}, "key_tile must be a positive integer, got 0"),
        ({"key_len": 8.5}, "key_len must be a positive integer, got 8.5"),
        ({"query_tile": -1}, "query_tile must be a positive integer, got -1"),
        ({"key_len": 0}, "key_len must be a positive integer, got 0"),
        ({"query_len": -3}, "query_len must be a positive integer, got -3"),
    ],
)
def test_bad_shape_is_refused(change, message):
    with pytest.raises(AnalysisError, match=message):
        classify_tiles(mk.causal(), **{**SHAPE, **change})


@pytest.mark.parametrize(
    ("mask", "data", "message"),
    [
        (mk.document(), None, "reads KDOC"),
        (mk.document(), {"KDOC": np.zeros(8)}, "reads QDOC"),
        (mk.document(), doc_data(np.zeros(5, dtype=int)), "KDOC must be 1-D with 8 values"),
        (mk.document(), doc_data(np.zeros((8, 1), dtype=int)), "must be 1-D"),
        (mk.block_table(2), None, "reads BLOCKS"),
        (mk.block_table(2), {"BLOCKS": np.ones((4, 3))}, "BLOCKS dimension 1 has 3 entries"),
        (mk.block_table(2), {"BLOCKS": np.ones((2, 4))}, "BLOCKS dimension 0 has 2 entries"),
        (mk.block_table(2), {"BLOCKS": np.ones(16)}, "BLOCKS has 1 dimensions"),
    ],
)
def test_bad_data_is_refused(mask, data, message):
    with pytest.raises(AnalysisError, match=message):
        classify_tiles(mask, **SHAPE, data=data)


# -- TileMap: counts and the picture. --------------------------------------------------------


def random_classes(seed: int, shape: tuple[int, int]) -> np.ndarray:
    rng = np.random.default_rng(seed)
    weights = rng.dirichlet(np.ones(3))
    return rng.choice([EMPTY, PARTIAL, FULL], size=shape, p=weights).astype(np.int8)


SHAPES = [(1, 1), (1, 7), (6, 1), (5, 9), (16, 16), (40, 3)]


@pytest.mark.parametrize(("seed", "shape"), list(enumerate(SHAPES)))
def test_counts_and_density(seed, shape):
    classes = random_classes(seed, shape)
    tile_map = TileMap(
        classes, key_len=shape[1] * 4, query_len=shape[0] * 4, key_tile=4, query_tile=4
    )
    counts = {cls: int(np.sum(classes == cls)) for cls in TileClass}
    assert {cls: tile_map.count(cls) for cls in TileClass} == counts
    assert sum(counts.values()) == classes.size
    assert tile_map.nonempty == counts[TileClass.PARTIAL] + counts[TileClass.FULL]
    assert tile_map.density == pytest.approx(tile_map.nonempty / classes.size)


def test_causal_picture():
    tile_map = classify_tiles(mk.causal(), key_len=256, query_len=256, key_tile=64, query_tile=64)
    assert tile_map.to_string() == "\n".join(
        [
            "4x4 tiles of 64x64: 6 full, 4 partial, 6 empty, density 0.6250",
            "░░",
            "██░░",
            "████░░",
            "██████░░",
        ]
    )


def test_picture_of_ragged_tiles_and_empty_rows():
    """Rows are right-stripped (an all-EMPTY row is blank); the header gives query x key."""
    tile_map = classify_tiles(
        call("and", call("le", M, P), call("ge", P, 5)),
        key_len=10,
        query_len=9,
        key_tile=5,
        query_tile=3,
    )
    assert tile_map.to_string().split("\n") == [
        "3x2 tiles of 3x5: 1 full, 3 partial, 2 empty, density 0.6667",
        "",
        "░░░░",
        "██░░",
    ]


def test_coarse_picture_is_the_picture_at_the_coarser_tile():
    """128 tiles a side shown at 64: each character pair covers 2x2 tiles and shows the class
    of their union, which is the class of the tile twice as large."""
    fine = classify_tiles(
        mk.sliding_window(100), key_len=1024, query_len=1000, key_tile=8, query_tile=8
    )
    coarse = classify_tiles(
        mk.sliding_window(100), key_len=1024, query_len=1000, key_tile=16, query_tile=16
    )
    header, *rows = fine.to_string().split("\n")
    assert header.startswith("125x128 tiles of 8x8 (1 character pair = 2x2 tiles): ")
    assert f"{fine.count(TileClass.FULL)} full," in header
    assert rows == coarse.to_string().split("\n")[1:]


@pytest.mark.parametrize("seed", range(4))
def test_coarse_cells_summarize_their_tiles(seed):
    rows, cols = 70 + 11 * seed, 150 - 13 * seed
    classes = random_classes(seed, (rows, cols))
    classes[:20, :20] = FULL  # whole FULL and EMPTY cells as well as mixed ones
    classes[20:40, 20:40] = EMPTY
    tile_map = TileMap(classes, key_len=cols, query_len=rows, key_tile=1, query_tile=1)
    step = -(-max(rows, cols) // 40)
    lines = tile_map.to_string(max_tiles=40).split("\n")[1:]
    assert len(lines) == -(-rows // step)
    glyphs = {FULL: "██", PARTIAL: "░░", EMPTY: "  "}
    for i, line in enumerate(lines):
        expected = ""
        for j in range(0, cols, step):
            block = classes[i * step : (i + 1) * step, j : j + step]
            union = FULL if np.all(block == FULL) else PARTIAL if np.any(block) else EMPTY
            expected += glyphs[union]
        assert line == expected.rstrip()


# -- BlockMask: the lists reproduce the class matrix. ----------------------------------------


def assert_lists(lists, selected: np.ndarray) -> None:
    assert lists.counts.dtype == np.int32 and lists.indices.dtype == np.int32
    assert lists.counts.shape == (selected.shape[0],)
    assert lists.indices.shape == selected.shape
    for i, row in enumerate(selected):
        listed = lists.indices[i, : lists.counts[i]]
        assert listed.tolist() == np.flatnonzero(row).tolist()


@pytest.mark.parametrize(("seed", "shape"), list(enumerate(SHAPES)))
def test_block_mask_lists(seed, shape):
    classes = random_classes(100 + seed, shape)
    tile_map = TileMap(
        classes, key_len=shape[1] * 3, query_len=shape[0] * 5, key_tile=3, query_tile=5
    )
    block_mask = tile_map.block_mask()
    assert isinstance(block_mask, BlockMask)
    assert (block_mask.key_tile, block_mask.query_tile) == (3, 5)
    assert_lists(block_mask.kv, classes == PARTIAL)
    assert_lists(block_mask.full_kv, classes == FULL)
    assert_lists(block_mask.q, (classes == PARTIAL).T)
    assert_lists(block_mask.full_q, (classes == FULL).T)


def test_block_mask_of_an_empty_map():
    classes = np.zeros((3, 4), dtype=np.int8)
    block_mask = TileMap(classes, 4, 3, 1, 1).block_mask()
    for lists in (block_mask.kv, block_mask.full_kv, block_mask.q, block_mask.full_q):
        assert not lists.counts.any()


# -- Scale. ----------------------------------------------------------------------------------


def test_causal_at_long_context():
    n, tile = 262144, 128
    t = n // tile
    tile_map = classify_tiles(mk.causal(), key_len=n, query_len=n, key_tile=tile, query_tile=tile)
    assert tile_map.classes.shape == (t, t)
    assert tile_map.nonempty == t * (t + 1) // 2
    assert tile_map.count(TileClass.FULL) == t * (t - 1) // 2
    assert tile_map.count(TileClass.PARTIAL) == t
    block_mask = tile_map.block_mask()
    assert np.all(block_mask.kv.counts == 1)
    assert np.array_equal(block_mask.kv.indices[:, 0], np.arange(t))
    assert np.array_equal(block_mask.full_kv.counts, np.arange(t))
    assert np.array_equal(block_mask.full_q.counts, np.arange(t)[::-1])


@pytest.mark.parametrize("name", sorted(set(AFFINE) - {"document"}))
@settings(max_examples=6)
@given(data=st.data())
def test_two_level_classification_is_exact(name, data):
    """Coarse tiles first, then the tiles of PARTIAL coarse ones: the same classes."""
    expr, n = AFFINE[name](data.draw)
    shape = draw_shape(data.draw, n, n)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(sparsity, "COARSE_FROM", 1)
        patch.setattr(sparsity, "COARSE", data.draw(st.integers(2, 3)))
        tile_map = classify_tiles(expr, **shape)
    expected = brute_force_classes(expr, **shape)
    wrong = np.argwhere(tile_map.classes != expected)
    assert not len(wrong), describe(expr, shape, wrong) + " differ"
