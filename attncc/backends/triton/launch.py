"""Running a cascade as a Triton kernel: lower, emit, cache, launch.

On a CUDA device the kernel is JIT-compiled by Triton; without one it runs in Triton's
interpreter on the CPU (the same kernel source, so tests on a CPU check what a GPU runs).
Tile configurations for autotuning are `CONFIGS`; `run_triton` takes one.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from attncc.analysis.block_sparse import sparse_mask
from attncc.analysis.tile_map import TileMap
from attncc.backends import emit
from attncc.backends import tile_program as tile_program_module
from attncc.backends.kernel_cache import KernelCache, cache_key, shared_cache, source_digest
from attncc.backends.schedule import Schedule, retile, schedule
from attncc.backends.tile_lists import TileLists, grid_classes, tile_classes
from attncc.backends.tile_program import TileProgram, tile_program
from attncc.backends.triton import emitter as triton_emitter
from attncc.backends.triton.cubin import library_is_interpreted
from attncc.backends.triton.emitter import (
    KernelShape,
    emit_triton,
    kernel_parameters,
    runtime_sizes,
)
from attncc.errors import ExecutionError, LoweringError
from attncc.ir import Cascade, DType, bind_sizes, print_cascade, tensors_read

KERNEL = "attncc_kernel"

_TORCH_TYPES = {
    torch.float16: DType.F16,
    torch.bfloat16: DType.BF16,
    torch.float32: DType.F32,
    torch.int32: DType.I32,
    torch.int64: DType.I64,
}


@dataclass(frozen=True)
class TileConfig:
    """A tile configuration: queries and keys per tile, warps and pipeline stages."""

    query_tile: int = 64
    key_tile: int = 64
    num_warps: int = 4
    num_stages: int = 2


CONFIGS = (
    TileConfig(64, 64, 8, 2),
    TileConfig(32, 32, 8, 1),
    TileConfig(64, 32, 8, 1),
    TileConfig(128, 64, 8, 2),
)
"""Candidates for autotuning on a GPU; the block-sparse mask is classified again at each
configuration's tiles. `default_config` picks among the first three."""


def default_config(features: Mapping[str, int], dtypes: Mapping[str, DType]) -> TileConfig:
    """Tiles that compile without register spills on sm_80 and sm_90 (the cuda_compile tests
    check it): 64x64 on 8 warps for fp16/bf16 up to head dimension 64, 32x32 beyond; 64x32
    for fp32, whose IEEE products run on the FMA units and hold more registers."""
    if DType.F32 in dtypes.values():
        return CONFIGS[2]
    return CONFIGS[0] if max(features.values(), default=0) <= 64 else CONFIGS[1]


@dataclass(frozen=True)
class LoweredKernel:
    """A cascade lowered for Triton at one shape class: the program, shape and source."""

    nest: Schedule
    program: TileProgram
    shape: KernelShape
    config: TileConfig
    source: str


def tiled_schedule(cascade: Cascade, config: TileConfig) -> Schedule:
    """The loop nest of `cascade` at `config`'s tiles."""
    tiled = retile(cascade, key_tile=config.key_tile, query_tile=config.query_tile)
    return schedule(tiled, query_tile=config.query_tile)


def lower_triton(
    cascade: Cascade,
    *,
    features: Mapping[str, int],
    dtypes: Mapping[str, DType],
    config: TileConfig | None = None,
) -> LoweredKernel:
    """`cascade` retiled to `config` (default: `default_config`) and emitted for feature sizes
    `features` (index name -> size) and element types `dtypes` (tensor name -> type)."""
    config = config or default_config(features, dtypes)
    nest = tiled_schedule(cascade, config)
    program = tile_program(nest)
    missing = [v for v in program.features if v not in features]
    if missing:
        raise LoweringError(f"no size for feature rank(s) {', '.join(missing)}")
    shape = KernelShape(
        query_tile=config.query_tile,
        key_tile=config.key_tile,
        features={v: features[v] for v in program.features},
        dtypes=dict(dtypes),
    )
    return LoweredKernel(nest, program, shape, config, emit_triton(program, shape, function=KERNEL))


