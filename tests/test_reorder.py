"""The reorder pass (PAROAttention's token reordering): the density of non-empty 64 x 64 tiles
before and after, measured by the tile classification the kernels' tile lists come from;
differential checks that the reordered cascade computes what the original does (masks over
grids, a causal mask, document ids, ALiBi, a relative-position table, GQA, HiLo's pooled keys,
strided reads); the cascade in the new order run by the tiled backends on permuted inputs, and
the pass's own output refused by them with the way to run it; the pass's refusals."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import sympy
from zoo_kernels import FP32_TOLERANCE, assert_compiles_for_sm90, relative_error

from attncc.analysis import TileMap, tile_map
from attncc.backends.execute import Backend, execute, lower_for_tiles
from attncc.backends.schedule import schedule
from attncc.backends.tile_program import tile_program
from attncc.backends.triton.launch import lower_triton
from attncc.backends.triton.report import compile_report
from attncc.differential import check_equivalent, random_inputs
from attncc.errors import PassError
from attncc.frontends import masks
from attncc.frontends.library import ScoreMod, attention_3pass
from attncc.frontends.zoo.groups import same_type
from attncc.frontends.zoo.hilo import hilo
from attncc.ir import Cascade, DType, Rank, parse, print_cascade, size_symbol
from attncc.passes import run_pipeline
from attncc.passes.reorder import in_token_order
from attncc.passes.token_order import TokenOrder

# (mask, grid digits, new order): 8 x 8 windows of a 32 x 32 image, made contiguous; a 3-D
# window over all 8 frames and 3 x 3 pixels, frames made the fastest digit (spatial-major);
# Group Pose's same-type groups of 20 instances x 18 parts, made type-major.
LAYOUTS = {
    "image_windows": (masks.halo_2d((32, 32), 8, 0), "4x8x4x8", "0213"),
    "video": (masks.neighborhood_3d((8, 16, 16), (8, 3, 3)), "8x16x16", "120"),
    "group_pose": (same_type(18), "20x18", "10"),
}


def fixed(cascade: Cascade, tokens: int) -> Cascade:
    """`cascade` with P = M = `tokens`: the length its grid mask assumes, as reorder fixes it."""
    ranks = tuple(
        Rank(r.name, sympy.Integer(tokens)) if r.name in ("P", "M") else r for r in cascade.ranks
    )
    return replace(cascade, ranks=ranks)


def tiles(cascade: Cascade, tokens: int) -> TileMap:
    """The tile map the kernels' tile lists come from: the block-sparse mask after lowering."""
    lowered = lower_for_tiles(cascade)
    (sparse,) = lowered.sparse
    return tile_map(lowered, sparse, {"P": tokens, "M": tokens, "M0": 64})


@pytest.mark.parametrize(
    ("layout", "before", "after"),
    [
        # A 64-query tile is 2 image rows, within one row band of windows: its keys are the 8
        # rows of that band (4 of 16 key tiles). Window-major, a window is one tile: 1/16.
        ("image_windows", 0.25, 0.0625),
        # Frame-major, a tile (4 rows of a frame) sees rows +-1 in each of the 8 frames: 2 or 3
        # key tiles per frame, 20 of 32 on average. Spatial-major, a tile is 8 pixels x 8
        # frames and sees 3 pixel rows of 2 tiles each: 6 of 32.
        ("video", 0.625, 0.1875),
        # Every 18th query is of one type, so every tile mixes all types: all tiles non-empty.
        # Type-major, a type is 20 consecutive queries: the block diagonal of 18 blocks of 20.
        ("group_pose", 1.0, 0.3888888888888889),
    ],
)
def test_density_of_nonempty_tiles_drops(layout: str, before: float, after: float) -> None:
    mask, shape, order = LAYOUTS[layout]
    token_order = TokenOrder.parse(shape, order)
    cascade = attention_3pass(batched=True, mask=mask)
    n = token_order.tokens
    assert tiles(cascade, n).density == pytest.approx(before)
    assert tiles(in_token_order(cascade, token_order), n).density == pytest.approx(after)


def test_block_diagonal_after_reordering_windows() -> None:
    """Window-major, each 8 x 8 window is exactly one 64 x 64 tile: the diagonal, all FULL."""
    mask, shape, order = LAYOUTS["image_windows"]
    cascade = in_token_order(attention_3pass(mask=mask), TokenOrder.parse(shape, order))
    classes = tiles(cascade, 1024).classes
    assert np.array_equal(classes != 0, np.eye(16, dtype=bool))
    assert (np.diag(classes) == 2).all()  # FULL: no mask work in those tiles


