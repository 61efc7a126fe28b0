"""Mixture-of-Head attention (attncc.frontends.zoo.moh) against plain PyTorch written from the
MoH paper (Jin et al. 2024, eq. 5): shared heads weighted by a_1 softmax(W_s x), routed heads by
a_2 softmax(W_r x) on their top k (torch.topk) and 0 elsewhere, [a_1, a_2] = softmax(W_h x),
and the layer's output sum_i g_i H^i W_O^i. attncc gives the weights HW and the weighted heads
O; the test projects O with W_O and compares with the paper's sum, on the reference
interpreter, the tiled NumPy path and Triton kernels (interpreted); the kernels compile for
sm_90."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest
import sympy
import torch
from zoo_kernels import (
    FP32_TOLERANCE,
    assert_compiles_for_sm90,
    builder_tests,
    compile_kernels,
    relative_error,
    run_staged,
)

from attncc.analysis import cascade_cost, count_passes
from attncc.backends.execute import Backend, lower_for_tiles
from attncc.backends.numpy.reference import interpret
from attncc.backends.tile_lists import tile_classes
from attncc.backends.triton.launch import TileConfig, _device_lists, tiled_schedule
from attncc.cli import main
from attncc.frontends.zoo.moh import moh, moh_stages
from attncc.ir import size_symbol

EXAMPLE_OPTIONS: dict[str, Any] = {"shared_heads": 2, "top_k": 2, "causal": True}


@dataclass(frozen=True)
class Case:
    name: str
    options: dict[str, Any] = field(default_factory=dict)
    heads: int = 6
    groups: int = 6

    @property
    def shared(self) -> int:
        return int(self.options.get("shared_heads", 2))

    @property
    def top_k(self) -> int:
        return int(self.options.get("top_k", 2))


CASES = (
    Case("default"),
    Case("causal_gqa", {"causal": True, "gqa_group": 2, "top_k": 3}, groups=3),
    Case("mqa_one_shared", {"gqa_group": 4, "shared_heads": 1, "top_k": 1}, heads=4, groups=1),
)
B, D, E, F, N = 2, 12, 16, 8, 100


def inputs_for(case: Case, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "X": rng.standard_normal((B, D, N)),
        "WG": rng.standard_normal((case.heads, D)),
        "WA": rng.standard_normal((2, D)),
        "Q": rng.standard_normal((B, case.heads, E, N)),
        "K": rng.standard_normal((B, case.groups, E, N)),
        "V": rng.standard_normal((B, case.groups, F, N)),
    }


def torch_moh(case: Case, inputs: dict[str, np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
    """(g [B, P, H], the heads H^i [B, H, P, F]) in float64, from the paper."""
    x = torch.from_numpy(inputs["X"]).transpose(1, 2)  # [B, P, D]
    w = torch.from_numpy(inputs["WG"])
    w_shared, w_routed = w[: case.shared], w[case.shared :]
    balance = torch.softmax(x @ torch.from_numpy(inputs["WA"]).T, dim=-1)  # [a_1, a_2]
    shared = balance[..., :1] * torch.softmax(x @ w_shared.T, dim=-1)
    logits = x @ w_routed.T
    chosen = logits.topk(min(case.top_k, logits.shape[-1]), dim=-1).indices
    top = torch.zeros_like(logits, dtype=torch.bool).scatter_(-1, chosen, True)
    routed = balance[..., 1:] * torch.softmax(logits, dim=-1) * top
    weights = torch.cat([shared, routed], dim=-1)
    group = case.heads // case.groups
    q = torch.from_numpy(inputs["Q"]).transpose(2, 3)
    k = torch.from_numpy(inputs["K"]).transpose(2, 3).repeat_interleave(group, 1)
    v = torch.from_numpy(inputs["V"]).transpose(2, 3).repeat_interleave(group, 1)
    scores = q @ k.transpose(2, 3) / math.sqrt(E)
    if case.options.get("causal"):
        scores = scores.masked_fill(torch.ones(N, N, dtype=torch.bool).triu(1), -math.inf)
    return weights, torch.softmax(scores, dim=-1) @ v


def moh_output(weights: torch.Tensor, heads: torch.Tensor, w_out: torch.Tensor) -> torch.Tensor:
    """sum_i g_i H^i W_O^i: [B, P, D_out]."""
    return torch.einsum("bph,bhpf,hfd->bpd", weights, heads, w_out)


def check(
    case: Case, got: dict[str, np.ndarray], inputs: dict[str, np.ndarray], tol: float
) -> None:
    weights, heads = torch_moh(case, inputs)
    w_out = torch.from_numpy(np.random.default_rng(9).standard_normal((case.heads, F, 5)))
    projected = torch.einsum("bhfp,hfd->bpd", torch.from_numpy(got["O"]).double(), w_out)
    assert relative_error(projected.numpy(), moh_output(weights, heads, w_out)) < tol
    assert relative_error(got["HW"], weights.transpose(1, 2)) < tol
    # Exactly shared + top_k heads carry weight for every token (ties have measure zero).
    assert ((got["HW"] != 0).sum(axis=1) == case.shared + case.top_k).all()


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_cascade_matches_pytorch(case: Case) -> None:
    inputs = inputs_for(case)
    check(case, interpret(moh(**case.options), inputs), inputs, 1e-12)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
@pytest.mark.parametrize("backend", [Backend.REFERENCE, Backend.NUMPY], ids=lambda b: b.value)
def test_stages_match_pytorch(case: Case, backend: Backend) -> None:
    inputs = inputs_for(case, seed=1)
    got = run_staged(moh_stages(**case.options), inputs, backend)
    check(case, got, inputs, 1e-12 if backend is Backend.REFERENCE else FP32_TOLERANCE)


@pytest.mark.triton_interpret
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_triton_stages_match_pytorch(case: Case) -> None:
    inputs = inputs_for(case, seed=2)
    got = run_staged(moh_stages(**case.options), inputs, Backend.TRITON)
    assert got["O"].dtype == np.float32
    check(case, got, inputs, FP32_TOLERANCE)


def zero_weight_inputs(case: Case) -> dict[str, np.ndarray]:
    """Inputs over 256 tokens where routed head 2 of batch 1 has no weight over query tile 1
    (tokens 64..127): X there is a direction that puts head 2's logit below the other routed
    heads' (WG's routed rows orthogonal but for head 2's negative part)."""
    rng = np.random.default_rng(3)
    x = {**inputs_for(case), "X": rng.standard_normal((B, D, 256))}
    for name, shape in (("Q", (B, case.heads, E, 256)), ("K", (B, case.groups, E, 256))):
        x[name] = rng.standard_normal(shape)
    x["V"] = rng.standard_normal((B, case.groups, F, 256))
    unit = np.zeros(D)
    unit[0] = 1.0
    x["WG"][2] = -5.0 * unit + 0.01 * x["WG"][2]
    x["X"][1, :, 64:128] = 3.0 * unit[:, None] + 0.01 * x["X"][1, :, 64:128]
    return x


