"""Linear attention's Triton kernels compile for sm_80 and sm_90 without a GPU: the quadratic
forms (causal ones block-sparse), the reassociated forms (one key loop per batch and head, then
the query tiles) and Hedgehog's projections. In fp16 every kernel uses tensor cores (wgmma on
sm_90) and spills no register. In fp32, whose products are IEEE on the FMA units, the kernels
with three 64-wide feature axes (Hedgehog's J = 2*32 beside E and F) or a 64x64 state beside
the query tile (the reassociated form) exceed 255 registers and spill; the others do not.
Run natively: `pytest -m cuda_compile` (tests/conftest.py)."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from attncc.backends.execute import lower_for_tiles
from attncc.backends.schedule import schedule
from attncc.backends.tile_program import tile_program
from attncc.backends.triton.cubin import KernelResources
from attncc.backends.triton.launch import lower_triton
from attncc.backends.triton.report import compile_report
from attncc.frontends.zoo.linear import lightning_attention, linear_attention
from attncc.ir import Cascade, DType, bind_sizes
from attncc.passes import run_pipeline

pytestmark = pytest.mark.cuda_compile

KERNELS: dict[str, Callable[[], Cascade]] = {
    "elu1": lambda: linear_attention(batched=True),
    "elu1_reassociated": lambda: run_pipeline(linear_attention(batched=True), "reassociate")[0],
    "elu1_causal": lambda: linear_attention(batched=True, causal=True),
    "hedgehog_gqa": lambda: linear_attention(feature_map="hedgehog", gqa_group=2),
    "hedgehog_gqa_reassociated": lambda: run_pipeline(
        linear_attention(feature_map="hedgehog", gqa_group=2), "reassociate"
    )[0],
    "lightning_gqa": lambda: lightning_attention(gqa_group=2),
}


def _compile(name: str, dtype: DType) -> tuple[bool, list[KernelResources]]:
    lowered = lower_for_tiles(KERNELS[name]())
    nest = schedule(lowered)
    given = {"B": 2, "H": 4, "G": 2, "E": 64, "F": 64, "M": 256, "P": 256, "D": 32}
    bound = bind_sizes(lowered, {r: s for r, s in given.items() if lowered.rank(r) is not None})
    features = tile_program(nest).feature_sizes(bound)
    dtypes = {d.name: dtype for d in (*lowered.inputs, *lowered.outputs)}
    kernel = lower_triton(lowered, features=features, dtypes=dtypes)
    return nest.hoisted, compile_report(kernel, name=f"{name}-{dtype.value}")


@pytest.mark.parametrize("name", sorted(KERNELS))
def test_fp16_kernels_use_tensor_cores_without_spills(name: str) -> None:
    hoisted, rows = _compile(name, DType.F16)
    assert hoisted == name.endswith("reassociated")
    assert [row.arch for row in rows] == [80, 90]
    for row in rows:
        assert not row.spills, row
        assert 0 < row.registers <= 255, row
        assert row.mma_instructions > 0, row
    assert rows[1].wgmma_instructions > 0, rows[1]


@pytest.mark.parametrize("name", sorted(KERNELS))
def test_fp32_kernels_compile(name: str) -> None:
    _, rows = _compile(name, DType.F32)
    assert [row.arch for row in rows] == [80, 90]
    for row in rows:
        assert 0 < row.registers <= 255 and row.mma_instructions == 0, row
        if not (name.startswith("hedgehog") or name.endswith("reassociated")):
            assert not row.spills, row
