"""`attncc lower` and `attncc run --backend`: sources, reports, runs and errors."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from attncc.cli import main

CAUSAL = ["attention_3pass", "-O", "causal=true", "-O", "batched=true"]
SHAPES = ["--shapes", "B=1,H=2,E=32,F=32,M=150,P=150", "--dtype", "f32"]


def _relative_error(text: str) -> float:
    found = re.search(r"relative ([0-9.e+-]+)", text)
    assert found is not None, text
    return float(found.group(1))


def test_lower_numpy_prints_a_python_kernel(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["lower", *CAUSAL, "--target", "numpy", "--tiles", "128x256"]) == 0
    source = capsys.readouterr().out
    assert "def kernel(inputs, sizes, tiles, dtype):" in source
    assert "for qt in range(-(-s_P // 128)):" in source
    compile(source, "kernel.py", "exec")


def test_lower_triton_writes_the_kernel(tmp_path: Path) -> None:
    out = tmp_path / "kernel.py"
    assert main(["lower", *CAUSAL, "--target", "triton", "--dtype", "bf16", "-o", str(out)]) == 0
    source = out.read_text()
    assert "@triton.jit" in source and "tl.bfloat16" in source
    compile(source, str(out), "exec")


@pytest.mark.cuda_compile
def test_lower_report_shows_the_resources_per_target(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["lower", *CAUSAL, "--target", "triton", "--report", "-o", "/dev/null"]) == 0
    report = capsys.readouterr().err
    assert "e=64, f=64, f16, tiles 64x64" in report
    rows = [line.split() for line in report.splitlines() if line.startswith("attention_3pass")]
    assert [row[1] for row in rows] == ["sm_80", "sm_90"]
    spills, mma = (row[-3] for row in rows), (row[-2] for row in rows)
    assert all(s == "0" for s in spills) and all(int(m) > 0 for m in mma)


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--target", "numpy", "--report"], "--report: options of --target triton"),
        (["--target", "numpy", "--tiles", "128"], "give QUERYxKEY"),
        (["--target", "triton", "--tiles", "48x16"], "not a power of two"),
    ],
)
def test_lower_errors_say_what_is_wrong(
    arguments: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["lower", *CAUSAL, *arguments]) == 1
    assert message in capsys.readouterr().err


def test_run_numpy_backend_matches_sdpa(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", *CAUSAL, *SHAPES, "--backend", "numpy"]) == 0
    out = capsys.readouterr().out
    assert "backend numpy" in out
    assert _relative_error(out) < 1e-5


@pytest.mark.triton_interpret
def test_run_triton_backend_matches_sdpa(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", *CAUSAL, *SHAPES, "--backend", "triton"]) == 0
    out = capsys.readouterr().out
    assert "backend triton" in out
    assert _relative_error(out) < 1e-5
