"""Sweeps: every combination of the axes modeled in parallel processes, and the same points
handed to a Ray or Dask cluster when one is there (clear errors when it is not)."""

from __future__ import annotations

import sys
import types
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from attncc.accel import sweep
from attncc.accel.spec import SpecError
from attncc.accel.sweep import load_sweep, points, run_point, run_sweep
from attncc.errors import AttnccError

TINY = {
    "name": "tiny",
    "arch": "fusemax",
    "cascade": "attention_3pass",
    "options": {"scale": 1.0},
    "passes": "defer-div,partition(rank=M,tile=256),running-reduce,dce",
    "workload": {"length": 4096, "E": 64, "F": 64},
    "instances": 12,
    "sweep": {
        "arch.buffer.capacity_bytes": [1048576, 16777216],
        "arch.arrays.2d.shape": [[128, 128], [256, 256]],
        "workload.length": [1024, 8192],
    },
}


def write_spec(tmp_path: Path, spec: dict[str, Any]) -> Path:
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def test_points_are_the_product_of_the_axes(tmp_path: Path) -> None:
    spec = load_sweep(write_spec(tmp_path, TINY))
    found = list(points(spec))

    assert len(found) == 8
    assert {tuple(p["arch"]["arrays"]["2d"]["shape"]) for p in found} == {(128, 128), (256, 256)}
    assert {p["workload"]["length"] for p in found} == {1024, 8192}
    assert all(p["arch"]["name"] == "fusemax" for p in found)


def test_sweep_in_parallel_processes(tmp_path: Path) -> None:
    spec = load_sweep(write_spec(tmp_path, TINY))
    done: list[int] = []

    rows = run_sweep(spec, workers=2, on_point=lambda: done.append(1))

    assert len(rows) == len(done) == 8
    assert not any("error" in row for row in rows)
    by = {
        (r["arch_arrays_2d_shape"], r["workload_length"], r["arch_buffer_capacity_bytes"]): r
        for r in rows
    }
    # A quarter of the PEs: four times the compute-bound latency.
    small, large = by[("128x128", 8192, 16777216)], by[("256x256", 8192, 16777216)]
    assert small["latency_s"] == pytest.approx(4 * large["latency_s"], rel=0.05)
    # A smaller buffer holds fewer query rows: K and V are read more often.
    assert by[("256x256", 8192, 1048576)]["dram_bytes"] > large["dram_bytes"]


def test_a_failing_point_is_a_row_with_its_error(tmp_path: Path) -> None:
    spec = load_sweep(write_spec(tmp_path, {**TINY, "sweep": {"arch.buffer.banks": [0, 32]}}))

    rows = [run_point(p) for p in points(spec)]

    assert "buffer.banks: must be positive" in rows[0]["error"]
    assert "error" not in rows[1] and rows[1]["latency_s"] > 0


def test_sweep_over_cascades_and_mapping(tmp_path: Path) -> None:
    spec = load_sweep(
        write_spec(
            tmp_path,
            {
                **TINY,
                "passes": None,
                "options": {"scale": 1.0, "tile": 256},
                "sweep": {
                    "cascade": ["attention_1pass", "attention_3pass"],
                    "mapping.overlap": ["pipelined", "serialized"],
                },
            },
        )
    )
    rows = {(r["cascade"], r["mapping_overlap"]): r for r in map(run_point, points(spec))}
    # attention_3pass takes no tile option: that point reports the bad option.
    assert (
        "bad option for library cascade attention_3pass"
        in rows[("attention_3pass", "pipelined")]["error"]
    )
    assert (
        rows[("attention_1pass", "serialized")]["latency_s"]
        > rows[("attention_1pass", "pipelined")]["latency_s"]
    )


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"arch": "fusemax", "workload": {}}, "cascade: missing (required)"),
        ({**TINY, "sweeep": {}}, "sweeep: unknown field"),
        (
            {**TINY, "sweep": {"arch.buffer.banks": []}},
            "sweep: a mapping of dotted names to non-empty",
        ),
        (
            {**TINY, "sweep": {"workload.length": [4096, "abc"]}},
            "sweep.workload.length[1]: must be a positive integer, got 'abc'",
        ),
        ({**TINY, "instances": "many"}, "instances: must be a positive integer, got 'many'"),
        ({**TINY, "sweep": {"instances": [8, 0]}}, "sweep.instances[1]: must be a positive"),
        (
            {**TINY, "workload": {"length": 4096.5, "E": 64}},
            "workload.length: must be a positive integer, got 4096.5",
        ),
        (
            {**TINY, "workload": {"length": 4096, "density_S": 2}},
            "workload.density_S: must be a tile density in (0, 1], got 2",
        ),
        ({**TINY, "options": [1]}, "options: expected dict, got [1]"),
        ({**TINY, "passes": 3}, "passes: expected str or null, got 3"),
    ],
)
def test_bad_sweep_specs(tmp_path: Path, spec: dict[str, Any], message: str) -> None:
    path = write_spec(tmp_path, spec)
    with pytest.raises(SpecError, match=f"{path}: ") as error:
        load_sweep(path)
    assert message in str(error.value)


