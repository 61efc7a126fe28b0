"""Content-based block sparsity (attncc.frontends.zoo.routing) against plain PyTorch written from
BiFormer's bi-level routing (Zhu et al. 2023): region queries and keys are the means of their
tokens, affinity Q_r K_r^T, top-k key regions per query region (torch.topk), token attention
inside the chosen regions; the causal form keeps the top k of the earlier blocks and the
diagonal one (SeerAttention's decoder form). The whole cascade runs in the reference
interpreter; its stages run on the reference, the tiled NumPy path and Triton kernels
(interpreted): only the attention stage runs on the tiled backends, the scoring stage always
in the float64 reference interpreter. The kernels compile for sm_90. The tile lists the
kernels walk are the chosen blocks, for blocks smaller than, as large as and larger than the
tiles, and not dividing them."""

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

from attncc.analysis import TileClass, cascade_cost, count_passes
from attncc.analysis.block_sparse import mask_grid
from attncc.backends.execute import LOWERING_PIPELINE, Backend, lower_for_tiles
from attncc.backends.numpy.reference import interpret
from attncc.backends.schedule import schedule
from attncc.backends.tile_lists import tile_classes
from attncc.cli import main
from attncc.errors import ShapeError
from attncc.frontends.zoo.routing import routing, routing_stages
from attncc.ir import print_cascade, size_symbol
from attncc.passes import run_pipeline

EXAMPLE_OPTIONS: dict[str, Any] = {"top_k": 2, "causal": True, "gqa_group": 2}


@dataclass(frozen=True)
class Case:
    name: str
    options: dict[str, Any] = field(default_factory=dict)
    heads: int = 2
    groups: int = 2
    keys: int = 300
    queries: int = 300

    @property
    def staged(self) -> Any:
        return routing_stages(**self.options)


CASES = (
    # Cross-attention lengths, both ragged against the 64-token blocks.
    Case("shared", {"top_k": 2}, keys=300, queries=200),
    Case("causal_gqa", {"top_k": 2, "causal": True, "gqa_group": 2}, heads=4),
    Case("mqa", {"top_k": 3, "gqa_group": 3}, heads=3, groups=1),
    Case("per_head", {"top_k": 2, "per_head": True}),
    Case("per_head_causal_gqa", {"top_k": 1, "per_head": True, "causal": True, "gqa_group": 2}, 4),
)
SHARED = [c for c in CASES if not c.options.get("per_head")]


def inputs_for(case: Case, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "Q": rng.standard_normal((case.heads, 16, case.queries)),
        "K": rng.standard_normal((case.groups, 16, case.keys)),
        "V": rng.standard_normal((case.groups, 8, case.keys)),
    }


def block_means(x: torch.Tensor, block: int) -> torch.Tensor:
    """[heads, n, e] -> [heads, ceil(n / block), e]: the mean of each region's tokens."""
    return torch.stack([x[:, s : s + block].mean(1) for s in range(0, x.shape[1], block)], 1)


