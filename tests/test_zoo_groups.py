"""Group Pose's group-wise masks (attncc.frontends.zoo.groups) against plain PyTorch written from
the paper's definition (Liu et al. 2023): queries of instance x // parts and type x % parts;
within-instance attention among one instance's queries, same-type attention across instances,
and their union. The cascades run on the reference interpreter, the tiled NumPy path and Triton
kernels (interpreted) and compile for sm_90; the masks' tiles are classified exactly."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
import sympy
import torch
from zoo_kernels import (
    FP32_TOLERANCE,
    assert_compiles_for_sm90,
    builder_tests,
    relative_error,
)

from attncc.analysis import TileClass, cascade_cost, classify_tiles, count_passes
from attncc.backends.execute import Backend, execute, lower_for_tiles
from attncc.backends.schedule import schedule
from attncc.backends.tile_program import tile_program
from attncc.backends.triton.launch import lower_triton
from attncc.backends.triton.report import compile_report
from attncc.cli import main
from attncc.frontends.zoo.groups import GROUPS, group_pose, group_pose_mask
from attncc.ir import DType, size_symbol

EXAMPLE_OPTIONS: dict[str, Any] = {"parts": 18, "group": "across", "gqa_group": 2}
PARTS, INSTANCES = 18, 7  # 126 queries: ragged against 64-query tiles
B, E, F = 2, 16, 8


def visible(parts: int, group: str, n: int) -> torch.Tensor:
    """[query, key]: the groups of the paper, from instance and type ids."""
    x = torch.arange(n)
    instance, kind = x // parts, x % parts
    within = instance[:, None] == instance[None, :]
    across = kind[:, None] == kind[None, :]
    return {"within": within, "across": across, "both": within | across}[group]


def inputs_for(heads: int, groups: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    n = PARTS * INSTANCES
    return {
        "Q": rng.standard_normal((B, heads, E, n)),
        "K": rng.standard_normal((B, groups, E, n)),
        "V": rng.standard_normal((B, groups, F, n)),
    }


def torch_group_attention(inputs: dict[str, np.ndarray], group: str) -> torch.Tensor:
    q = torch.from_numpy(inputs["Q"]).transpose(2, 3)
    repeat = q.shape[1] // inputs["K"].shape[1]
    k = torch.from_numpy(inputs["K"]).transpose(2, 3).repeat_interleave(repeat, 1)
    v = torch.from_numpy(inputs["V"]).transpose(2, 3).repeat_interleave(repeat, 1)
    scores = q @ k.transpose(2, 3) / math.sqrt(E)
    scores = scores.masked_fill(~visible(PARTS, group, q.shape[2]), -math.inf)
    return (torch.softmax(scores, dim=-1) @ v).transpose(2, 3)


CASES = [
    pytest.param(group, gqa, heads, groups, id=f"{group}-{name}")
    for group in GROUPS
    for name, gqa, heads, groups in (("mha", None, 2, 2), ("gqa", 2, 4, 2), ("mqa", 3, 3, 1))
]


@pytest.mark.parametrize(("group", "gqa", "heads", "groups"), CASES)
@pytest.mark.parametrize("backend", [Backend.REFERENCE, Backend.NUMPY], ids=lambda b: b.value)
def test_matches_pytorch(
    group: str, gqa: int | None, heads: int, groups: int, backend: Backend
) -> None:
    inputs = inputs_for(heads, groups, seed=0)
    cascade = group_pose(parts=PARTS, group=group, gqa_group=gqa)
    if backend is not Backend.REFERENCE:
        inputs = {n: a.astype(np.float32) for n, a in inputs.items()}
    got = execute(cascade, inputs, backend=backend)["AV"]
    want = torch_group_attention({n: a.astype(np.float64) for n, a in inputs.items()}, group)
    assert relative_error(got, want) < (1e-12 if backend is Backend.REFERENCE else FP32_TOLERANCE)


@pytest.mark.triton_interpret
@pytest.mark.parametrize(("group", "gqa", "heads", "groups"), CASES)
def test_triton_matches_pytorch(group: str, gqa: int | None, heads: int, groups: int) -> None:
    inputs = inputs_for(heads, groups, seed=1)
    cascade = group_pose(parts=PARTS, group=group, gqa_group=gqa)
    narrow = {n: a.astype(np.float32) for n, a in inputs.items()}
    got = execute(cascade, narrow, backend=Backend.TRITON)["AV"]
    assert got.dtype == np.float32
    assert relative_error(got, torch_group_attention(inputs, group)) < FP32_TOLERANCE


@pytest.mark.parametrize("group", GROUPS)
@pytest.mark.parametrize("tile", [16, 64])
def test_tiles_are_classified_exactly(group: str, tile: int) -> None:
    n = PARTS * INSTANCES
    mask = visible(PARTS, group, n).numpy()
    tiles = classify_tiles(
        group_pose_mask(PARTS, group), key_len=n, query_len=n, key_tile=tile, query_tile=tile
    )
    for qt in range(tiles.classes.shape[0]):
        for kt in range(tiles.classes.shape[1]):
            block = mask[qt * tile : (qt + 1) * tile, kt * tile : (kt + 1) * tile]
            want = TileClass.FULL if block.all() else TileClass.PARTIAL if block.any() else 0
            assert tiles.classes[qt, kt] == want, (qt, kt)


def test_within_instance_skips_tiles_same_type_does_not() -> None:
    """In the instance-major layout one instance is 18 consecutive queries: a block diagonal,
    most tiles EMPTY; a type is every 18th query, so every tile holds some pair (the reorder
    pass fixes that: tests/test_reorder.py)."""
    n = 18 * 64
    within = classify_tiles(
        group_pose_mask(18, "within"), key_len=n, query_len=n, key_tile=64, query_tile=64
    )
    across = classify_tiles(
        group_pose_mask(18, "across"), key_len=n, query_len=n, key_tile=64, query_tile=64
    )
    assert across.density == 1.0
    # The block diagonal of 18-query instances crosses a 64-tile boundary wherever an
    # instance straddles one: 18 diagonal tiles, plus 16 boundaries (at 64, 128, ..., 1088,
    # all but the multiples of 576 = lcm(18, 64)) that an instance straddles, each adding the
    # two tiles beside the diagonal: 18 + 2*16 = 50 of 324.
    assert within.classes.shape == (18, 18)
    assert within.nonempty == 50
    assert within.density == 50 / 324


def test_pass_counts_and_costs_checked_by_hand() -> None:
    cascade = group_pose(group="within")
    assert count_passes(cascade, "M").passes == 3
    Bs, Es, Hs, Ms, Ps = (size_symbol(n) for n in "BEHMP")
    qk = dict(next(c for c in cascade_cost(cascade).einsums if c.einsum == "QK").ops)
    # m // 18 once per key, p // 18 once per query, their comparison once per (m, p).
    assert sympy.simplify(qk["intdiv"] - (Ms + Ps)) == 0
    assert sympy.simplify(qk["compare"] - Ms * Ps) == 0
    assert sympy.simplify(qk["mac"] - Bs * Es * Hs * Ms * Ps) == 0
    # After flash-sparse the loop over key tiles runs only where the mask's density says.
    lowered = lower_for_tiles(cascade)
    loop = dict(next(c for c in cascade_cost(lowered).einsums if c.einsum == "QK").ops)
    density = sympy.Symbol("density_QK", positive=True)
    assert sympy.simplify(loop["mac"] - density * Bs * Es * Hs * Ms * Ps) == 0


def test_analyze(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["analyze", "group_pose", "-O", "group=both"]) == 0
    out = capsys.readouterr().out
    assert "passes over M: 3" in out
    assert "intdiv  2*M + 2*P" in out  # m // 18, p // 18, m % 18 and p % 18


test_load_and_example, test_bad_options_are_refused = builder_tests(
    "group_pose",
    group_pose,
    EXAMPLE_OPTIONS,
    [({"group": "all"}, "group must be one of"), ({"parts": 0}, "parts must be a positive")],
)


@pytest.mark.cuda_compile
@pytest.mark.parametrize("group", GROUPS)
def test_kernels_compile_for_sm90(group: str) -> None:
    lowered = lower_for_tiles(group_pose(group=group, gqa_group=2))
    features = tile_program(schedule(lowered)).feature_sizes({"E": 64, "F": 64})
    dtypes = {d.name: DType.F16 for d in (*lowered.inputs, *lowered.outputs)}
    kernel = lower_triton(lowered, features=features, dtypes=dtypes)
    assert_compiles_for_sm90(compile_report(kernel, archs=(90,)), 1)