def test_sweep_yaml_syntax_error_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "sweep.yaml"
    path.write_text("arch: fusemax\nsweep: {a: [1\n")

    with pytest.raises(SpecError, match=rf"{path}:3: not valid YAML"):
        load_sweep(path)


def test_an_internal_error_at_one_point_is_a_row(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Any exception while one point runs is recorded in its row; the others still run."""
    spec = load_sweep(write_spec(tmp_path, {**TINY, "sweep": {"workload.length": [1024, 2048]}}))
    real = sweep.evaluate

    def fails_at_1024(*args: Any, **kwargs: Any) -> Any:
        if dict(args[2].sizes)["M"] == 1024:
            raise ValueError("boom")
        return real(*args, **kwargs)

    monkeypatch.setattr(sweep, "evaluate", fails_at_1024)
    rows = [run_point(p) for p in points(spec)]

    assert rows[0]["error"] == "internal error (ValueError: boom); please report"
    assert "error" not in rows[1] and rows[1]["latency_s"] > 0


def test_sweep_over_a_spec_with_a_base(tmp_path: Path) -> None:
    """An architecture file with `base:` is merged before the axes are put in."""
    (tmp_path / "small.yaml").write_text("base: fusemax\nname: small\n")
    spec = load_sweep(
        write_spec(
            tmp_path,
            {**TINY, "arch": "small.yaml", "sweep": {"arch.buffer.capacity_bytes": [2**22]}},
        )
    )
    (point,) = points(spec)

    assert point["arch"]["name"] == "small" and "base" not in point["arch"]
    assert point["arch"]["buffer"]["capacity_bytes"] == 2**22
    assert point["arch"]["arrays"]["2d"]["shape"] == [256, 256]
    assert run_point(point)["design"] == "small"


@pytest.mark.parametrize("backend", ["ray", "dask"])
def test_cluster_backend_missing_says_how_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, backend: str
) -> None:
    for name in ("ray", "dask", "dask.distributed"):
        monkeypatch.setitem(sys.modules, name, None)
    spec = load_sweep(write_spec(tmp_path, TINY))

    with pytest.raises(
        AttnccError, match=rf"the {backend} backend needs {backend}.*attncc\[cluster\]"
    ):
        run_sweep(spec, backend=backend)


def fake_ray(calls: list[str]) -> types.ModuleType:
    ray = types.ModuleType("ray")

    class Remote:
        def __init__(self, fn: Callable[..., Any]) -> None:
            self.fn = fn

        def remote(self, point: dict[str, Any]) -> dict[str, Any]:
            calls.append("remote")
            return dict(self.fn(point))

    ray.init = lambda address=None, ignore_reinit_error=False: calls.append(f"init {address}")  # type: ignore[attr-defined]
    ray.remote = Remote  # type: ignore[attr-defined]
    ray.get = lambda refs: list(refs)  # type: ignore[attr-defined]
    return ray


def fake_dask(calls: list[str]) -> types.ModuleType:
    distributed = types.ModuleType("dask.distributed")

    class Client:
        def __init__(self, address: str | None) -> None:
            calls.append(f"client {address}")

        def __enter__(self) -> Client:
            return self

        def __exit__(self, *exc: object) -> None:
            calls.append("closed")

        def map(self, fn: Callable[..., Any], items: list[Any], pure: bool) -> Iterator[Any]:
            calls.append(f"map pure={pure}")
            return map(fn, items)

        def gather(self, futures: Iterator[Any]) -> list[Any]:
            return list(futures)

    distributed.Client = Client  # type: ignore[attr-defined]
    return distributed


def test_sweep_on_ray_and_dask_clusters(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spec = load_sweep(write_spec(tmp_path, TINY))
    local = run_sweep(spec, workers=1)
    ray_calls: list[str] = []
    monkeypatch.setitem(sys.modules, "ray", fake_ray(ray_calls))
    dask_calls: list[str] = []
    monkeypatch.setitem(sys.modules, "dask", types.ModuleType("dask"))
    monkeypatch.setitem(sys.modules, "dask.distributed", fake_dask(dask_calls))

    on_ray = run_sweep(spec, backend="ray", address="ray://head:10001")
    on_dask = run_sweep(spec, backend="dask", address="tcp://scheduler:8786")

    assert on_ray == on_dask == local
    assert ray_calls == ["init ray://head:10001"] + ["remote"] * 8
    assert dask_calls == ["client tcp://scheduler:8786", "map pure=False", "closed"]
