"""Running the zoo's staged variants (attncc.frontends.zoo.stages): the element type each kernel
stage computes in, `attncc run NAME --backend numpy|triton` taking the staged form, the size
prompt naming only free ranks, and the typed `staged` helper."""

from __future__ import annotations

import numpy as np
import pytest
from zoo_kernels import FP32_TOLERANCE, relative_error

from attncc.backends.execute import Backend
from attncc.backends.numpy.reference import interpret
from attncc.cli import main
from attncc.errors import AttnccError
from attncc.frontends.zoo import STAGED, ZOO
from attncc.frontends.zoo.hilo import hilo_stages
from attncc.frontends.zoo.moh import moh_stages
from attncc.frontends.zoo.routing import routing, routing_stages

ROUTER = ("X", "WG", "WA")


def moh_inputs() -> dict[str, np.ndarray]:
    """MoH's router inputs in float64 and Q, K, V in float32: a caller's mix."""
    rng = np.random.default_rng(0)
    shapes = {
        "X": (1, 12, 70),
        "WG": (4, 12),
        "WA": (2, 12),
        "Q": (1, 4, 16, 70),
        "K": (1, 4, 16, 90),
        "V": (1, 4, 8, 90),
    }
    return {
        name: rng.standard_normal(shape).astype(np.float64 if name in ROUTER else np.float32)
        for name, shape in shapes.items()
    }


def check_moh_in_float32(backend: Backend) -> None:
    inputs = moh_inputs()
    staged = moh_stages(shared_heads=1, top_k=2)
    got = staged.run(inputs, backend)
    want = interpret(staged.whole, {n: a.astype(np.float64) for n, a in inputs.items()})
    # The kernel computes in the type of the Q, K, V it was given; HW comes from the float64
    # router stage, cast to float32 as it enters the kernel.
    assert got["O"].dtype == np.float32
    assert relative_error(got["O"], want["O"]) < FP32_TOLERANCE


def test_kernel_stage_takes_the_type_of_its_own_inputs_on_numpy() -> None:
    check_moh_in_float32(Backend.NUMPY)


@pytest.mark.triton_interpret
def test_kernel_stage_takes_the_type_of_its_own_inputs_on_triton() -> None:
    check_moh_in_float32(Backend.TRITON)


def test_mixed_types_among_a_kernels_inputs_are_refused() -> None:
    inputs = moh_inputs()
    inputs["K"] = inputs["K"].astype(np.float64)
    with pytest.raises(AttnccError, match=r"moh_o computes in one floating-point type, but its "):
        moh_stages().run(inputs, Backend.NUMPY)


def test_reference_stages_compute_in_float64() -> None:
    """The scoring stage reads float32 Q and K in float64: the block table is the one the
    float64 inputs choose, whatever the kernels' type."""
    rng = np.random.default_rng(3)
    inputs = {
        "Q": rng.standard_normal((2, 16, 200)),
        "K": rng.standard_normal((2, 16, 260)),
        "V": rng.standard_normal((2, 8, 260)),
    }
    narrow = {n: a.astype(np.float32) for n, a in inputs.items()}
    got = routing_stages(top_k=2).run(narrow, Backend.NUMPY)
    wide = {n: a.astype(np.float64) for n, a in narrow.items()}
    assert np.array_equal(got["BLOCKS"], interpret(routing(top_k=2), wide)["BLOCKS"])
    assert got["AV"].dtype == np.float32


def test_staged_names_every_variant_the_tiled_backends_cut() -> None:
    assert STAGED.keys() <= ZOO.keys()
    assert {"routing": routing_stages, "moh": moh_stages, "hilo": hilo_stages} == STAGED
    assert routing_stages.__name__ == "routing_stages"
    stages = routing_stages(top_k=2, causal=True)
    assert stages.whole == routing(top_k=2, causal=True)
    assert [(s.cascade.name, s.kernel) for s in stages.stages] == [
        ("routing_blocks", False),
        ("routing_av", True),
    ]


RUNS = {
    "routing": "H=2,E=16,F=8,M=200,P=150",
    "moh": "B=1,H=4,E=16,F=8,M=100,P=100,D=12",
    "hilo": "B=1,HH=2,HL=2,E=16,F=8",
}


@pytest.mark.parametrize("name", sorted(RUNS))
def test_cli_runs_staged_variants_on_numpy(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", name, "--backend", "numpy", "--shapes", RUNS[name]]) == 0
    out = capsys.readouterr().out
    assert f"backend numpy ({len(STAGED[name]().stages)} stages)" in out
    assert "non-finite 0" in out


@pytest.mark.triton_interpret
def test_cli_runs_staged_variants_on_triton(capsys: pytest.CaptureFixture[str]) -> None:
    shapes = "H=2,E=16,F=8,M=150,P=150"
    run = ["run", "routing", "-O", "causal=true", "--backend", "triton", "--shapes", shapes]
    assert main(run) == 0
    out = capsys.readouterr().out
    assert "f32, backend triton (2 stages)" in out
    assert "AV       shape (2, 8, 150)" in out
    assert "non-finite 0" in out


def test_cli_asks_only_for_free_sizes(capsys: pytest.CaptureFixture[str]) -> None:
    """I, J and J2 follow from P and M: the prompt names P and M, not them."""
    assert main(["run", "routing"]) == 1
    err = capsys.readouterr().err
    assert "give H=..., E=..., F=..., M=..., P=...\n" in err
