"""Block-sparse masks that read a table at grid indices (batch, head): MoH's `HW[b,h,p] != 0`,
a head with zero weight over a query tile. Tiles are classified per grid point; Triton walks one
tile list per (grid point, query tile) and visits no key tile where the head's weight is zero;
NumPy and the reference interpreter take the union over grid points. The cascade is MoH's
attention stage after lowering (causal, block-sparse), whose mask states the head-weight
condition; the zero-weight tiles here are set by hand in HW, not made by a router."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
import torch

from attncc.analysis.block_sparse import tile_map
from attncc.analysis.tile_map import TileClass
from attncc.backends.execute import Backend, execute, lower_for_tiles
from attncc.backends.numpy.reference import interpret
from attncc.backends.schedule import schedule
from attncc.backends.tile_lists import tile_classes
from attncc.backends.tile_program import tile_program
from attncc.backends.triton.emitter import KernelShape, emit_triton
from attncc.backends.triton.launch import TileConfig, _device_lists, tiled_schedule
from attncc.errors import VerifyError
from attncc.frontends.zoo.moh import moh_stages
from attncc.ir import Cascade, DType, parse, print_cascade, verify

B, H, E, F, N = 2, 3, 16, 8, 200
MASK = "where m1 * M0 + m0 <= p and HW[b,h,p] != 0 else"


def weighted_cascade() -> Cascade:
    lowered = lower_for_tiles(moh_stages(causal=True).stages[1].cascade)
    assert MASK in print_cascade(lowered)
    return lowered


def inputs() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    found = {
        "Q": rng.standard_normal((B, H, E, N)),
        "K": rng.standard_normal((B, H, E, N)),
        "V": rng.standard_normal((B, H, F, N)),
        "HW": rng.standard_normal((B, H, N)),
    }
    found["HW"][1, 2, 64:128] = 0  # head 2 of batch 1 has no weight over query tile 1
    found["HW"][0, 1, :] = 0  # head 1 of batch 0 has none at all
    return found


def torch_reference(x: dict[str, np.ndarray]) -> np.ndarray:
    """HW * softmax(causal QK) V, per head, from plain PyTorch: O[b,h,f,p]."""
    q, k, v = (torch.from_numpy(x[n]).transpose(2, 3) for n in "QKV")
    scores = q @ k.transpose(2, 3) / math.sqrt(E)
    scores = scores.masked_fill(torch.ones(N, N, dtype=torch.bool).triu(1), -math.inf)
    heads = torch.softmax(scores, dim=-1) @ v  # [B, H, P, F]
    return (torch.from_numpy(x["HW"])[..., None] * heads).transpose(2, 3).numpy()


def test_tiles_are_classified_per_grid_point() -> None:
    cascade, x = weighted_cascade(), inputs()
    sizes = {"B": B, "H": H, "E": E, "F": F, "M": N, "P": N, "M0": 64}
    tiles = tile_map(cascade, cascade.sparse[0], sizes, x)
    assert tiles.grid == ("b", "h")
    assert tiles.by_grid is not None and tiles.by_grid.shape == (B, H, 4, 4)
    causal = np.tril(np.ones((4, 4), dtype=np.int8)) + np.tril(np.ones((4, 4), np.int8), -1)
    assert (tiles.by_grid[0, 0] == causal).all()  # every weight nonzero: the causal map
    assert (tiles.by_grid[0, 1] == TileClass.EMPTY).all()
    assert (tiles.by_grid[1, 2, 1] == TileClass.EMPTY).all()
    # The union: EMPTY only where every grid point is; below the diagonal, FULL for some
    # points and EMPTY for (0, 1), so PARTIAL.
    assert (tiles.classes == np.tril(np.ones((4, 4), dtype=np.int8))).all()


def test_triton_lists_give_a_zero_weight_tile_no_key_tile() -> None:
    x = inputs()
    nest = tiled_schedule(weighted_cascade(), TileConfig(64, 64))
    sizes = {"B": B, "H": H, "E": E, "F": F, "M": N, "P": N, "M0": 64, "M1": 4}
    lists = _device_lists(tile_classes(nest, sizes, x), nest, sizes, torch.device("cpu"))
    counts = lists["tile_counts"].numpy().reshape(B, H, 4)
    assert lists["tiles_per_point"] == 4
    assert counts[1, 2, 1] == 0 and (counts[0, 1] == 0).all()
    assert (counts[0, 0] == [1, 2, 3, 4]).all() and (counts[1, 2, [0, 2, 3]] == [1, 3, 4]).all()
    full = lists["tile_full"].numpy().reshape(B, H, 4, 4)
    assert full[0, 0, 3, :3].all() and not full[0, 0, 3, 3]  # the ragged last key tile


@pytest.mark.triton_interpret
@pytest.mark.parametrize("backend", [Backend.REFERENCE, Backend.NUMPY, Backend.TRITON])
def test_results_match_pytorch_and_hidden_heads_give_exactly_zero(backend: Backend) -> None:
    cascade, x = weighted_cascade(), inputs()
    if backend is Backend.REFERENCE:
        got = interpret(cascade, x)["O"]
    else:
        got = execute(cascade, {n: a.astype(np.float32) for n, a in x.items()}, backend=backend)[
            "O"
        ]
    expected = torch_reference(x)
    assert np.abs(got - expected).max() < 1e-5
    assert (got[1, 2, :, 64:128] == 0).all() and (got[0, 1] == 0).all()
    assert not np.isnan(got).any()


def test_the_verifier_admits_grid_indices_only_on_the_left_side() -> None:
    verify(weighted_cascade())
    text = print_cascade(weighted_cascade()).replace(MASK, MASK.replace("p] != 0", "e] != 0"))
    with pytest.raises(VerifyError, match="the mask of QK reads index e"):
        verify(parse(text))


def test_load_names_are_unique_in_a_kernel() -> None:
    """Every `ldN_X` is assigned once: the loop's dialects start from values loaded before
    the loop and number their own loads after them."""
    program = tile_program(schedule(weighted_cascade()))
    shape = KernelShape(
        64, 64, {"e": E, "f": F}, {n: DType.F32 for n in ("Q", "K", "V", "HW", "O")}
    )
    source = emit_triton(program, shape, function="k")
    names = re.findall(r"^\s*(ld\d+_\w+) =", source, flags=re.MULTILINE)
    assert names and len(names) == len(set(names))