def run_triton(
    cascade: Cascade,
    inputs: Mapping[str, torch.Tensor | npt.ArrayLike],
    sizes: Mapping[str, int] | None = None,
    *,
    config: TileConfig | None = None,
    cache: KernelCache | None = None,
) -> dict[str, torch.Tensor]:
    """The outputs of `cascade` on `inputs` (tensors in each input's declared rank order, on
    one device); outputs take the inputs' floating-point type."""
    tensors = _tensors(cascade, inputs)
    shapes = {name: tuple(t.shape) for name, t in tensors.items()}
    floats = [t.dtype for t in tensors.values() if t.is_floating_point()]
    out_type = floats[0] if floats else torch.float32
    dtypes = {name: _dtype(name, t.dtype) for name, t in tensors.items()}
    dtypes |= {d.name: _dtype(d.name, out_type) for d in cascade.outputs}
    # Head dimensions do not depend on the tiles: read them off the untiled loop nest.
    features = tile_program(schedule(cascade)).feature_sizes(bind_sizes(cascade, sizes, shapes))
    chosen = config or default_config(features, dtypes)
    key = cache_key(
        cascade=print_cascade(cascade),
        config=(chosen.query_tile, chosen.key_tile),
        features=tuple(sorted(features.items())),
        dtypes=tuple(sorted((n, t.value) for n, t in dtypes.items())),
        emitter=source_digest(emit, tile_program_module, triton_emitter),
    )

    def build() -> str:
        return lower_triton(cascade, features=features, dtypes=dtypes, config=chosen).source

    module = (cache or shared_cache("triton")).load(key, build).module
    nest = tiled_schedule(cascade, chosen)
    bound = bind_sizes(nest.cascade, sizes, shapes)
    device = next(iter(tensors.values())).device
    outputs = {
        d.name: torch.empty(tuple(bound[r] for r in d.ranks), dtype=out_type, device=device)
        for d in cascade.outputs
    }
    _launch(module.__dict__[KERNEL], nest, chosen, bound, {**tensors, **outputs})
    return outputs


