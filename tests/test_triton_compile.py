"""Every kernel the lowering tests emit compiles for sm_80 and sm_90 with no GPU present, at
its default tile configuration: no register spills, and the tile contractions of fp16/bf16
kernels become tensor-core instructions (mma on sm_80, wgmma on sm_90 at 64x64 tiles)."""

from __future__ import annotations

import pytest
from lowering_cases import CASES, Case, inputs_for, sizes

from attncc.backends.schedule import schedule
from attncc.backends.tile_program import tile_program
from attncc.backends.triton.cubin import KernelResources
from attncc.backends.triton.launch import CONFIGS, TileConfig, default_config, lower_triton
from attncc.backends.triton.report import compile_report
from attncc.ir import DType

pytestmark = pytest.mark.cuda_compile


def _compile(case: Case, dtype: DType, head_dim: int) -> list[KernelResources]:
    _, lowered = case.cascades()
    _, bound = inputs_for(lowered, sizes(128, head_dim=head_dim), seed=0)
    features = tile_program(schedule(lowered)).feature_sizes(bound)
    dtypes = {
        d.name: dtype if d.dtype is not None and d.dtype.is_float else d.dtype
        for d in (*lowered.inputs, *lowered.outputs)
    }
    kernel = lower_triton(lowered, features=features, dtypes=dtypes)  # type: ignore[arg-type]
    assert kernel.config == default_config(features, dtypes)  # type: ignore[arg-type]
    return compile_report(kernel, name=f"{case.name}-{dtype.value}")


def _check(rows: list[KernelResources], *, tensor_cores: bool, wgmma: bool) -> None:
    assert [row.arch for row in rows] == [80, 90]
    for row in rows:
        assert not row.spills, row
        assert 0 < row.registers <= 255
        if tensor_cores:
            assert row.mma_instructions > 0, row
    if wgmma:
        assert rows[1].wgmma_instructions > 0, rows[1]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_fp16_kernels_compile_to_tensor_cores_without_spills(case: Case) -> None:
    _check(_compile(case, DType.F16, 64), tensor_cores=True, wgmma=True)


def test_bf16_kernel_compiles_to_tensor_cores() -> None:
    _check(_compile(CASES[1], DType.BF16, 64), tensor_cores=True, wgmma=True)


def test_fp32_kernel_compiles_without_spills() -> None:
    """fp32 products are IEEE (the 1e-5 accuracy contract), so no tensor cores."""
    _check(_compile(CASES[1], DType.F32, 64), tensor_cores=False, wgmma=False)


def test_head_dimension_128_gets_smaller_tiles_and_no_spills() -> None:
    _check(_compile(CASES[1], DType.F16, 128), tensor_cores=True, wgmma=False)


def _config_id(config: TileConfig) -> str:
    return f"{config.query_tile}x{config.key_tile}w{config.num_warps}s{config.num_stages}"


@pytest.mark.parametrize("config", CONFIGS, ids=_config_id)
def test_every_autotuning_candidate_compiles_without_spills(config: TileConfig) -> None:
    _, lowered = CASES[1].cascades()
    dtypes = {n: DType.F16 for n in ("Q", "K", "V", "AV")}
    kernel = lower_triton(lowered, features={"e": 64, "f": 64}, dtypes=dtypes, config=config)
    _check(compile_report(kernel), tensor_cores=True, wgmma=False)