def torch_routing(
    inputs: dict[str, np.ndarray], options: dict[str, Any]
) -> tuple[torch.Tensor, torch.Tensor]:
    """(AV [H, F, P], the block table), from the definition, in float64."""
    block, top_k = options.get("block", 64), options.get("top_k", 4)
    causal, per_head = options.get("causal", False), options.get("per_head", False)
    q = torch.from_numpy(inputs["Q"]).transpose(1, 2)  # [H, P, E]
    group = q.shape[0] // inputs["K"].shape[0]
    k = torch.from_numpy(inputs["K"]).transpose(1, 2).repeat_interleave(group, 0)  # [H, M, E]
    v = torch.from_numpy(inputs["V"]).transpose(1, 2).repeat_interleave(group, 0)  # [H, M, F]
    affinity = block_means(q, block) @ block_means(k, block).transpose(1, 2)  # [H, I, J]
    if not per_head:
        affinity = affinity.sum(0, keepdim=True)  # one routing for all heads (BiFormer)
    regions_q, regions_k = affinity.shape[1:]
    earlier = torch.arange(regions_k)[None, :] < torch.arange(regions_q)[:, None]
    if causal:
        affinity = affinity.masked_fill(~earlier, -math.inf)
    chosen = affinity.topk(min(top_k, regions_k), dim=-1).indices
    table = torch.zeros_like(affinity, dtype=torch.bool).scatter_(-1, chosen, True)
    if causal:
        table = (table & earlier) | torch.eye(regions_q, regions_k, dtype=torch.bool)
    positions_q, positions_k = torch.arange(q.shape[1]), torch.arange(k.shape[1])
    visible = table[:, positions_q // block][:, :, positions_k // block]
    if causal:
        visible = visible & (positions_k[None, :] <= positions_q[:, None])
    scores = (q @ k.transpose(1, 2) / math.sqrt(q.shape[-1])).masked_fill(~visible, -math.inf)
    out = torch.softmax(scores, dim=-1) @ v  # [H, P, F]
    return out.transpose(1, 2), table if per_head else table[0]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_cascade_matches_pytorch(case: Case) -> None:
    inputs = inputs_for(case)
    got = interpret(routing(**case.options), inputs)
    want, table = torch_routing(inputs, case.options)
    assert np.array_equal(got["BLOCKS"] != 0, table.numpy())
    assert relative_error(got["AV"], want) < 1e-12


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
@pytest.mark.parametrize("backend", [Backend.REFERENCE, Backend.NUMPY], ids=lambda b: b.value)
def test_stages_match_pytorch(case: Case, backend: Backend) -> None:
    """The attention stage on `backend`; the block table comes from the scoring stage, which
    runs in the reference interpreter whatever the backend: it is checked on the reference."""
    inputs = inputs_for(case, seed=1)
    got = run_staged(case.staged, inputs, backend)
    want, table = torch_routing(inputs, case.options)
    if backend is Backend.REFERENCE:
        assert np.array_equal(got["BLOCKS"] != 0, table.numpy())
    tolerance = 1e-12 if backend is Backend.REFERENCE else FP32_TOLERANCE
    assert relative_error(got["AV"], want) < tolerance


@pytest.mark.triton_interpret
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_triton_stages_match_pytorch(case: Case) -> None:
    inputs = inputs_for(case, seed=2)
    got = run_staged(case.staged, inputs, Backend.TRITON)
    want, _ = torch_routing(inputs, case.options)
    assert got["AV"].dtype == np.float32
    assert relative_error(got["AV"], want) < FP32_TOLERANCE


TILE = 64
"""The query and key tiles of the lowered attention (M0 and the sparse query tile)."""

BLOCK_CASES = (
    *SHARED,
    Case("block32", {"top_k": 3, "block": 32}, keys=300, queries=200),
    Case("block128", {"top_k": 1, "block": 128}, keys=400, queries=300),
    Case("block48_causal", {"top_k": 2, "block": 48, "causal": True}, heads=2),
)


def per_tile(visible: np.ndarray, reduce: str) -> np.ndarray:
    """[query, key] visibility -> [query tile, key tile], any or all of each (ragged) tile."""
    queries, keys = visible.shape
    return np.array(
        [
            [getattr(visible[q : q + TILE, k : k + TILE], reduce)() for k in range(0, keys, TILE)]
            for q in range(0, queries, TILE)
        ]
    )


@pytest.mark.parametrize("case", BLOCK_CASES, ids=lambda c: c.name)
def test_kernels_visit_only_the_chosen_blocks(case: Case) -> None:
    """The runtime classifier reads the block table's data: a tile is visited (not EMPTY)
    exactly where some query and key in it are visible (the table at their blocks, and
    m <= p when causal), and FULL where all are, whatever the block against the tile."""
    inputs = inputs_for(case)
    scoring = {name: inputs[name] for name in ("Q", "K")}
    table = interpret(case.staged.stages[0].cascade, scoring)["BLOCKS"].astype(np.int32)
    nest = schedule(lower_for_tiles(case.staged.stages[1].cascade))
    sizes = {"P": case.queries, "M": case.keys, "M0": TILE}
    classes = tile_classes(nest, sizes, {"BLOCKS": table}).classes
    block = case.options.get("block", 64)
    p, m = np.arange(case.queries)[:, None], np.arange(case.keys)[None, :]
    visible = table[p // block, m // block] != 0
    if case.options.get("causal"):
        visible &= m <= p
    assert np.array_equal(classes != TileClass.EMPTY, per_tile(visible, "any"))
    assert np.array_equal(classes == TileClass.FULL, per_tile(visible, "all"))
    # top_k of the key blocks per query block (the causal diagonal adds one, but the first
    # query blocks have fewer earlier blocks to choose from).
    if not case.options.get("causal"):
        assert (table.sum(axis=1) == case.options["top_k"]).all()
    if block == TILE and not case.options.get("causal"):
        assert np.array_equal(classes != TileClass.EMPTY, table != 0)


def test_causal_routing_is_self_attention() -> None:
    """The diagonal block j == i is query block i's own tokens only when P = M: the cascade
    declares it, and a call with other lengths is refused."""
    assert "M, P = M, QB = 64" in print_cascade(routing(causal=True))
    assert "M, P, QB = 64" in print_cascade(routing())
    rng = np.random.default_rng(0)
    inputs = {
        "Q": rng.standard_normal((2, 16, 200)),
        "K": rng.standard_normal((2, 16, 260)),
        "V": rng.standard_normal((2, 8, 260)),
    }
    with pytest.raises(ShapeError, match="rank P is"):
        routing_stages(causal=True).run(inputs)


def test_per_head_tables_are_masks_in_every_tile() -> None:
    """A table per head is read at the grid index h: the block-sparse pass declares it and
    the tiles are classified per head (attncc.analysis.block_sparse.mask_grid)."""
    stage = routing_stages(per_head=True).stages[1].cascade
    lowered, records = run_pipeline(stage, LOWERING_PIPELINE)
    assert [s.tensor for s in lowered.sparse] == ["QK"]
    assert mask_grid(lowered, lowered.sparse[0]) == ("h",)
    remarks = next(r.remarks for r in records if r.name == "block-sparse")
    assert remarks[0] == "QK skips EMPTY tiles of M1 x 64"
    shared = lower_for_tiles(routing_stages().stages[1].cascade)
    assert [s.tensor for s in shared.sparse] == ["QK"]


def test_pass_counts_and_costs_checked_by_hand() -> None:
    cascade = routing(top_k=2)
    # M: softmax as written, 3 passes (max, then exp and sum, then divide and AV).
    assert count_passes(cascade, "M").passes == 3
    # H: the affinity S sums over every head, and the attention (over h) needs the table.
    assert count_passes(cascade, "H").passes == 2
    # J: S2 copies S along j2 (a sum over j with one surviving j), CNT then iterates j again.
    assert count_passes(cascade, "J").passes == 2
    assert count_passes(cascade, "J2").passes == 1
    E, H, M, P = (size_symbol(name) for name in "EHMP")
    blocks_q, blocks_k = sympy.ceiling(P / 64), sympy.ceiling(M / 64)
    cost = {c.einsum: dict(c.ops) for c in cascade_cost(cascade).einsums}
    # S: one multiply-accumulate per (head, e, query block, key block).
    assert sympy.simplify(cost["S"]["mac"] - E * H * blocks_q * blocks_k) == 0
    # CNT over (i, j, j2): S2 > S and S2 == S, an or and an and, the filter's select and the
    # count's add at every point; j2 < j only once per (j, j2).
    points = blocks_q * blocks_k**2
    assert sympy.simplify(cost["CNT"]["compare"] - (2 * points + blocks_k**2)) == 0
    assert sympy.simplify(cost["CNT"]["logic"] - 2 * points) == 0
    assert sympy.simplify(cost["CNT"]["add"] - points) == 0
    # The attention itself is dense in the cascade as written: E*H*M*P multiply-accumulates.
    assert sympy.simplify(cost["QK"]["mac"] - E * H * M * P) == 0


def test_analyze_reports_both_stages(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["analyze", "routing", "-O", "top_k=2"]) == 0
    out = capsys.readouterr().out
    assert "passes over H: 2" in out
    assert "BLOCKS => QK: BLOCKS is ready only after pass 1" in out
    assert "passes over M: 3" in out
    assert "passes over J: 2" in out


test_load_and_example, test_bad_options_are_refused = builder_tests(
    "routing",
    routing,
    EXAMPLE_OPTIONS,
    [
        ({"block": 0}, "block must be a positive integer"),
        ({"top_k": 0}, "top_k"),
        ({"gqa_group": 0}, "gqa_group"),
    ],
)


@pytest.mark.cuda_compile
def test_attention_stage_compiles_for_sm90() -> None:
    sizes = {"H": 4, "G": 2, "E": 64, "F": 64, "M": 256, "P": 256}
    assert_compiles_for_sm90(compile_kernels(routing_stages(causal=True, gqa_group=2), sizes), 1)
