"""Kernels compiled for sm_80 and sm_90 without a GPU: resources from the cubin, and refusals."""

from __future__ import annotations

from typing import Any

import pytest
import triton
import triton.language as tl
from triton.runtime.interpreter import InterpretedFunction

from attncc.backends.triton.cubin import (
    TARGETS,
    KernelResources,
    compile_kernel,
    resource_table,
    resources,
)
from attncc.errors import LoweringError

needs_compiler = pytest.mark.cuda_compile


@triton.jit
def flash_tile(Q, K, V, Out, N, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, D: tl.constexpr):
    """One query tile of flash attention, scores already in log2 units: two dots, exp2."""
    offs_m = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, D)
    q = tl.load(Q + offs_m[:, None] * D + offs_d[None, :])
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, D], tl.float32)
    for start in range(0, N, BLOCK_N):
        kt = tl.load(K + (start + offs_n)[None, :] * D + offs_d[:, None])
        v = tl.load(V + (start + offs_n)[:, None] * D + offs_d[None, :])
        s = tl.dot(q, kt)
        m_new = tl.maximum(m_i, tl.max(s, 1))
        alpha = tl.math.exp2(m_i - m_new)
        p = tl.math.exp2(s - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None] + tl.dot(p.to(tl.float16), v)
        m_i = m_new
    tl.store(Out + offs_m[:, None] * D + offs_d[None, :], (acc / l_i[:, None]).to(tl.float16))


@triton.jit
def scale_rows(X, Y, BLOCK: tl.constexpr):
    offs = tl.arange(0, BLOCK)
    x = tl.load(X + offs[:, None] * BLOCK + offs[None, :]).to(tl.float32)
    tl.store(Y + offs[:, None] * BLOCK + offs[None, :], tl.math.exp2(x - tl.max(x, 1)[:, None]))


@triton.jit
def small_dot(X, Y, BLOCK: tl.constexpr):
    offs = tl.arange(0, BLOCK)
    x = tl.load(X + offs[:, None] * BLOCK + offs[None, :])
    tl.store(Y + offs[:, None] * BLOCK + offs[None, :], tl.dot(x, x))


FLASH_SIGNATURE = {
    "Q": "*fp16", "K": "*fp16", "V": "*fp16", "Out": "*fp16", "N": "i32",
    "BLOCK_M": "constexpr", "BLOCK_N": "constexpr", "D": "constexpr",
}  # fmt: skip
FLASH_TILES = {"BLOCK_M": 128, "BLOCK_N": 64, "D": 64}
TILE_SIGNATURE = {"X": "*fp16", "Y": "*fp32", "BLOCK": "constexpr"}


def compile_resources(
    fn: Any, signature: dict[str, str], constexprs: dict[str, object], arch: int, num_warps: int = 4
) -> KernelResources:
    compiled = compile_kernel(fn, signature, constexprs, arch, num_warps=num_warps, num_stages=3)
    return resources(compiled, arch, num_warps=num_warps, num_stages=3)


@pytest.fixture(scope="module")
def flash() -> dict[int, KernelResources]:
    return {
        arch: compile_resources(flash_tile, FLASH_SIGNATURE, FLASH_TILES, arch) for arch in TARGETS
    }


@needs_compiler
@pytest.mark.parametrize("arch", TARGETS)
def test_flash_tile_uses_tensor_cores_without_spilling(
    flash: dict[int, KernelResources], arch: int
) -> None:
    got = flash[arch]
    assert (got.kernel, got.arch, got.num_warps, got.num_stages) == ("flash_tile", arch, 4, 3)
    assert 0 < got.registers <= 255
    assert not got.spills
    assert got.mma_instructions > 0
    # The Q and K, V tiles live in shared memory: 128x64 and 2 * 64x64 fp16 at the least.
    assert got.shared_bytes >= (128 * 64 + 2 * 64 * 64) * 2


@needs_compiler
def test_only_hopper_uses_warpgroup_mma(flash: dict[int, KernelResources]) -> None:
    assert flash[80].wgmma_instructions == 0
    assert 0 < flash[90].wgmma_instructions == flash[90].mma_instructions


