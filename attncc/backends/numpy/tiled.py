"""Fast CPU execution: a one-pass cascade lowered to tiled NumPy code and run.

This is the path users get without a GPU. The cascade is scheduled, its tile program emitted
as Python (`attncc.backends.numpy.emitter`), cached on disk like a compiled kernel, and run
over the block lists of its mask: EMPTY tiles are never visited and FULL tiles skip the mask.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import numpy.typing as npt

from attncc.backends import emit
from attncc.backends import tile_program as tile_program_module
from attncc.backends.kernel_cache import KernelCache, cache_key, shared_cache, source_digest
from attncc.backends.numpy import emitter as numpy_emitter
from attncc.backends.numpy.emitter import emit_numpy
from attncc.backends.numpy.reference import prepare_inputs
from attncc.backends.schedule import Schedule, retile, schedule
from attncc.backends.tile_lists import TileLists, tile_classes
from attncc.backends.tile_program import tile_program
from attncc.errors import ExecutionError
from attncc.ir import Cascade, bind_sizes, print_cascade

DEFAULT_QUERY_TILE = 256
DEFAULT_KEY_TILE = 256


def lower_tiled(
    cascade: Cascade, *, query_tile: int | None = None, key_tile: int | None = None
) -> Schedule:
    """The schedule NumPy runs: `cascade` retiled to CPU-sized tiles (defaults) unless given."""
    query_tile = DEFAULT_QUERY_TILE if query_tile is None else query_tile
    key_tile = DEFAULT_KEY_TILE if key_tile is None else key_tile
    return schedule(
        retile(cascade, key_tile=key_tile, query_tile=query_tile), query_tile=query_tile
    )


def numpy_source(nest: Schedule) -> str:
    return emit_numpy(tile_program(nest))


def run_tiled(
    cascade: Cascade,
    inputs: Mapping[str, npt.ArrayLike],
    sizes: Mapping[str, int] | None = None,
    *,
    query_tile: int | None = None,
    key_tile: int | None = None,
    cache: KernelCache | None = None,
) -> dict[str, np.ndarray]:
    """The outputs of `cascade` on `inputs` (arrays in each input's declared rank order),
    computed tile by tile; float64 when an input is, float32 otherwise."""
    nest = lower_tiled(cascade, query_tile=query_tile, key_tile=key_tile)
    arrays, dtype = prepare_inputs(nest.cascade, inputs)
    arrays = {
        name: a.astype(dtype, copy=False) if a.dtype.kind == "f" else a
        for name, a in arrays.items()
    }
    bound = bind_sizes(nest.cascade, sizes, {name: a.shape for name, a in arrays.items()})
    key = cache_key(
        cascade=print_cascade(nest.cascade),
        query_tile=nest.query_tile,
        emitter=source_digest(emit, tile_program_module, numpy_emitter),
    )
    kernel = (cache or shared_cache("numpy")).load(key, lambda: numpy_source(nest))
    lists = TileLists.of(tile_classes(nest, bound, arrays).classes)
    try:
        result: dict[str, np.ndarray] = kernel.module.kernel(arrays, bound, lists.as_tuple(), dtype)
    except (IndexError, ValueError) as error:
        raise ExecutionError(
            f"tiled NumPy kernel of {nest.cascade.name} failed at sizes {bound}: {error}"
        ) from error
    return result
