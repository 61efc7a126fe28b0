"""`attncc study` end to end: the paper study writes its CSV and plots, a sweep writes its
CSV, one cascade is explained Einsum by Einsum, and bad specs end in a located error."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import yaml

from attncc.cli import main


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    status = main(list(argv))
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def write_sweep_spec(
    path: Path, arch: str, sweep: dict[str, list[object]], length: int, scale: float | None = None
) -> Path:
    """A sweep spec of attention_3pass at E = F = 64, `scale` as its option where given."""
    spec: dict[str, object] = {
        "arch": arch,
        "cascade": "attention_3pass",
        "workload": {"length": length, "E": 64, "F": 64},
        "sweep": sweep,
    }
    if scale is not None:
        spec["options"] = {"scale": scale}
    path.write_text(yaml.safe_dump(spec))
    return path


def test_study_fusemax_writes_csv_plots_and_the_papers_values(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    status, out, _ = run(capsys, "study", "fusemax", "--out", str(tmp_path))

    assert status == 0
    rows = list(csv.DictReader((tmp_path / "fusemax.csv").open()))
    assert len(rows) == 120
    assert {r["design"] for r in rows} == {
        "unfused",
        "flat",
        "fusemax",
        "flat-causal",
        "fusemax-causal",
    }
    assert {"latency_s", "dram_bytes", "energy_pj", "util_2d", "util_1d"} <= set(rows[0])
    for name in ("speedup", "utilization", "energy", "traffic", "causal"):
        png = tmp_path / f"{name}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "FuseMax vs FLAT speedup (mean)" in out and "6.72" in out
    assert "FuseMax vs FLAT energy (mean)" in out and "0.787" in out
    assert "causal: FuseMax vs FLAT speedup (mean)" in out


def test_study_sweep_writes_a_csv(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    bandwidths: list[object] = [5e10, 4e11, 3.2e12]
    spec = write_sweep_spec(
        tmp_path / "bw.yaml",
        "flat",
        {"arch.dram.bandwidth_bytes_per_s": bandwidths},
        length=2**18,
        scale=1.0,
    )
    out = tmp_path / "bw.csv"

    status, printed, _ = run(
        capsys, "study", "sweep", str(spec), "--out", str(out), "--workers", "2"
    )

    assert status == 0 and "3 points, 0 failed" in printed
    rows = list(csv.DictReader(out.open()))
    latencies = [float(r["latency_s"]) for r in rows]
    assert latencies[0] > latencies[1] >= latencies[2]


def test_study_model_explains_the_result(capsys: pytest.CaptureFixture[str]) -> None:
    status, out, _ = run(
        capsys,
        "study",
        "model",
        "attention_3pass",
        "-O",
        "scale=1.0",
        "--passes",
        "flash",
        "--arch",
        "fusemax",
        "--shapes",
        "M=4096,P=4096,E=64,F=64",
        "--instances",
        "768",
    )

    assert status == 0
    assert "attention_3pass on fusemax" in out
    assert "QK       2d" in out and "RM       1d" in out
    # `flash` tiles M by 64: a quarter of the 2-D array's rows, and four times the running
    # updates per key for the 1-D array, which now sets the pace.
    assert "phase 1 (1d-bound)" in out
    assert "utilization: 2d 0.24" in out


def test_study_model_with_mapping_overrides(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    mapping = tmp_path / "map.yaml"
    mapping.write_text(yaml.safe_dump({"bind": {"A": "2d"}}))

    status, _, err = run(
        capsys,
        "study",
        "model",
        "attention_3pass",
        "--arch",
        "flat",
        "--shapes",
        "M=1024,P=1024,E=64,F=64",
        "--mapping",
        str(mapping),
    )

    assert status == 1
    assert "bind.A: Einsum A needs div, which array 2d of flat lacks" in err


def test_bad_architecture_file_is_a_located_error(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    arch = tmp_path / "arch.yaml"
    arch.write_text("name: broken\nclock_hz: 1e9\n")

    status, _, err = run(
        capsys, "study", "model", "attention_1pass", "--arch", str(arch), "--shapes", "M=64,P=64"
    )

    assert status == 1
    assert err.strip() == f"error: {arch}: arrays: missing (required)"


def test_study_sweep_with_a_failed_point_exits_1_and_keeps_every_row(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    spec = write_sweep_spec(
        tmp_path / "banks.yaml", "fusemax", {"arch.buffer.banks": [0, 32]}, length=1024, scale=1.0
    )
    out = tmp_path / "banks.csv"

    status, printed, err = run(
        capsys, "study", "sweep", str(spec), "--out", str(out), "--workers", "1"
    )

    assert status == 1
    assert "2 points, 1 failed" in printed
    assert f"error: 1 of 2 points failed (their rows in {out} hold the error):" in err
    assert "buffer.banks: must be positive, got 0" in err
    rows = list(csv.DictReader(out.open()))
    assert [r["arch_buffer_banks"] for r in rows] == ["0", "32"]
    assert rows[0]["error"] and not rows[1]["error"] and float(rows[1]["latency_s"]) > 0


def test_study_sweep_with_a_bad_value_is_refused_before_it_runs(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    spec = write_sweep_spec(
        tmp_path / "lengths.yaml", "fusemax", {"workload.length": [4096, "abc"]}, length=1024
    )

    status, _, err = run(capsys, "study", "sweep", str(spec), "--out", str(tmp_path / "x.csv"))

    assert status == 1
    assert err.strip() == (
        f"error: {spec}: sweep.workload.length[1]: must be a positive integer, got 'abc'"
    )
    assert not (tmp_path / "x.csv").exists()


def test_study_model_mapping_with_bad_yaml_names_the_file_and_line(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    mapping = tmp_path / "bad.yaml"
    mapping.write_text("bind: {A: 2d\n  tiles: [\n")

    status, _, err = run(
        capsys,
        "study",
        "model",
        "attention_3pass",
        "--shapes",
        "M=64,P=64,E=8,F=8",
        "--mapping",
        str(mapping),
    )

    assert status == 1
    assert err.startswith(f"error: {mapping}:2: not valid YAML: ")
    assert "Traceback" not in err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--instances", "-5"], "instances: must be a positive integer, got -5"),
        (["--instances", "0"], "instances: must be a positive integer, got 0"),
        (["--shapes", "M=100.7,P=64,E=8,F=8"], "M: must be a positive integer, got 100.7"),
        (["--shapes", "M=0,P=64,E=8,F=8"], "M: must be a positive integer, got 0.0"),
    ],
)
def test_study_model_refuses_bad_sizes(
    capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    shapes = [] if "--shapes" in argv else ["--shapes", "M=64,P=64,E=8,F=8"]

    status, out, err = run(capsys, "study", "model", "attention_3pass", *shapes, *argv)

    assert status == 1 and out == ""
    assert err.startswith("error: workload --shapes ") and message in err