@needs_compiler
def test_one_warp_holding_a_flash_tile_spills() -> None:
    # 64x64 fp32 scores and 64x64 accumulator on 32 threads: over 255 registers each.
    found = compile_resources(
        flash_tile, FLASH_SIGNATURE, {"BLOCK_M": 64, "BLOCK_N": 64, "D": 64}, 80, num_warps=1
    )
    assert found.spills
    assert found.registers == 255
    assert found.stack_bytes > 0 and found.spill_instructions > 0


@needs_compiler
def test_kernel_without_dot_has_no_mma() -> None:
    found = compile_resources(scale_rows, TILE_SIGNATURE, {"BLOCK": 32}, 80)
    assert (found.mma_instructions, found.wgmma_instructions) == (0, 0)
    assert found.registers > 0 and not found.spills


@needs_compiler
def test_table_has_a_line_per_kernel_and_arch(flash: dict[int, KernelResources]) -> None:
    table = resource_table([flash[arch] for arch in TARGETS])
    header, *rows = table.splitlines()
    assert header.split()[:2] == ["kernel", "arch"]
    assert [row.split()[:2] for row in rows] == [["flash_tile", f"sm_{arch}"] for arch in TARGETS]
    assert len({len(row) for row in table.splitlines()}) == 1


@needs_compiler
def test_interpreted_function_is_compiled_as_the_jit_function() -> None:
    compiled = compile_kernel(InterpretedFunction(scale_rows.fn), TILE_SIGNATURE, {"BLOCK": 32}, 90)
    assert compiled.name == "scale_rows"


@needs_compiler
@pytest.mark.parametrize("arch", TARGETS)
def test_dot_below_16_is_a_lowering_error_naming_kernel_and_arch(arch: int) -> None:
    with pytest.raises(LoweringError) as caught:
        compile_kernel(small_dot, TILE_SIGNATURE, {"BLOCK": 8}, arch)
    message = str(caught.value)
    assert f"kernel small_dot on sm_{arch}: compilation failed" in message
    assert "K >= 16" in message
    assert caught.value.__cause__ is None and caught.value.__suppress_context__


@pytest.mark.parametrize(
    ("fn", "signature", "constexprs", "message"),
    [
        (small_dot, {"X": "*fp16", "BLOCK": "constexpr"}, {"BLOCK": 16}, "'Y' has no type"),
        (small_dot, TILE_SIGNATURE, {"BLOCK": 16, "B": 2}, "constexprs names 'B'"),
    ],
)
def test_arguments_that_do_not_match_the_kernel_are_refused(
    fn: Any, signature: dict[str, str], constexprs: dict[str, object], message: str
) -> None:
    with pytest.raises(LoweringError, match=message):
        compile_kernel(fn, signature, constexprs, 80)


def test_a_plain_function_is_refused_with_a_hint() -> None:
    with pytest.raises(LoweringError, match=r"forget to add @triton\.jit"):
        compile_kernel(small_dot.fn, TILE_SIGNATURE, {"BLOCK": 16}, 80)


@needs_compiler
def test_resources_refuse_options_the_kernel_was_not_compiled_with() -> None:
    compiled = compile_kernel(scale_rows, TILE_SIGNATURE, {"BLOCK": 32}, 80)
    with pytest.raises(LoweringError, match="compiled for sm_80 with num_warps=4, num_stages=2"):
        resources(compiled, 80, num_warps=8, num_stages=2)


@needs_compiler
def test_missing_cuobjdump_is_a_lowering_error(monkeypatch: pytest.MonkeyPatch) -> None:
    compiled = compile_kernel(scale_rows, TILE_SIGNATURE, {"BLOCK": 32}, 80)
    # Triton looks at TRITON_CUOBJDUMP_PATH, then at the copy in its wheel: hide both.
    monkeypatch.delenv("TRITON_CUOBJDUMP_PATH", raising=False)
    tool = type(triton.knobs.nvidia).__dict__["cuobjdump"]
    monkeypatch.setattr(tool, "default_path", "/nonexistent/cuobjdump")
    with pytest.raises(LoweringError, match=r"kernel scale_rows on sm_80: .* cuobjdump not found"):
        resources(compiled, 80, num_warps=4, num_stages=2)


@pytest.mark.triton_interpret
def test_compiling_with_an_interpreted_library_is_refused() -> None:
    with pytest.raises(LoweringError, match=r"kernel scale_rows on sm_80: .*TRITON_INTERPRET=1"):
        compile_kernel(scale_rows, TILE_SIGNATURE, {"BLOCK": 32}, 80)
