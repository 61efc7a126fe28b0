"""What the zoo's tests share: running staged variants on every backend, the error measure,
compiling their attention kernels for sm_90 without a GPU, and the checks every variant's
builder gets (its example file, its refused options)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from attncc.backends.execute import Backend, lower_for_tiles
from attncc.backends.schedule import schedule
from attncc.backends.tile_program import tile_program
from attncc.backends.triton.cubin import KernelResources
from attncc.backends.triton.launch import lower_triton
from attncc.backends.triton.report import compile_report
from attncc.frontends.loader import load
from attncc.frontends.zoo.stages import Staged
from attncc.ir import Cascade, DType, bind_sizes, parse_file, print_cascade

EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "zoo"

TILED = (Backend.NUMPY, Backend.TRITON)
"""The backends after the reference: fp32 inputs, within FP32_TOLERANCE of float64 PyTorch."""

FP32_TOLERANCE = 1e-5


def relative_error(actual: np.ndarray, expected: torch.Tensor | np.ndarray) -> float:
    """max |actual - expected| / max |expected|, over finite expected values."""
    want = expected.numpy() if isinstance(expected, torch.Tensor) else np.asarray(expected)
    got = np.asarray(actual, dtype=np.float64)
    return float(np.abs(got - want).max() / max(np.abs(want).max(), 1e-30))


def check_load_and_example(
    name: str, build: Callable[..., Cascade], options: Mapping[str, Any], stem: str | None = None
) -> None:
    """`attncc.load(name, options)` is `build(**options)`, and examples/zoo/`stem`.ein (default
    `name`) is its printed form under a comment header: it parses back to the same cascade."""
    cascade = load(name, options)
    assert cascade == build(**options)
    path = EXAMPLES / f"{stem or name}.ein"
    assert parse_file(path) == cascade
    body = "".join(line for line in path.read_text().splitlines(True) if line[:1] != "#")
    assert body == print_cascade(cascade)


def check_refused(build: Callable[..., Cascade], options: Mapping[str, Any], message: str) -> None:
    """`build(**options)` raises a ValueError whose message matches `message`."""
    with pytest.raises(ValueError, match=message):
        build(**options)


def builder_tests(
    name: str,
    build: Callable[..., Cascade],
    example_options: Mapping[str, Any],
    refusals: list[tuple[dict[str, Any], str]],
) -> tuple[Callable[[], None], Callable[[dict[str, Any], str], None]]:
    """The two checks every variant's builder gets, as the test functions its module binds to
    `test_load_and_example` (check_load_and_example of `name` with `example_options`) and
    `test_bad_options_are_refused` (check_refused for each (options, message) of `refusals`)."""

    def test_load_and_example() -> None:
        check_load_and_example(name, build, example_options)

    @pytest.mark.parametrize(("options", "message"), refusals)
    def test_bad_options_are_refused(options: dict[str, Any], message: str) -> None:
        check_refused(build, options, message)

    return test_load_and_example, test_bad_options_are_refused


def run_staged(
    staged: Staged, inputs: Mapping[str, np.ndarray], backend: Backend
) -> dict[str, np.ndarray]:
    """The staged variant on `backend`: float64 inputs on the reference, float32 on the tiled
    backends (what their kernels are held to)."""
    if backend is Backend.REFERENCE:
        return staged.run(inputs, backend)
    narrow = {n: a.astype(np.float32) if a.dtype.kind == "f" else a for n, a in inputs.items()}
    return staged.run(narrow, backend)


def compile_kernels(staged: Staged, sizes: Mapping[str, int]) -> list[KernelResources]:
    """Each kernel stage lowered with fp16 inputs (tensor cores) and compiled for sm_90."""
    rows = []
    for stage in (s for s in staged.stages if s.kernel):
        lowered = lower_for_tiles(stage.cascade)
        own = {name: size for name, size in sizes.items() if lowered.rank(name) is not None}
        features = tile_program(schedule(lowered)).feature_sizes(bind_sizes(lowered, own))
        dtypes = {
            d.name: DType.F16 if d.dtype is not None and d.dtype.is_float else d.dtype
            for d in (*lowered.inputs, *lowered.outputs)
        }
        kernel = lower_triton(lowered, features=features, dtypes=dtypes)  # type: ignore[arg-type]
        rows += compile_report(kernel, archs=(90,), name=stage.cascade.name)
    return rows


def assert_compiles_for_sm90(rows: list[KernelResources], kernels: int) -> None:
    """`kernels` kernels, compiled for sm_90 without spills, their contractions on wgmma."""
    assert len(rows) == kernels
    for row in rows:
        assert row.arch == 90
        assert not row.spills, row
        assert 0 < row.registers <= 255, row
        assert row.wgmma_instructions > 0, row