REORDERED = {
    "image_windows_causal": (
        lambda: attention_3pass(batched=True, causal=True, mask=masks.halo_2d((8, 8), 4, 0)),
        "2x4x2x4",
        "0213",
    ),
    "video_gqa": (
        lambda: attention_3pass(gqa_group=2, mask=masks.neighborhood_3d((4, 6, 6), (4, 3, 3))),
        "4x6x6",
        "120",
    ),
    "group_pose_alibi": (
        lambda: attention_3pass(batched=True, mask=same_type(6), score=ScoreMod(alibi=True)),
        "8x6",
        "10",
    ),
    "documents_rel_bias": (
        lambda: attention_3pass(mask=masks.document(), score=ScoreMod(rel_bias=True)),
        "6x8",
        "10",
    ),
}


STRIDED = """\
cascade strided
rank E, F, M = 16, P = 16, J = 8
input Q[e,p] : f32
input K[e,m] : f32
input V[f,m] : f32
output AV[f,p] : f32

QK[j,p] = Q[e,p] * K[e,2*j]
AV[f,p] = QK[j,p] * V[f,15-2*j]
"""

# Cascades that read the permuted inputs at other positions than p and m (the reference
# interpreter runs them; HiLo's pooling is no loop nest of the tiled backends).
READ_ELSEWHERE = {
    # HiLo's Lo-Fi keys pool KL and VL at 16*(n//4) + 2*(n%4) + 8*sy + sx: read window-major,
    # the pooled tokens of window n are 16*(n//4) + 4*(n%4) + 2*sy + sx.
    "hilo": (lambda: hilo(shape=(8, 8), window=2), "4x2x4x2", "0213"),
    # Every other key, and the same backwards: positions whose digits do not split go through
    # the nested divisions of sigma^-1.
    "strided": (lambda: parse(STRIDED), "2x2x2x2", "0213"),
}


@pytest.mark.parametrize("name", sorted(REORDERED) + sorted(READ_ELSEWHERE))
def test_reordered_cascade_computes_the_same(name: str) -> None:
    build, shape, order = {**REORDERED, **READ_ELSEWHERE}[name]
    original = build()
    reordered, records = run_pipeline(original, f"reorder(shape={shape},order={order})")
    assert records[0].changed
    check_equivalent(fixed(original, TokenOrder.parse(shape, order).tokens), reordered)
    assert parse(print_cascade(reordered)) == reordered


@pytest.mark.parametrize("name", sorted(REORDERED))
@pytest.mark.parametrize(
    "backend",
    [Backend.NUMPY, pytest.param(Backend.TRITON, marks=pytest.mark.triton_interpret)],
    ids=lambda b: b.value,
)
def test_tiled_backends_run_the_new_order(name: str, backend: Backend) -> None:
    """Inputs permuted before the kernel, the output put back after it, as PAROAttention does;
    fp32 within 1e-5 of the original cascade in float64."""
    build, shape, order = REORDERED[name]
    token_order = TokenOrder.parse(shape, order)
    original = fixed(build(), token_order.tokens)
    rng = np.random.default_rng(0)
    inputs = _inputs(original, rng)
    expected = execute(original, inputs)["AV"]
    perm = token_order.permutation()
    ordered = {n: _permute(original, n, a, perm).astype(a.dtype) for n, a in inputs.items()}
    narrow = {n: a.astype(np.float32) if a.dtype.kind == "f" else a for n, a in ordered.items()}
    got = execute(in_token_order(build(), token_order), narrow, backend=backend)["AV"]
    back = np.empty_like(got)
    back[..., perm] = got
    assert relative_error(back, expected) < FP32_TOLERANCE


def test_hilo_pools_the_tokens_it_pooled_before() -> None:
    """The reviewer's case: read window-major, HiLo's pooling still averages each window (AVL
    was 0.23 off when the pooled reads kept their old positions)."""
    original = hilo(shape=(8, 8), window=2)
    reordered, _ = run_pipeline(original, "reorder(shape=4x2x4x2,order=0213)")
    text = print_cascade(reordered)
    assert "PK[b,hl,e,n] = KLR[b,hl,e,16*(n//4)+2*sy+4*(n%4)+sx] * 0.25" in text
    inputs = _inputs(original, np.random.default_rng(1))
    expected, got = execute(original, inputs), execute(reordered, inputs)
    for name in ("AVH", "AVL"):
        np.testing.assert_allclose(got[name], expected[name], rtol=1e-9, atol=1e-12)


