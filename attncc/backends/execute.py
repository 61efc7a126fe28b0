"""One entry point for running a cascade on any backend: what `attncc run --backend` and the
framework integrations call.

`reference` interprets the cascade as written; `numpy` and `triton` first rewrite it with
`LOWERING_PIPELINE` into the one-pass form their loop nests need (a cascade already in that
form goes through unchanged), then run the tiled NumPy kernel or the Triton kernel (compiled on
CUDA, interpreted on a CPU).
"""

from __future__ import annotations

import enum
import functools
from collections.abc import Mapping

import numpy as np
import numpy.typing as npt

from attncc.backends.numpy.reference import interpret
from attncc.ir import Cascade
from attncc.passes import run_pipeline

LOWERING_PIPELINE = "flash-sparse,canonicalize"
"""Softmax to its running one-pass form, masked tiles skipped, constants folded."""


class Backend(enum.Enum):
    REFERENCE = "reference"
    NUMPY = "numpy"
    TRITON = "triton"


@functools.lru_cache(maxsize=256)
def lower_for_tiles(cascade: Cascade) -> Cascade:
    """`cascade` in the one-pass form the tiled backends take (cached: the pipeline verifies
    after every pass, which costs more than a small run)."""
    return run_pipeline(cascade, LOWERING_PIPELINE)[0]


def execute(
    cascade: Cascade,
    inputs: Mapping[str, npt.ArrayLike],
    sizes: Mapping[str, int] | None = None,
    backend: Backend = Backend.REFERENCE,
) -> dict[str, np.ndarray]:
    """The outputs of `cascade` on `inputs` (arrays in each input's declared rank order)."""
    if backend is Backend.REFERENCE:
        return interpret(cascade, inputs, sizes)
    lowered = lower_for_tiles(cascade)
    if backend is Backend.NUMPY:
        from attncc.backends.numpy.tiled import run_tiled

        return run_tiled(lowered, inputs, sizes)
    # Triton loads lazily: importing it fixes its mode (interpreted or compiled) for good.
    import torch

    from attncc.backends.triton.launch import run_triton

    tensors = {name: torch.as_tensor(np.asarray(value)) for name, value in inputs.items()}
    outputs = run_triton(lowered, tensors, sizes)
    return {name: value.cpu().numpy() for name, value in outputs.items()}
