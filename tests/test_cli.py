"""The `attncc` command line, called in-process through `main(argv)`."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from attncc.cli import main, parse_options, parse_shapes
from attncc.errors import AttnccError
from attncc.frontends.library import attention_1pass
from attncc.ir import parse, print_cascade


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    status = main(list(argv))
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def test_dump_library_cascade_with_options(capsys: pytest.CaptureFixture[str]) -> None:
    status, out, _ = run(capsys, "dump", "attention_1pass", "-O", "causal=true", "-O", "tile=32")

    assert status == 0
    assert parse(out) == attention_1pass(causal=True, tile=32)


def test_dump_file(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    path = tmp_path / "a.ein"
    path.write_text(print_cascade(attention_1pass()))

    status, out, _ = run(capsys, "dump", str(path))

    assert status == 0 and out == path.read_text()


def test_check_reports_located_errors(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    good = tmp_path / "good.ein"
    good.write_text(print_cascade(attention_1pass()))
    bad = tmp_path / "bad.ein"
    bad.write_text("rank M, P\ninput X[m,p]\noutput Y[p]\n\nY[p] = X[m,p] * Z[p]\n")

    status, out, err = run(capsys, "check", str(good), str(bad))

    assert status == 1
    assert "good.ein: ok" in out
    assert f"{bad}:5:1, Einsum Y: reads undeclared tensor Z" in err


def test_check_syntax_error(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    bad = tmp_path / "bad.ein"
    bad.write_text("rank M\ninput X[m]\noutput Y[m]\nY[m] = exp(X[m]\n")

    status, _, err = run(capsys, "check", str(bad))

    assert status == 1
    assert f"{bad}:4:" in err and "expected" in err


def test_run_compares_attention_with_sdpa(capsys: pytest.CaptureFixture[str]) -> None:
    status, out, _ = run(
        capsys, "run", "attention_3pass", "-O", "causal=true", "--shapes", "E=8,F=4,M=12,P=9"
    )

    assert status == 0
    assert "AV       shape (4, 9)" in out
    relative = float(out.split("(relative ")[1].split(";")[0])
    assert relative < 1e-10
    assert "is_causal=True" in out


def test_run_non_attention(capsys: pytest.CaptureFixture[str]) -> None:
    status, out, _ = run(capsys, "run", "toy_cascade1", "--shapes", "K=5", "--dtype", "f32")

    assert status == 0
    assert "no SDPA check" in out


def test_run_without_sizes_says_which(capsys: pytest.CaptureFixture[str]) -> None:
    status, _, err = run(capsys, "run", "attention_3pass", "--shapes", "E=8")

    assert status == 1
    assert "F, M, P unknown" in err


def test_unknown_source_and_bad_option(capsys: pytest.CaptureFixture[str]) -> None:
    assert run(capsys, "dump", "nope")[2].startswith("error: no file and no library cascade")
    assert "bad option" in run(capsys, "dump", "attention_3pass", "-O", "tile=3")[2]


def test_option_and_shape_parsing() -> None:
    assert parse_options(["causal=true", "tile=64", "scale=0.5", "head_dim=none"]) == {
        "causal": True,
        "tile": 64,
        "scale": 0.5,
        "head_dim": None,
    }
    assert parse_shapes("E=64, M=512") == {"E": 64, "M": 512}
    with pytest.raises(AttnccError, match="expected NAME=VALUE"):
        parse_shapes("E64")
    with pytest.raises(AttnccError, match="positive integer"):
        parse_shapes("E=-1")


def test_demo_runs_as_console_script() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "attncc.cli", "demo"], capture_output=True, text=True, check=False
    )

    assert result.returncode == 0, result.stderr
    assert "max |AV - scaled_dot_product_attention|" in result.stdout