def test_zero_weight_head_tiles_are_skipped() -> None:
    """The attention stage is block-sparse per (batch, head): Triton's tile list for a
    (batch, head, query tile) whose weights are all 0 holds no key tile, and O is exactly 0
    there; reference, NumPy and Triton agree with the paper's PyTorch within 1e-5."""
    case = CASES[0]
    x = zero_weight_inputs(case)
    weights = interpret(moh_stages().stages[0].cascade, {n: x[n] for n in ("X", "WG", "WA")})
    assert (weights["HW"][1, 2, 64:128] == 0).all()
    stage = moh_stages().stages[1].cascade
    nest = tiled_schedule(lower_for_tiles(stage), TileConfig(64, 64))
    assert nest.sparse is not None
    sizes = {"B": B, "H": case.heads, "E": E, "F": F, "M": 256, "P": 256, "M0": 64, "M1": 4}
    given = {**{n: x[n] for n in "QKV"}, "HW": weights["HW"]}
    lists = _device_lists(tile_classes(nest, sizes, given), nest, sizes, torch.device("cpu"))
    counts = lists["tile_counts"].numpy().reshape(B, case.heads, 4)
    assert counts[1, 2, 1] == 0
    # Every other (batch, head, query tile) walks all 4 key tiles (no causal mask).
    unchosen = (weights["HW"].reshape(B, case.heads, 4, 64) == 0).all(axis=-1)
    assert (counts == np.where(unchosen, 0, 4)).all()
    paper_weights, heads = torch_moh(case, x)
    expected = (paper_weights.transpose(1, 2)[..., None] * heads).transpose(2, 3).numpy()
    for backend in (Backend.REFERENCE, Backend.NUMPY, Backend.TRITON):
        got = run_staged(moh_stages(), x, backend)
        assert (got["O"][1, 2, :, 64:128] == 0).all(), backend
        assert np.abs(got["O"] - expected).max() < 1e-5, backend


def test_pass_counts_and_costs_checked_by_hand() -> None:
    cascade = moh()
    # H: the router's group max (GS, GR), then exp and group sums (EG, SS, SR), then HW.
    assert count_passes(cascade, "H").passes == 3
    assert count_passes(cascade, "M").passes == 3  # softmax as written
    assert count_passes(cascade, "C").passes == 2  # the two-way balance: max, then exp and sum
    assert count_passes(cascade, "H2").passes == 1
    Bs, Ds, Es, Fs, Hs, Ms, Ps = (size_symbol(n) for n in "BDEFHMP")
    cost = {c.einsum: dict(c.ops) for c in cascade_cost(cascade).einsums}
    assert sympy.simplify(cost["LG"]["mac"] - Bs * Ds * Hs * Ps) == 0  # router logits
    # CNT over (b, h, h2, p): LG2 > LG, LG2 == LG, h2 >= 2 and h2 < h (the last two once per
    # (h, h2)), three logic ops and the filter's select at each point, one add per point.
    points = Bs * Hs**2 * Ps
    assert sympy.simplify(cost["CNT"]["compare"] - (2 * points + Hs**2 + Hs)) == 0
    assert sympy.simplify(cost["CNT"]["logic"] - 3 * points) == 0
    assert sympy.simplify(cost["CNT"]["add"] - points) == 0
    assert sympy.simplify(cost["O"]["mul"] - Bs * Fs * Hs * Ps) == 0  # the weights, per head
    assert sympy.simplify(cost["QK"]["mac"] - Bs * Es * Hs * Ms * Ps) == 0


def test_analyze_reports_router_and_attention(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["analyze", "moh"]) == 0
    out = capsys.readouterr().out
    assert "passes over H: 3" in out
    assert "GR => EG: GR reduces h fully (max); EG iterates h" in out
    assert "passes over M: 3" in out


test_load_and_example, test_bad_options_are_refused = builder_tests(
    "moh",
    moh,
    EXAMPLE_OPTIONS,
    [({"top_k": 0}, "top_k"), ({"shared_heads": -1}, "shared_heads"), ({"gqa_group": 0}, "gqa")],
)


@pytest.mark.cuda_compile
def test_attention_stage_compiles_for_sm90() -> None:
    sizes = {"B": 2, "H": 8, "G": 4, "E": 64, "F": 64, "M": 256, "P": 256}
    assert_compiles_for_sm90(compile_kernels(moh_stages(causal=True, gqa_group=2), sizes), 1)
