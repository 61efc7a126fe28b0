"""HiLo attention (attncc.frontends.zoo.hilo) against plain PyTorch written as LITv2's HiLo does
it (Pan et al. 2022): Hi-Fi heads attend inside non-overlapping s x s windows (the image cut
into windows, attention per window), Lo-Fi heads attend keys and values average-pooled over
s x s windows (avg_pool2d). The whole cascade runs in the reference interpreter; its stages
(pooling, then the two attentions) on the reference, the tiled NumPy path and Triton kernels
(interpreted): only the attention stages run on the tiled backends, the pooling always in the
float64 reference interpreter. Both kernels compile for sm_90, the Hi-Fi one block-sparse. The
cascade pools the projected K and V where LITv2 pools x and then projects it: a test builds
LITv2's order to check that they agree."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest
import sympy
import torch
import torch.nn.functional as F
from zoo_kernels import (
    FP32_TOLERANCE,
    assert_compiles_for_sm90,
    builder_tests,
    compile_kernels,
    relative_error,
    run_staged,
)

from attncc.analysis import cascade_cost, count_passes, tile_map
from attncc.backends.execute import Backend, lower_for_tiles
from attncc.backends.numpy.reference import interpret
from attncc.cli import main
from attncc.frontends.zoo.hilo import hilo, hilo_stages
from attncc.ir import size_symbol

EXAMPLE_OPTIONS: dict[str, Any] = {"shape": (16, 16), "window": 2, "gqa_group": 2}


@dataclass(frozen=True)
class Case:
    name: str
    options: dict[str, Any] = field(default_factory=dict)
    heads: tuple[int, int] = (2, 2)  # Hi-Fi, Lo-Fi
    groups: tuple[int, int] = (2, 2)

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.options["shape"])  # type: ignore[return-value]

    @property
    def window(self) -> int:
        return int(self.options["window"])


CASES = (
    Case("8x12_s2", {"shape": (8, 12), "window": 2}),
    Case("8x8_s4_gqa", {"shape": (8, 8), "window": 4, "gqa_group": 2}, (4, 2), (2, 1)),
    Case("9x6_s3_mqa", {"shape": (9, 6), "window": 3, "gqa_group": 3}, (3, 3), (1, 1)),
)
B, E, F_DIM = 2, 16, 8


def inputs_for(case: Case, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    tokens = math.prod(case.shape)
    arrays = {}
    for group, heads, kv in zip("HL", case.heads, case.groups, strict=True):
        arrays[f"Q{group}"] = rng.standard_normal((B, heads, E, tokens))
        arrays[f"K{group}"] = rng.standard_normal((B, kv, E, tokens))
        arrays[f"V{group}"] = rng.standard_normal((B, kv, F_DIM, tokens))
    return arrays


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """softmax(q k^T / sqrt(E)) v over the last two axes ([..., n, e])."""
    return torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1]), dim=-1) @ v


def tokens_last(x: np.ndarray, repeat: int) -> torch.Tensor:
    """attncc's [B, heads, e, tokens] as [B, heads * repeat, tokens, e]."""
    return torch.from_numpy(x).transpose(2, 3).repeat_interleave(repeat, 1)