def test_the_pass_output_is_refused_by_the_tiled_backends_with_the_way_to_run_it() -> None:
    """Its gathers (QR = Q[e,sigma(p)]) are no tile loads: lowering says to run the cascade in
    the new order on permuted inputs, as test_tiled_backends_run_the_new_order does; the
    reference interpreter runs the pass output itself."""
    build, shape, order = REORDERED["video_gqa"]
    reordered, _ = run_pipeline(build(), f"reorder(shape={shape},order={order})")
    inputs = _inputs(reordered, np.random.default_rng(0))
    with pytest.raises(PassError, match=r"KR copies input K in another order along the key rank M"):
        execute(reordered, inputs, backend=Backend.NUMPY)
    with pytest.raises(PassError, match=r"in_token_order\) on inputs permuted"):
        execute(reordered, inputs, backend=Backend.NUMPY)
    expected = execute(fixed(build(), 144), inputs)["AV"]
    np.testing.assert_allclose(execute(reordered, inputs)["AV"], expected, rtol=1e-9, atol=1e-12)


def _inputs(cascade: Cascade, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Random inputs (standard normal, ids 0..3) at small head and feature sizes."""
    defaults = {"B": 2, "H": 2, "G": 1, "HH": 2, "HL": 2, "GH": 1, "GL": 1, "E": 16, "F": 8}
    free = [r.name for r in cascade.ranks if r.size == size_symbol(r.name)]
    return random_inputs(cascade, {name: defaults[name] for name in free}, rng)


def _permute(cascade: Cascade, name: str, array: np.ndarray, perm: np.ndarray) -> np.ndarray:
    """`array` with every axis of rank P or M taken in the new order."""
    decl = next(d for d in cascade.inputs if d.name == name)
    for axis, rank in enumerate(decl.ranks):
        if rank in ("P", "M"):
            array = np.take(array, perm, axis=axis)
    return array


def test_permutation_is_the_index_expression() -> None:
    order = TokenOrder.parse("3x4x5", "201")
    perm = order.permutation()
    y = sympy.Symbol("y", integer=True, nonnegative=True)
    old, new = order.old_position(y), order.new_position(y)
    assert [int(old.subs(y, k)) for k in range(60)] == perm.tolist()
    assert [int(new.subs(y, int(perm[k]))) for k in range(60)] == list(range(60))


def test_remark_and_refusals() -> None:
    cascade = attention_3pass(mask=masks.halo_2d((8, 8), 4, 0))
    _, records = run_pipeline(cascade, "reorder(shape=2x4x2x4,order=0213)")
    assert records[0].remarks == (
        "P and M hold the 64 tokens of 2x4x2x4, now in digit order 0213; Q, K, V read "
        "permuted, AV put back",
    )
    flash = run_pipeline(cascade, "flash")[0]
    unchanged, records = run_pipeline(flash, "reorder(shape=2x4x2x4,order=0213)")
    assert unchanged == flash
    assert "reorder before the flash pipeline" in records[0].remarks[0]
    with pytest.raises(PassError, match="must list each of the 4 digits"):
        run_pipeline(cascade, "reorder(shape=2x4x2x4,order=0211)")
    with pytest.raises(PassError, match="sizes joined by x"):
        run_pipeline(cascade, "reorder(shape=8by8,order=01)")
    with pytest.raises(PassError, match="give the grid"):
        run_pipeline(cascade, "reorder")
    with pytest.raises(PassError, match="has no rank Q"):
        run_pipeline(cascade, "reorder(shape=8x8,order=10,query=Q)")
    sized = fixed(cascade, 60)
    with pytest.raises(PassError, match="rank P holds 60 tokens, the grid 8x8 holds 64"):
        run_pipeline(sized, "reorder(shape=8x8,order=10)")


def test_reads_off_the_grid_are_refused() -> None:
    """T[m,p-1] is read at p = 0 too: position -1 has no place in the new order."""
    shifted = parse(
        "rank M, P\ninput X[m,p]\noutput Y[m,p]\n\nT[m,p] = X[m,p]\nY[m,p] = T[m,p-1]\n"
    )
    with pytest.raises(
        PassError, match=r"Y reads T\[m,p-1\] at p-1 along P, a position not provably among"
    ):
        run_pipeline(shifted, "reorder(shape=2x2,order=10)")
    running = parse("rank M\ninput X[m]\noutput Y[]\nR[0] = 0\nR[m+1] = R[m] + X[m]\nY[] = R[M]")
    with pytest.raises(PassError, match="R is a running update over m"):
        run_pipeline(running, "reorder(shape=2x2,order=10,query=M)")


@pytest.mark.cuda_compile
def test_reordered_kernel_compiles_for_sm90() -> None:
    mask, shape, order = LAYOUTS["video"]
    core = in_token_order(attention_3pass(batched=True, mask=mask), TokenOrder.parse(shape, order))
    lowered = lower_for_tiles(core)
    features = tile_program(schedule(lowered)).feature_sizes({"E": 64, "F": 64})
    dtypes = {d.name: DType.F16 for d in (*lowered.inputs, *lowered.outputs)}
    kernel = lower_triton(lowered, features=features, dtypes=dtypes)
    assert_compiles_for_sm90(compile_report(kernel, archs=(90,)), 1)
