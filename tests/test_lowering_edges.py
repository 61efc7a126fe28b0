"""Edge cases of lowering, each once silently wrong (found in review): both tiled backends
must agree with the reference interpreter, or refuse with the reason."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pytest
import torch

from attncc.backends.numpy.reference import interpret
from attncc.backends.numpy.tiled import run_tiled
from attncc.backends.schedule import retile, schedule
from attncc.backends.tile_program import tile_program
from attncc.errors import LoweringError
from attncc.frontends.library import attention_3pass
from attncc.ir import Cascade, parse
from attncc.passes import run_pipeline

HEAD = """cascade t
rank E, M, P, M0 = 8
partition M -> M1, M0
input Q[e,p] : f32
input K[e,m] : f32
output Z[p] : f32
BK[e,m1,m0] = K[e,m1*M0+m0]
QK[m1,m0,p] = Q[e,p] * BK[e,m1,m0]
"""

FILLED_REDUCTION = (
    HEAD
    + """LM[m1,p] = max(m0) QK[m1,m0,p] where p < 5 else 7
RM[0,p] = -inf
RM[m1+1,p] = max(RM[m1,p], LM[m1,p])
Z[p] = RM[M1,p]
"""
)

FULL_TILE_COUNT = """cascade count
rank E, M, P, M0 = 8
partition M -> M1, M0
input Q[e,p] : f32
input K[e,m] : f32
output Z[p] : f32
sparse C[m1, p//8]
X[p] = Q[0,p]
C[m1,p] = sum(m0) X[p] where m1*M0+m0 <= p
RC[0,p] = 0
RC[m1+1,p] = RC[m1,p] + C[m1,p]
Z[p] = RC[M1,p]
"""

SOFTMAX = """cascade {name}
rank E, F, M, P{ranks}
input Q[e,p] : f32
input K[e,m] : f32
input V[f,m] : f32
{inputs}output AV[f,p] : f32
S[m,p] = Q[e,p] * K[e,m]
QK[m,p] = {scores} where {mask} else -inf
GM[p] = max(m) QK[m,p]
SN[m,p] = exp(QK[m,p] - GM[p])
SD[p] = SN[m,p]
A[m,p] = SN[m,p] / SD[p]
AV[f,p] = A[m,p] * V[f,m]
"""

WINDOWED_BIAS = SOFTMAX.format(
    name="window",
    ranks=", R = 7",
    inputs="input REL[r] : f32\n",
    scores="S[m,p] + REL[m-p+3]",
    mask="p - 3 <= m and m <= p + 3",
)

LOGICAL_IDS = SOFTMAX.format(
    name="logic",
    ranks="",
    inputs="input KDOC[m] : i32\ninput QDOC[p] : i32\n",
    scores="S[m,p]",
    mask="KDOC[m] and QDOC[p]",
)


def _inputs(cascade: Cascade, n: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    arrays: dict[str, np.ndarray] = {}
    for decl in cascade.inputs:
        if decl.name == "REL":
            arrays[decl.name] = rng.standard_normal(7).astype(np.float32)
        elif decl.dtype is not None and decl.dtype.is_float:
            arrays[decl.name] = rng.standard_normal((4, n)).astype(np.float32)
        else:
            arrays[decl.name] = rng.integers(0, 3, n).astype(np.int32)
    return arrays


def _assert_backends_agree(
    cascade: Cascade, inputs: Mapping[str, np.ndarray], tiles: tuple[int, int]
) -> None:
    expected = interpret(cascade, inputs)
    actual = run_tiled(cascade, inputs, query_tile=tiles[0], key_tile=tiles[1])
    for name, want in expected.items():
        np.testing.assert_allclose(actual[name], want, rtol=1e-5, atol=1e-5, err_msg=name)


CASES = {
    "filter not reading the reduced axis fills whole rows": (FILLED_REDUCTION, "", (16, 16)),
    "FULL tiles count every lane of a value not spanning the key axis": (
        FULL_TILE_COUNT,
        "",
        (8, 8),
    ),
    "reads out of range only where masked": (WINDOWED_BIAS, "flash-sparse,canonicalize", (16, 16)),
    "logical operators on integer ids": (LOGICAL_IDS, "flash-sparse,canonicalize", (16, 16)),
}


@pytest.mark.parametrize("name", CASES)
def test_numpy_path(name: str) -> None:
    text, pipeline, tiles = CASES[name]
    cascade = parse(text)
    if pipeline:
        cascade = run_pipeline(cascade, pipeline)[0]
    _assert_backends_agree(cascade, _inputs(cascade, 20 if "count" in text else 40, 0), tiles)


@pytest.mark.triton_interpret
@pytest.mark.parametrize("name", CASES)
def test_triton_path(name: str) -> None:
    from attncc.backends.triton.launch import TileConfig, run_triton

    text, pipeline, tiles = CASES[name]
    cascade = parse(text)
    if pipeline:
        cascade = run_pipeline(cascade, pipeline)[0]
    inputs = _inputs(cascade, 40, 1)
    expected = interpret(cascade, inputs)
    config = TileConfig(max(tiles[0], 16), max(tiles[1], 16))
    actual = run_triton(cascade, {k: torch.from_numpy(v) for k, v in inputs.items()}, config=config)
    for name_, want in expected.items():
        np.testing.assert_allclose(actual[name_].numpy(), want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    ("causal", "keys", "queries"), [(True, 150, 70), (True, 70, 150), (False, 90, 33)]
)
def test_unbatched_and_unequal_lengths(causal: bool, keys: int, queries: int) -> None:
    cascade, _ = run_pipeline(attention_3pass(causal=causal), "flash-sparse,canonicalize")
    rng = np.random.default_rng(2)
    inputs = {
        "Q": rng.standard_normal((16, queries)).astype(np.float32),
        "K": rng.standard_normal((16, keys)).astype(np.float32),
        "V": rng.standard_normal((8, keys)).astype(np.float32),
    }
    _assert_backends_agree(cascade, inputs, (32, 64))


def test_a_total_over_key_tiles_with_a_fill_is_refused() -> None:
    text = HEAD + "LM[m1,p] = max(m0) QK[m1,m0,p]\nZ[p] = sum(m1) LM[m1,p] where p < 5 else 5\n"
    with pytest.raises(LoweringError, match=r"fills fully masked points with 5\.0"):
        tile_program(schedule(parse(text)))


def test_retiling_refuses_results_that_count_tiles() -> None:
    text = HEAD + (
        "LM[m1,p] = max(m0) QK[m1,m0,p]\n"
        "CN[0,p] = 0\nCN[m1+1,p] = CN[m1,p] + 1 + 0 * LM[m1,p]\nZ[p] = CN[M1,p]\n"
    )
    with pytest.raises(LoweringError, match="depend on the tile size"):
        retile(parse(text), key_tile=16)


def test_the_whole_key_rank_outside_the_loop_is_refused() -> None:
    text = HEAD.replace("BK[e,m1,m0]", "KM[p] = max(m) K[0,m] * Q[0,p]\nBK[e,m1,m0]", 1) + (
        "LM[m1,p] = max(m0) QK[m1,m0,p] - KM[p]\nRM[0,p] = -inf\n"
        "RM[m1+1,p] = max(RM[m1,p], LM[m1,p])\nZ[p] = RM[M1,p]\n"
    )
    with pytest.raises(LoweringError, match="KM spans the whole key rank M outside the key loop"):
        tile_program(schedule(parse(text)))


def test_zero_tiles_are_refused() -> None:
    cascade = run_pipeline(attention_3pass(), "flash")[0]
    with pytest.raises(LoweringError, match="must be positive"):
        run_tiled(cascade, _inputs(cascade, 10, 0), key_tile=0)