def _launch(
    jitted: Any,
    nest: Schedule,
    config: TileConfig,
    sizes: Mapping[str, int],
    tensors: Mapping[str, torch.Tensor],
) -> None:
    """Launch the kernel over the grid of `nest` at `sizes` on `tensors` (inputs and outputs)."""
    device = next(iter(tensors.values())).device
    args: dict[str, Any] = dict(tensors)
    for name, tensor in tensors.items():
        args |= {f"st_{name}_{n}": stride for n, stride in enumerate(tensor.stride())}
    program = tile_program(nest)
    args |= {f"s_{rank}": sizes[rank] for rank in runtime_sizes(program)}
    tiles = tile_classes(nest, sizes, _mask_data(nest, tensors))
    args |= _device_lists(tiles, nest, sizes, device)
    # A hoisted key loop runs once per grid point, whose program then walks the query tiles.
    query_tiles = 1 if nest.hoisted else -(-sizes[nest.rank_of(nest.query)] // config.query_tile)
    grid_points = int(np.prod([sizes[nest.rank_of(g)] for g in nest.grid], dtype=np.int64))
    kernel = _runnable(jitted, device)
    try:
        kernel[(query_tiles, grid_points)](
            *(args[p] for p in kernel_parameters(program)),
            BLOCK_Q=config.query_tile,
            BLOCK_K=config.key_tile,
            num_warps=config.num_warps,
            num_stages=config.num_stages,
        )
    except Exception as error:
        raise ExecutionError(
            f"Triton kernel of {nest.cascade.name} failed at sizes {dict(sizes)}: "
            f"{type(error).__name__}: {error}"
        ) from error


def _tensors(
    cascade: Cascade, inputs: Mapping[str, torch.Tensor | npt.ArrayLike]
) -> dict[str, torch.Tensor]:
    declared = cascade.input_names()
    unknown = [n for n in inputs if n not in declared]
    missing = [n for n in declared if n not in inputs]
    if unknown or missing:
        raise ExecutionError(
            f"inputs of {cascade.name} are {', '.join(declared)}; "
            f"missing: {', '.join(missing) or '-'}, unknown: {', '.join(unknown) or '-'}"
        )
    tensors = {n: torch.as_tensor(inputs[n]) for n in declared}
    devices = {t.device for t in tensors.values()}
    if len(devices) > 1:
        raise ExecutionError(f"inputs of {cascade.name} are on several devices: {devices}")
    return tensors


def _dtype(name: str, dtype: torch.dtype) -> DType:
    found = _TORCH_TYPES.get(dtype)
    if found is None:
        raise ExecutionError(
            f"tensor {name} has element type {dtype}; Triton kernels take float16, bfloat16, "
            "float32 and int32/int64 ids (float64: use the numpy backend)"
        )
    return found


def _mask_data(nest: Schedule, tensors: Mapping[str, torch.Tensor]) -> dict[str, np.ndarray]:
    """What the tile classifier reads, on the CPU: ids, and the tables the block-sparse mask
    reads (head weights may be floating-point)."""
    read = set()
    if nest.sparse is not None:
        read = set(tensors_read(sparse_mask(nest.cascade, nest.sparse)[0]))
    return {
        n: t.detach().float().cpu().numpy() if t.is_floating_point() else t.detach().cpu().numpy()
        for n, t in tensors.items()
        if n in read or not t.is_floating_point()
    }


def _device_lists(
    classes: TileMap, nest: Schedule, sizes: Mapping[str, int], device: torch.device
) -> dict[str, Any]:
    """The tile lists as int32 tensors, one list per (grid point, query tile) where the mask
    reads grid indices, else one per query tile shared by the grid (`tiles_per_point` 0).
    The last key tile of a ragged key rank is never FULL here: FULL tiles skip bounds checks."""
    per_point = grid_classes(classes, nest, sizes)
    lists = TileLists.of(per_point)
    full = lists.full.copy()
    if sizes[nest.key.rank] % sizes[nest.key.inner]:
        full &= lists.indices != sizes[nest.key.outer] - 1
    rows, query_tiles, key_tiles = per_point.shape
    if per_point.size >= 2**31:
        raise ExecutionError(
            f"{rows} x {query_tiles} x {key_tiles} tile list entries: the kernel indexes them "
            "with 32-bit offsets; use larger tiles"
        )
    indices = np.ascontiguousarray(lists.indices, dtype=np.int32).reshape(-1, key_tiles)
    return {
        "tile_counts": torch.as_tensor(lists.counts.astype(np.int32).ravel(), device=device),
        "tile_indices": torch.as_tensor(indices, device=device),
        "tile_full": torch.as_tensor(full.astype(np.int32).reshape(-1, key_tiles), device=device),
        "tiles_stride": key_tiles,
        "tiles_per_point": query_tiles if rows > 1 else 0,
    }


def _runnable(jitted: Any, device: torch.device) -> Any:
    """The kernel as Triton runs it on `device`: compiled on CUDA, interpreted on a CPU."""
    interpreted = library_is_interpreted()
    if device.type == "cuda" and interpreted:
        raise ExecutionError(
            "CUDA tensors, but Triton was started in its interpreter (TRITON_INTERPRET=1): "
            "unset it to compile kernels for the GPU"
        )
    if device.type != "cuda" and not interpreted:
        raise ExecutionError(
            f"{device.type} tensors: Triton kernels run off a GPU only in Triton's interpreter; "
            "set TRITON_INTERPRET=1 before Python starts (attncc run --backend triton does)"
        )
    return jitted


def autotune(
    cascade: Cascade,
    inputs: Mapping[str, torch.Tensor],
    sizes: Mapping[str, int] | None = None,
    configs: tuple[TileConfig, ...] = CONFIGS,
) -> TileConfig:
    """The fastest of `configs` for `cascade` on these CUDA inputs, timed end to end (tile
    classification included) with Triton's `do_bench`."""
    devices = {t.device.type for t in inputs.values()}
    if devices != {"cuda"}:
        raise ExecutionError(
            f"autotuning times kernels on a CUDA device; these inputs are on {sorted(devices)} "
            "(use default_config there)"
        )
    from triton.testing import do_bench

    def timing(config: TileConfig) -> float:
        return float(do_bench(lambda: run_triton(cascade, inputs, sizes, config=config)))

    return min(configs, key=timing)
