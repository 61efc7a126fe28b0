"""Emitted Triton kernels, run in Triton's interpreter on the CPU, against the float64
reference: fp32 inputs within 1e-5 relative error, fp16 and bf16 within 2e-2 (the reference
sees the same rounded inputs, so the error is the kernel's). Shapes are ragged against the
tiles and the head dimension of 24 is padded to 32 lanes."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from lowering_cases import CASES, Case, inputs_for, reference, relative_error, sizes

from attncc.backends.triton.launch import TileConfig, autotune, lower_triton, run_triton
from attncc.errors import ExecutionError, LoweringError
from attncc.ir import DType

pytestmark = pytest.mark.triton_interpret

SMALL = TileConfig(query_tile=32, key_tile=16)
TOLERANCE = {torch.float32: 1e-5, torch.float16: 2e-2, torch.bfloat16: 2e-2}


def _run(case: Case, dtype: torch.dtype, n: int, head_dim: int) -> None:
    _, lowered = case.cascades()
    n = 90 if case.name == "neighborhood_2d" else n
    inputs, bound = inputs_for(lowered, sizes(n, heads=2, head_dim=head_dim), seed=4)
    tensors = {
        name: torch.from_numpy(a).to(dtype) if a.dtype.kind == "f" else torch.from_numpy(a)
        for name, a in inputs.items()
    }
    rounded = {
        name: t.double().numpy() if t.is_floating_point() else t.numpy()
        for name, t in tensors.items()
    }
    expected = reference(case, rounded, bound)
    actual = run_triton(lowered, tensors, config=SMALL)
    for name, values in actual.items():
        assert values.dtype == dtype
        assert relative_error(values.double().numpy(), expected[name]) < TOLERANCE[dtype], name


# Triton's interpreter multiplies bfloat16 tl.dot operands as raw bit patterns
# (triton-lang/triton#11584, "we just don't support it yet"): the bf16 kernels are checked
# compiled for sm_80/sm_90 (test_triton_compile.py) but cannot be run here. Strict, so the
# day the interpreter learns bfloat16 this fails and the mark goes.
BF16_IN_INTERPRETER = pytest.mark.xfail(
    reason="Triton interpreter: bfloat16 tl.dot multiplies bit patterns (triton#11584)",
    strict=True,
)
DTYPES = [
    torch.float32,
    torch.float16,
    pytest.param(torch.bfloat16, marks=BF16_IN_INTERPRETER),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_kernel_matches_the_float64_reference(case: Case, dtype: torch.dtype) -> None:
    _run(case, dtype, n=70, head_dim=24 if dtype == torch.float32 else 16)


def test_rows_with_no_visible_key_give_zero() -> None:
    _, lowered = next(c for c in CASES if c.name == "document").cascades()
    inputs, _ = inputs_for(lowered, sizes(40, heads=2, head_dim=16), seed=5, dtype=np.float32)
    inputs["QDOC"] = np.full_like(inputs["QDOC"], 10_000)
    tensors = {name: torch.from_numpy(a) for name, a in inputs.items()}
    out = run_triton(lowered, tensors, config=SMALL)["AV"]
    assert not out.any()


def test_kernel_source_is_readable_and_skips_mask_work_on_full_tiles() -> None:
    _, lowered = next(c for c in CASES if c.name == "causal").cascades()
    kernel = lower_triton(
        lowered, features={"e": 64, "f": 64}, dtypes={n: DType.F16 for n in ("Q", "K", "V", "AV")}
    )
    full, partial = kernel.source.split("if tl.load(tile_full")[1].split("else:")[:2]
    assert "<=" not in full and "k_valid" not in full
    assert "<=" in partial and "k_valid" in partial
    assert "tl.dot(" in full and "tl.float16" in full
    assert "exp2" in full  # log2(e) folded into the scale, exp2 in the loop
    compile(kernel.source, "kernel.py", "exec")


def test_tiles_triton_cannot_multiply_are_refused() -> None:
    _, lowered = CASES[0].cascades()
    with pytest.raises(LoweringError, match="at least 16"):
        lower_triton(
            lowered,
            features={"e": 64, "f": 64},
            dtypes={n: DType.F32 for n in ("Q", "K", "V", "AV")},
            config=TileConfig(8, 16),
        )
    with pytest.raises(LoweringError, match="power of two"):
        lower_triton(
            lowered,
            features={"e": 64, "f": 64},
            dtypes={n: DType.F32 for n in ("Q", "K", "V", "AV")},
            config=TileConfig(48, 16),
        )


def test_bad_inputs_are_named() -> None:
    _, lowered = CASES[0].cascades()
    with pytest.raises(ExecutionError, match="missing: V"):
        run_triton(lowered, {"Q": torch.zeros(1, 1, 16, 8), "K": torch.zeros(1, 1, 16, 8)})


def test_autotuning_needs_a_gpu() -> None:
    _, lowered = CASES[0].cascades()
    inputs = {n: torch.zeros(1, 1, 16, 8) for n in ("Q", "K", "V")}
    with pytest.raises(ExecutionError, match="autotuning times kernels on a CUDA device"):
        autotune(lowered, inputs)


def test_offsets_past_two_to_the_31_elements() -> None:
    """A batch stride of 2**30 elements: the third batch starts past 2**31 (int32 overflow).
    The storage is allocated but only the touched pages are ever written."""
    _, lowered = CASES[0].cascades()
    big, e, p = 2**30, 16, 16
    storage = torch.empty(2 * big + e * p, dtype=torch.float16)
    q = storage.as_strided((3, 1, e, p), (big, e * p, p, 1))
    generator = torch.Generator().manual_seed(6)
    for batch in range(3):
        q[batch].copy_(torch.randn(1, e, p, generator=generator))
    k, v = (torch.randn(3, 1, e, p, generator=generator).half() for _ in range(2))
    tensors = {"Q": q, "K": k, "V": v}
    wide = {name: t.contiguous().double().numpy() for name, t in tensors.items()}
    expected = reference(CASES[0], wide, {"B": 3, "H": 1, "E": e, "F": e, "M": p, "P": p})
    actual = run_triton(lowered, tensors, config=SMALL)["AV"].double().numpy()
    assert relative_error(actual, expected["AV"]) < 2e-2