def torch_hilo(case: Case, inputs: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    """AVH and AVL [B, heads, F, tokens] in float64, as LITv2's HiLo computes them."""
    (height, width), s = case.shape, case.window
    repeat = case.heads[0] // case.groups[0]

    # Hi-Fi: cut the image into windows, attend within each, put the windows back.
    def windows(x: torch.Tensor) -> torch.Tensor:  # [B, h, tokens, c] -> [B, h, windows, s*s, c]
        b, h, _, c = x.shape
        x = x.reshape(b, h, height // s, s, width // s, s, c).permute(0, 1, 2, 4, 3, 5, 6)
        return x.reshape(b, h, -1, s * s, c)

    q, k, v = (tokens_last(inputs[f"{n}H"], 1 if n == "Q" else repeat) for n in "QKV")
    high = attention(windows(q), windows(k), windows(v))
    b, h = high.shape[:2]
    high = high.reshape(b, h, height // s, width // s, s, s, F_DIM).permute(0, 1, 2, 4, 3, 5, 6)
    high = high.reshape(b, h, height * width, F_DIM)

    # Lo-Fi: every query against keys and values average-pooled over s x s windows.
    def pooled(x: np.ndarray) -> torch.Tensor:  # [B, g, c, tokens] -> [B, g * repeat, n, c]
        grid = torch.from_numpy(x).reshape(*x.shape[:3], height, width)
        pool = F.avg_pool2d(grid.flatten(0, 1), s, s).reshape(*x.shape[:3], -1)
        return pool.transpose(2, 3).repeat_interleave(case.heads[1] // case.groups[1], 1)

    low = attention(tokens_last(inputs["QL"], 1), pooled(inputs["KL"]), pooled(inputs["VL"]))
    return {"AVH": high.transpose(2, 3), "AVL": low.transpose(2, 3)}


def check(got: dict[str, np.ndarray], want: dict[str, torch.Tensor], tolerance: float) -> None:
    assert set(got) == {"AVH", "AVL"}
    for name, value in want.items():
        assert relative_error(got[name], value) < tolerance, name


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_cascade_matches_pytorch(case: Case) -> None:
    inputs = inputs_for(case)
    check(interpret(hilo(**case.options), inputs), torch_hilo(case, inputs), 1e-12)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
@pytest.mark.parametrize("backend", [Backend.REFERENCE, Backend.NUMPY], ids=lambda b: b.value)
def test_stages_match_pytorch(case: Case, backend: Backend) -> None:
    inputs = inputs_for(case, seed=1)
    got = run_staged(hilo_stages(**case.options), inputs, backend)
    check(got, torch_hilo(case, inputs), 1e-12 if backend is Backend.REFERENCE else FP32_TOLERANCE)


@pytest.mark.triton_interpret
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_triton_stages_match_pytorch(case: Case) -> None:
    inputs = inputs_for(case, seed=2)
    got = run_staged(hilo_stages(**case.options), inputs, Backend.TRITON)
    assert got["AVH"].dtype == np.float32
    check(got, torch_hilo(case, inputs), FP32_TOLERANCE)


def test_lofi_equals_litv2_pooling_x_then_projecting() -> None:
    """LITv2's Lo-Fi branch average-pools the input x over s x s windows, then projects the
    pooled tokens to keys and values (l_kv, a linear layer with a bias). The cascade is given
    x projected at every token and pools K and V itself. A mean commutes with an affine map
    (the weights of a mean sum to 1, so the bias passes through): the outputs agree."""
    case = CASES[1]  # 8 x 8 tokens, 4 x 4 windows, GQA: 2 Lo-Fi heads on 1 key/value group
    (height, width), s = case.shape, case.window
    heads, groups, channels = case.heads[1], case.groups[1], 12
    rng = np.random.default_rng(5)
    x = torch.from_numpy(rng.standard_normal((B, height * width, channels)))
    w_q = torch.from_numpy(rng.standard_normal((heads, E, channels)) / math.sqrt(channels))
    w_kv = torch.from_numpy(rng.standard_normal((groups, E + F_DIM, channels)) / channels**0.5)
    b_kv = torch.from_numpy(rng.standard_normal((groups, E + F_DIM)))
    # LITv2: pool x, then project (k and v from one l_kv, split along its outputs).
    grid = x.transpose(1, 2).reshape(B, channels, height, width)
    pooled = F.avg_pool2d(grid, s, s).flatten(2)  # [B, C, n]
    kv = torch.einsum("bcn,gdc->bgnd", pooled, w_kv) + b_kv[None, :, None, :]
    q = torch.einsum("btc,hec->bhte", x, w_q)
    k, v = (t.repeat_interleave(heads // groups, 1) for t in (kv[..., :E], kv[..., E:]))
    want = attention(q, k, v).transpose(2, 3)
    # attncc: x projected at every token; the cascade pools.
    tokens_kv = torch.einsum("btc,gdc->bgdt", x, w_kv) + b_kv[..., None]
    inputs = inputs_for(case)
    inputs["QL"] = torch.einsum("btc,hec->bhet", x, w_q).numpy()
    inputs["KL"], inputs["VL"] = tokens_kv[:, :, :E].numpy(), tokens_kv[:, :, E:].numpy()
    assert relative_error(interpret(hilo(**case.options), inputs)["AVL"], want) < 1e-12


def test_hifi_kernel_is_block_sparse() -> None:
    """The window mask is affine, so the block-sparse pass proves which tiles of the Hi-Fi
    attention are EMPTY: on 16 x 16 tokens a 64-token tile holds 4 image rows, which 2 x 2
    windows never straddle, so only the 4 diagonal tiles of 16 are visited. The Lo-Fi
    attention has no mask: its key loop is dense."""
    hifi, lofi = (lower_for_tiles(s.cascade) for s in hilo_stages().stages[1:])
    (sparse,) = hifi.sparse
    assert sparse.tensor == "QKH"
    tiles = tile_map(hifi, sparse, {"M": 256, "M0": 64, "P": 256})
    assert tiles.nonempty == 4
    assert tiles.density == 4 / 16
    assert lofi.sparse == ()


def test_pass_counts_and_costs_checked_by_hand() -> None:
    cascade = hilo()  # 16 x 16 tokens, 2 x 2 windows: P = M = 256, N = 64 pooled keys
    assert count_passes(cascade, "M").passes == 3  # Hi-Fi softmax as written
    assert count_passes(cascade, "N").passes == 3  # Lo-Fi softmax over the pooled keys
    assert count_passes(cascade, "SY").passes == 1  # pooling reads each window once
    Bs, Es, HHs, HLs = (size_symbol(n) for n in ("B", "E", "HH", "HL"))
    cost = {c.einsum: dict(c.ops) for c in cascade_cost(cascade).einsums}
    # Pooling: 64 keys of 4 tokens each, summed (256 adds per head and e), then one multiply
    # by 1/4 per pooled key.
    assert sympy.simplify(cost["PK"]["add"] - 256 * Bs * Es * HLs) == 0
    assert sympy.simplify(cost["PK"]["mul"] - 64 * Bs * Es * HLs) == 0
    # Scores as written: 256 x 256 for Hi-Fi (the window mask hides most of them), 256 x 64
    # for Lo-Fi.
    assert sympy.simplify(cost["QKH"]["mac"] - 256 * 256 * Bs * Es * HHs) == 0
    assert sympy.simplify(cost["QKL"]["mac"] - 256 * 64 * Bs * Es * HLs) == 0


def test_analyze_reports_both_groups(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["analyze", "hilo", "-O", "shape=16x16", "-O", "window=2"]) == 0
    out = capsys.readouterr().out
    assert "passes over M: 3" in out
    assert "passes over N: 3" in out
    assert "  witness: PK -> QKL -> GML => SNL -> SDL => AL -> AVL   (=> starts a pass)" in out


test_load_and_example, test_bad_options_are_refused = builder_tests(
    "hilo",
    hilo,
    EXAMPLE_OPTIONS,
    [
        ({"shape": (10, 8), "window": 4}, "height 10 is not a multiple of the window 4"),
        ({"shape": (8,), "window": 2}, "shape must be"),
        ({"window": 0}, "window must be a positive integer"),
        ({"window": 1}, "window 1 has no high frequencies to separate: LITv2 then makes every"),
    ],
)


@pytest.mark.cuda_compile
def test_both_attentions_compile_for_sm90() -> None:
    sizes = {"B": 2, "HH": 4, "GH": 2, "HL": 4, "GL": 2, "E": 64, "F": 64}
    stages = hilo_stages(shape=(16, 16), window=2, gqa_group=2)
    assert_compiles_for_sm90(compile_kernels(stages, sizes), 2)
