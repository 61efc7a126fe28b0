"""The mask library against independent definitions.

Every mask is evaluated at every (query, key) point of a small problem by the brute-force oracle
(`mask_oracle.evaluate_mask`) and compared with a plain-Python statement of its definition that
never touches the IR: the set of keys each query may attend. Neighborhood attention is checked
against a direct transcription of NATTEN's rule (dilation groups listed explicitly, the window
start clamped per query, per axis), exhaustively in 1-D and on random grids in 2-D and 3-D.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable

import numpy as np
import pytest
from mask_oracle import EMPTY, FULL, PARTIAL, brute_force_classes, evaluate_mask

from attncc.frontends import masks as mk
from attncc.ir import Call, Const, Expr, format_expr, parse, verify, walk

KeysOf = Callable[[int], Iterable[int]]


def allowed_matrix(n: int, keys_of: KeysOf) -> np.ndarray:
    """[query, key] booleans: query p may attend exactly the in-range keys of keys_of(p)."""
    allowed = np.zeros((n, n), dtype=bool)
    for p in range(n):
        for m in keys_of(p):
            if 0 <= m < n:
                allowed[p, m] = True
    return allowed


def evaluated(expr: Expr, n: int, data: dict[str, np.ndarray] | None = None) -> np.ndarray:
    """[query, key] booleans of the mask, by the oracle."""
    return evaluate_mask(expr, np.arange(n)[None, :], np.arange(n)[:, None], data)


def assert_same(expr: Expr, expected: np.ndarray, data: dict[str, np.ndarray] | None = None):
    got = evaluated(expr, len(expected), data)
    wrong = np.argwhere(got != expected)
    assert not len(wrong), f"{format_expr(expr)}: (query, key) {wrong[:5].tolist()} differ"


SEEDS = range(6)


# -- One-dimensional and block masks. --------------------------------------------------------


def test_causal():
    assert_same(mk.causal(), allowed_matrix(13, lambda p: range(p + 1)))


@pytest.mark.parametrize("seed", SEEDS)
def test_sliding_window(seed):
    rng = np.random.default_rng(seed)
    n, w = int(rng.integers(1, 30)), int(rng.integers(1, 12))
    assert_same(mk.sliding_window(w), allowed_matrix(n, lambda p: range(p - w + 1, p + 1)))
    half = w // 2
    symmetric = allowed_matrix(n, lambda p: range(p - half, p + half + 1))
    assert_same(mk.sliding_window(w, causal=False), symmetric)


@pytest.mark.parametrize("seed", SEEDS)
def test_dilated_sliding_window(seed):
    rng = np.random.default_rng(seed)
    n, w, d = int(rng.integers(1, 30)), int(rng.integers(1, 8)), int(rng.integers(1, 5))
    causal = allowed_matrix(n, lambda p: {p - t * d for t in range(w)})
    assert_same(mk.dilated_sliding_window(w, d), causal)
    symmetric = allowed_matrix(n, lambda p: {p + t * d for t in range(-(w // 2), w // 2 + 1)})
    assert_same(mk.dilated_sliding_window(w, d, causal=False), symmetric)


@pytest.mark.parametrize("prefix", [0, 1, 5, 20])
def test_prefix_lm(prefix):
    expected = allowed_matrix(16, lambda p: set(range(prefix)) | set(range(p + 1)))
    assert_same(mk.prefix_lm(prefix), expected)


@pytest.mark.parametrize("seed", SEEDS)
def test_document(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 30))
    doc = np.sort(rng.integers(0, 4, size=n))
    data = {"KDOC": doc, "QDOC": doc}
    same = allowed_matrix(n, lambda p: [m for m in range(n) if doc[m] == doc[p]])
    assert_same(mk.document(), same, data)
    causal = allowed_matrix(n, lambda p: [m for m in range(p + 1) if doc[m] == doc[p]])
    assert_same(mk.document(causal=True), causal, data)


@pytest.mark.parametrize("seed", SEEDS)
def test_longformer(seed):
    rng = np.random.default_rng(seed)
    n, w, g = int(rng.integers(1, 30)), int(rng.integers(1, 10)), int(rng.integers(0, 4))

    def keys(p: int) -> set[int]:
        if p < g:
            return set(range(n))
        return set(range(p - w // 2, p + w // 2 + 1)) | set(range(g))

    assert_same(mk.longformer(w, g), allowed_matrix(n, keys))


@pytest.mark.parametrize("seed", SEEDS)
def test_block_diagonal(seed):
    rng = np.random.default_rng(seed)
    n, b = int(rng.integers(1, 30)), int(rng.integers(1, 9))
    start = lambda p: p - p % b  # noqa: E731
    assert_same(mk.block_diagonal(b), allowed_matrix(n, lambda p: range(start(p), start(p) + b)))


def block_keys(blocks: Iterable[int], b: int) -> set[int]:
    return {m for j in blocks for m in range(j * b, (j + 1) * b)}


@pytest.mark.parametrize("seed", SEEDS)
def test_block_list_and_table(seed):
    rng = np.random.default_rng(seed)
    n, b = int(rng.integers(1, 30)), int(rng.integers(1, 6))
    nb = -(-n // b)
    table = rng.random((nb, nb)) < 0.4
    table[0, 0] = True  # a block list is never empty
    pairs = [(int(i), int(j)) for i, j in np.argwhere(table)]
    expected = allowed_matrix(n, lambda p: block_keys(np.flatnonzero(table[p // b]), b))
    assert_same(mk.block_list(pairs, b), expected)
    assert_same(mk.block_table(b), expected, {"BLOCKS": table.astype(np.int32)})
    assert_same(mk.block_table(b, tensor="TOPK"), expected, {"TOPK": table})


@pytest.mark.parametrize("seed", SEEDS)
def test_bigbird(seed):
    rng = np.random.default_rng(seed)
    n, b = int(rng.integers(1, 40)), int(rng.integers(1, 6))
    window, globals_ = int(rng.integers(1, 6)), int(rng.integers(0, 3))
    nb = -(-n // b)
    pairs = {(int(rng.integers(nb)), int(rng.integers(nb))) for _ in range(3)}

    def keys(p: int) -> set[int]:
        qb = p // b
        chosen = {kb for kb in range(nb) if abs(qb - kb) <= window // 2 or (qb, kb) in pairs}
        chosen |= set(range(nb)) if qb < globals_ else set(range(globals_))
        return block_keys(chosen, b)

    mask = mk.bigbird(b, window_blocks=window, global_blocks=globals_, random_pairs=pairs)
    assert_same(mask, allowed_matrix(n, keys))


def test_combinators():
    n = 20
    window, prefix = mk.sliding_window(5), mk.prefix_lm(3)
    a, b = evaluated(window, n), evaluated(prefix, n)
    assert_same(mk.mask_and(window, prefix), a & b)
    assert_same(mk.mask_or(window, prefix), a | b)
    assert_same(mk.mask_not(window), ~a)
    assert_same(mk.mask_and(window), a)


# -- Neighborhood attention: a direct transcription of NATTEN's rule. ------------------------


def natten_axis(length: int, kernel: int, stride: int, dilation: int, causal: bool) -> np.ndarray:
    """[query, key] booleans on one axis, per NATTEN (natten/backends/flex.py, get_na_flex_mask).

    The query's dilation group is listed explicitly; the stride group's leader is its centre
    query (non-causal) or its last (causal), capped at the group's end; the non-causal window
    of `kernel` keys starts at leader - kernel // 2, shifted inside the group at the borders.
    """
    allowed = np.zeros((length, length), dtype=bool)
    for i in range(length):
        group = list(range(i % dilation, length, dilation))
        pos = group.index(i)
        if causal:
            leader = min(pos // stride * stride + stride - 1, len(group) - 1)
            window = group[max(leader - kernel + 1, 0) : pos + 1]
        else:
            leader = min(pos // stride * stride + stride // 2, len(group) - 1)
            start = min(max(leader - kernel // 2, 0), len(group) - kernel)
            window = group[start : start + kernel]
        allowed[i, window] = True
    return allowed


def per_axis_grid(shape: tuple[int, ...], axes: list[np.ndarray]) -> np.ndarray:
    """[query, key] booleans on a row-major grid: the and of the per-axis [query, key] rules."""
    coords = np.array(list(np.ndindex(*shape)))
    allowed = np.ones((len(coords), len(coords)), dtype=bool)
    for axis, rule in enumerate(axes):
        allowed &= rule[coords[:, axis][:, None], coords[:, axis][None, :]]
    return allowed


def natten_grid(shape, kernel, stride, dilation, causal) -> np.ndarray:
    axes = [
        natten_axis(*args) for args in zip(shape, kernel, stride, dilation, causal, strict=True)
    ]
    return per_axis_grid(shape, axes)


def test_natten_rule_by_hand():
    """Values read off NATTEN's definition, anchoring the transcription itself."""

    def keys(rule: np.ndarray, query: int) -> list[int]:
        return np.flatnonzero(rule[query]).tolist()

    assert keys(natten_axis(7, 3, 1, 1, False), 0) == [0, 1, 2]  # shifted, not cropped
    assert keys(natten_axis(7, 3, 1, 1, False), 6) == [4, 5, 6]
    assert keys(natten_axis(7, 4, 1, 1, False), 3) == [1, 2, 3, 4]  # even: 2 left, 1 right
    assert keys(natten_axis(7, 2, 1, 2, False), 5) == [3, 5]  # group {1, 3, 5}
    assert keys(natten_axis(7, 2, 1, 2, False), 6) == [4, 6]  # group {0, 2, 4, 6}
    assert keys(natten_axis(7, 3, 1, 1, True), 1) == [0, 1]
    assert keys(natten_axis(8, 4, 4, 1, False), 1) == [0, 1, 2, 3]  # stride = kernel: blocks
    assert keys(natten_axis(8, 4, 2, 1, True), 2) == [0, 1, 2]  # leader 3: keys 0..3, <= 2


