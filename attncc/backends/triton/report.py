"""Emitted kernels compiled for CUDA targets without a GPU, and what the compiler made of them.

`compile_report` compiles a lowered kernel for sm_80 and sm_90 and reads each cubin's
resources (registers, shared memory, spills, tensor-core instructions): proof, on a machine
without a GPU, that the kernel is valid for the GPUs it targets. Triton must have been imported
without TRITON_INTERPRET (see `attncc.backends.triton.cubin`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from attncc.backends.kernel_cache import KernelCache, cache_key
from attncc.backends.triton.cubin import (
    TARGETS,
    KernelResources,
    compile_kernel,
    resources,
)
from attncc.backends.triton.emitter import kernel_parameters
from attncc.backends.triton.launch import KERNEL, LoweredKernel
from attncc.ir import DType

_POINTER = {
    DType.F16: "*fp16",
    DType.BF16: "*bf16",
    DType.F32: "*fp32",
    DType.I32: "*i32",
    DType.I64: "*i64",
    DType.BOOL: "*i1",
}


def signature(lowered: LoweredKernel) -> dict[str, str]:
    """Triton's argument types for the kernel: tensors by element type, scalars as int32."""
    types = {}
    for name in kernel_parameters(lowered.program):
        if name in lowered.shape.dtypes:
            types[name] = _POINTER[lowered.shape.dtypes[name]]
        elif name in ("tile_counts", "tile_indices", "tile_full"):
            types[name] = "*i32"
        else:
            types[name] = "i32"
    return types | {"BLOCK_Q": "constexpr", "BLOCK_K": "constexpr"}


def compile_report(
    lowered: LoweredKernel, archs: Sequence[int] = TARGETS, *, name: str | None = None
) -> list[KernelResources]:
    """Compile `lowered` for each of `archs` and read back its resources."""
    key = cache_key(source=lowered.source)
    module = KernelCache(namespace="triton").load(key, lambda: lowered.source).module
    jitted = module.__dict__[KERNEL]
    config = lowered.config
    constants = {"BLOCK_Q": config.query_tile, "BLOCK_K": config.key_tile}
    rows = []
    for arch in archs:
        compiled = compile_kernel(
            jitted,
            signature(lowered),
            constants,
            arch,
            num_warps=config.num_warps,
            num_stages=config.num_stages,
        )
        found = resources(compiled, arch, num_warps=config.num_warps, num_stages=config.num_stages)
        rows.append(found if name is None else replace(found, kernel=name))
    return rows