def test_neighborhood_1d_exhaustive():
    for length in range(1, 13):
        for dilation in range(1, length + 1):
            for kernel, causal in itertools.product(
                range(1, length // dilation + 1), (False, True)
            ):
                expected = natten_axis(length, kernel, 1, dilation, causal)
                mask = mk.neighborhood_1d(length, kernel, dilation=dilation, causal=causal)
                assert_same(mask, expected)
                if not causal:
                    assert (expected.sum(axis=1) == kernel).all()


def test_generalized_neighborhood_1d_exhaustive():
    for length in range(1, 11):
        for dilation in range(1, length + 1):
            for kernel in range(1, length // dilation + 1):
                for stride, causal in itertools.product(range(1, kernel + 1), (False, True)):
                    expected = natten_axis(length, kernel, stride, dilation, causal)
                    mask = mk.generalized_neighborhood_1d(
                        length, kernel, stride, dilation=dilation, causal=causal
                    )
                    assert_same(mask, expected)
                    if not causal:
                        assert (expected.sum(axis=1) == kernel).all()


def test_generalized_neighborhood_with_stride_kernel_is_blocked():
    assert_same(mk.generalized_neighborhood_1d(12, 4, 4), evaluated(mk.block_diagonal(4), 12))


def random_natten(rng: np.random.Generator, ndim: int, max_length: int, strided: bool):
    shape, kernel, stride, dilation, causal = [], [], [], [], []
    for _ in range(ndim):
        length = int(rng.integers(1, max_length + 1))
        d = int(rng.integers(1, max(length // 2, 1) + 1))
        k = int(rng.integers(1, length // d + 1))
        shape.append(length)
        dilation.append(d)
        kernel.append(k)
        stride.append(int(rng.integers(1, k + 1)) if strided else 1)
        causal.append(bool(rng.integers(2)))
    return tuple(shape), tuple(kernel), tuple(stride), tuple(dilation), tuple(causal)


@pytest.mark.parametrize("seed", range(12))
def test_neighborhood_2d(seed):
    rng = np.random.default_rng(seed)
    shape, kernel, stride, dilation, causal = random_natten(rng, 2, 9, strided=False)
    expected = natten_grid(shape, kernel, stride, dilation, causal)
    assert_same(mk.neighborhood_2d(shape, kernel, dilation=dilation, causal=causal), expected)
    if not any(causal):
        assert (expected.sum(axis=1) == np.prod(kernel)).all()


@pytest.mark.parametrize("seed", range(4))
def test_neighborhood_3d(seed):
    rng = np.random.default_rng(seed)
    shape, kernel, stride, dilation, causal = random_natten(rng, 3, 6, strided=False)
    expected = natten_grid(shape, kernel, stride, dilation, causal)
    assert_same(mk.neighborhood_3d(shape, kernel, dilation=dilation, causal=causal), expected)


@pytest.mark.parametrize("causal", [False, True])
def test_neighborhood_scalar_arguments_apply_to_every_axis(causal):
    shape = (7, 9)
    expected = natten_grid(shape, (3, 3), (1, 1), (2, 2), (causal, causal))
    assert_same(mk.neighborhood_2d(shape, 3, dilation=2, causal=causal), expected)
    assert (expected.sum(axis=1) == 9).all() or causal


def test_neighborhood_3d_keys_per_query():
    shape, kernel = (4, 5, 6), (3, 2, 4)
    allowed = evaluated(mk.neighborhood_3d(shape, kernel, dilation=(1, 2, 1)), int(np.prod(shape)))
    assert (allowed.sum(axis=1) == np.prod(kernel)).all()


@pytest.mark.parametrize("seed", range(10))
def test_generalized_neighborhood_2d(seed):
    rng = np.random.default_rng(seed)
    shape, kernel, stride, dilation, causal = random_natten(rng, 2, 9, strided=True)
    expected = natten_grid(shape, kernel, stride, dilation, causal)
    mask = mk.generalized_neighborhood_2d(shape, kernel, stride, dilation=dilation, causal=causal)
    assert_same(mask, expected)
    if not any(causal):
        assert (expected.sum(axis=1) == np.prod(kernel)).all()


@pytest.mark.parametrize("seed", range(3))
def test_generalized_neighborhood_3d(seed):
    rng = np.random.default_rng(seed)
    shape, kernel, stride, dilation, causal = random_natten(rng, 3, 6, strided=True)
    expected = natten_grid(shape, kernel, stride, dilation, causal)
    mask = mk.generalized_neighborhood_3d(shape, kernel, stride, dilation=dilation, causal=causal)
    assert_same(mask, expected)


def test_grid_divisions_are_nested():
    """Axis coordinates divide by one axis size at a time: x // W // H, never x // (H*W)."""
    mask = mk.neighborhood_3d((5, 6, 7), 3)
    divisors = {
        node.args[1].value
        for node in walk(mask)
        if isinstance(node, Call)
        and node.op in ("floordiv", "mod")
        and isinstance(node.args[1], Const)
    }
    assert divisors == {6.0, 7.0}


@pytest.mark.parametrize("seed", SEEDS)
def test_halo_2d(seed):
    rng = np.random.default_rng(seed)
    shape = (int(rng.integers(1, 10)), int(rng.integers(1, 10)))
    block = (int(rng.integers(1, 5)), int(rng.integers(1, 5)))
    halo = (int(rng.integers(0, 3)), int(rng.integers(0, 3)))

    def axis(length: int, b: int, h: int) -> np.ndarray:
        first = lambda i: i // b * b  # noqa: E731
        keys = lambda i: range(first(i) - h, first(i) + b + h)  # noqa: E731
        return allowed_matrix(length, keys)

    expected = per_axis_grid(shape, [axis(*a) for a in zip(shape, block, halo, strict=True)])
    assert_same(mk.halo_2d(shape, block, halo), expected)


# -- The masks as IR: they read back from text and verify; the registry. ---------------------


EXAMPLES = {
    "causal": mk.causal(),
    "sliding_window": mk.sliding_window(7, causal=False),
    "dilated_sliding_window": mk.dilated_sliding_window(4, 3),
    "prefix_lm": mk.prefix_lm(16),
    "document": mk.document(causal=True),
    "longformer": mk.longformer(9, 2),
    "block_diagonal": mk.block_diagonal(64),
    "block_list": mk.block_list([(0, 0), (1, 0), (1, 1)], 64),
    "block_table": mk.block_table(64),
    "bigbird": mk.bigbird(64, window_blocks=3, global_blocks=1, random_pairs=[(4, 2)]),
    "neighborhood_1d": mk.neighborhood_1d(100, 8, dilation=3),
    "neighborhood_2d": mk.neighborhood_2d((16, 20), (5, 4), dilation=(2, 1), causal=(True, False)),
    "neighborhood_3d": mk.neighborhood_3d((4, 8, 8), 3, causal=(True, False, False)),
    "generalized_neighborhood_1d": mk.generalized_neighborhood_1d(64, 8, 4, causal=True),
    "generalized_neighborhood_2d": mk.generalized_neighborhood_2d((16, 16), 8, 4, dilation=2),
    "generalized_neighborhood_3d": mk.generalized_neighborhood_3d((4, 8, 8), (2, 4, 4), 2),
    "halo_2d": mk.halo_2d((16, 16), 4, 1),
}


def test_registry_names_every_public_mask():
    assert set(mk.MASKS) == set(EXAMPLES)
    assert all(mk.MASKS[name].__name__ == name for name in mk.MASKS)


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_mask_reads_back_from_text_and_verifies(name):
    mask = EXAMPLES[name]
    cascade = parse(
        "cascade masked\n"
        "rank M, P, I, J\n"
        "input X[m,p]\n"
        "input KDOC[m] : i32\n"
        "input QDOC[p] : i32\n"
        "input BLOCKS[i,j] : i32\n"
        "output Y[m,p]\n"
        f"Y[m,p] = X[m,p] where {format_expr(mask)}\n"
    )
    verify(cascade)
    einsum_filter = cascade.einsums[0].filter
    assert einsum_filter is not None and einsum_filter.predicate == mask


# -- Bad parameters. -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("make", "named"),
    [
        (lambda: mk.sliding_window(0), "window"),
        (lambda: mk.sliding_window(True), "window"),
        (lambda: mk.dilated_sliding_window(3, 0), "dilation"),
        (lambda: mk.prefix_lm(-1), "prefix"),
        (lambda: mk.document(key_ids="doc"), "key_ids"),
        (lambda: mk.document(query_ids=""), "query_ids"),
        (lambda: mk.longformer(0, 1), "window"),
        (lambda: mk.longformer(3, -1), "global_tokens"),
        (lambda: mk.block_diagonal(0), "block"),
        (lambda: mk.block_list([], 4), "pairs"),
        (lambda: mk.block_list([(1, -1)], 4), "pairs"),
        (lambda: mk.block_list([(1, 2, 3)], 4), "pairs"),  # type: ignore[list-item]
        (lambda: mk.block_table(4, tensor="x"), "tensor"),
        (lambda: mk.bigbird(4, window_blocks=0, global_blocks=1), "window_blocks"),
        (lambda: mk.bigbird(4, window_blocks=3, global_blocks=-1), "global_blocks"),
        (lambda: mk.bigbird(0, window_blocks=3, global_blocks=1), "block"),
        (lambda: mk.neighborhood_1d(0, 1), "length"),
        (lambda: mk.neighborhood_1d(5, 0), "kernel"),
        (lambda: mk.neighborhood_1d(5, 3, dilation=2), "kernel * dilation"),
        (lambda: mk.neighborhood_2d((8, 8), (3, 3, 3)), "kernel"),  # type: ignore[arg-type]
        (lambda: mk.neighborhood_2d((8,), 3), "shape"),  # type: ignore[arg-type]
        (lambda: mk.neighborhood_2d((8, 0), 3), "shape"),
        (lambda: mk.neighborhood_2d((8, 8), 3, dilation=(1, 0)), "dilation"),
        (lambda: mk.neighborhood_2d((8, 8), 3, causal=(True,)), "causal"),  # type: ignore[arg-type]
        (lambda: mk.neighborhood_3d((8, 8, 2), 3), "kernel * dilation"),
        (lambda: mk.generalized_neighborhood_2d((8, 8), 3, 4), "stride"),
        (lambda: mk.generalized_neighborhood_2d((8, 8), 3, 0), "stride"),
        (lambda: mk.halo_2d((8, 8), 0, 1), "block"),
        (lambda: mk.halo_2d((8, 8), 2, -1), "halo"),
        (lambda: mk.mask_and(), "masks"),
        (lambda: mk.mask_or(), "masks"),
    ],
)
def test_bad_parameters_are_named(make, named):
    with pytest.raises(ValueError, match=named.replace("*", r"\*")):
        make()


# -- The oracle's tile classes. --------------------------------------------------------------


def test_brute_force_classes_ragged_tiles():
    # 10 x 10 causal in 4 x 4 tiles: the diagonal tiles are partial, below them full; the last
    # tile row and column hold 2 in-range positions each.
    classes = brute_force_classes(mk.causal(), key_len=10, query_len=10, key_tile=4, query_tile=4)
    assert classes.dtype == np.int8
    assert classes.tolist() == [
        [PARTIAL, EMPTY, EMPTY],
        [FULL, PARTIAL, EMPTY],
        [FULL, FULL, PARTIAL],
    ]
    # Only in-range points count: a ragged tile whose in-range points all hold is full.
    tail = brute_force_classes(
        mk.block_diagonal(3), key_len=7, query_len=7, key_tile=3, query_tile=3
    )
    assert tail.tolist() == [[FULL, EMPTY, EMPTY], [EMPTY, FULL, EMPTY], [EMPTY, EMPTY, FULL]]


def test_brute_force_classes_reads_data():
    table = np.array([[1, 0, 1], [0, 1, 0]], dtype=np.int32)
    classes = brute_force_classes(
        mk.block_table(4),
        key_len=10,
        query_len=6,
        key_tile=4,
        query_tile=4,
        data={"BLOCKS": table},
    )
    assert classes.tolist() == [[FULL, EMPTY, FULL], [EMPTY, FULL, EMPTY]]
    with pytest.raises(IndexError, match="BLOCKS"):
        evaluate_mask(mk.block_table(4), np.arange(13), 0, {"BLOCKS": table})
