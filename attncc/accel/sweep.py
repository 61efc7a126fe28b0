"""Parameter sweeps: a YAML spec names a base point (architecture, cascade, workload, mapping)
and axes to sweep; every combination of the axes' values is modeled, in parallel processes or
on a Ray or Dask cluster the user already runs (the optional `cluster` extra).

    name: buffer-vs-bandwidth
    arch: fusemax                  # a preset or an architecture YAML file
    cascade: attention_1pass       # a library cascade or a .ein file
    options: {tile: 256, scale: 1.0}
    passes: null                   # a pipeline to run first, e.g. flash
    workload: {length: 65536, E: 64, F: 64}   # length sets M and P
    instances: 768                 # batch x heads
    mapping: {}                    # mapping overrides (attncc.accel.mapping)
    sweep:
      arch.buffer.capacity_bytes: [4194304, 16777216]
      arch.arrays.2d.shape: [[128, 128], [256, 256]]
      mapping.tiles.P1: [1, 4]
      workload.length: [4096, 65536]
      cascade: [attention_1pass, attention_3pass]

Axis names are dotted paths into the base point (`arch.` paths into the architecture's YAML);
a point is a plain dict, so it travels to worker processes and cluster nodes as is.
"""

from __future__ import annotations

import copy
import functools
import itertools
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import yaml

from attncc.accel.model import Workload, evaluate
from attncc.accel.spec import SpecError, architecture_from_dict, preset_text
from attncc.errors import AttnccError
from attncc.frontends.loader import load
from attncc.ir import Cascade
from attncc.passes import run_pipeline

FIELDS = (
    "name",
    "arch",
    "cascade",
    "options",
    "passes",
    "workload",
    "instances",
    "mapping",
    "sweep",
)
BACKENDS = ("processes", "ray", "dask")


def load_sweep(path: str | Path) -> dict[str, Any]:
    """A sweep spec, validated; relative file names in it are taken from its folder."""
    where = str(path)
    try:
        spec = yaml.safe_load(Path(path).read_text())
    except yaml.YAMLError as error:
        raise SpecError(f"{where}: not valid YAML: {error}") from None
    if not isinstance(spec, dict):
        raise SpecError(f"{where}: expected a mapping with fields {', '.join(FIELDS)}")
    for key in spec:
        if key not in FIELDS:
            raise SpecError(f"{where}: {key}: unknown field; fields: {', '.join(FIELDS)}")
    for key in ("arch", "cascade", "workload"):
        if key not in spec:
            raise SpecError(f"{where}: {key}: missing (required)")
    axes = spec.get("sweep") or {}
    if not isinstance(axes, dict) or not all(isinstance(v, list) and v for v in axes.values()):
        raise SpecError(f"{where}: sweep: a mapping of dotted names to non-empty value lists")
    base = Path(path).parent
    spec = {"options": {}, "passes": None, "instances": 1, "mapping": {}, **spec, "sweep": axes}
    spec["where"] = where
    spec["arch"] = _resolve(spec["arch"], base)
    spec["cascade"] = _resolve(spec["cascade"], base)
    return spec


def _resolve(value: object, base: Path) -> object:
    if isinstance(value, str) and value.endswith((".yaml", ".yml", ".ein")):
        return str(base / value)
    return value


def points(spec: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every combination of the axes, as the base point with the values put in."""
    axes = spec["sweep"]
    for values in itertools.product(*axes.values()):
        point = copy.deepcopy({k: v for k, v in spec.items() if k != "sweep"})
        point["axes"] = dict(zip(axes, values, strict=True))
        point["arch"] = _arch_dict(point["arch"], point["where"])
        for name, value in point["axes"].items():
            _put(point, name, value, point["where"])
        yield point


def _arch_dict(arch: object, where: str) -> dict[str, Any]:
    if isinstance(arch, dict):
        return arch
    try:
        text = (
            preset_text(str(arch))
            if not str(arch).endswith((".yaml", ".yml"))
            else Path(str(arch)).read_text()
        )
    except OSError as error:
        raise SpecError(f"{where}: arch: cannot read {arch}: {error.strerror}") from None
    data = yaml.safe_load(text)
    if not isinstance(data, dict):
        raise SpecError(f"{where}: arch: {arch} is not an architecture mapping")
    return data


def _put(point: dict[str, Any], name: str, value: object, where: str) -> None:
    *path, last = name.split(".")
    node: Any = point
    for key in path:
        if not isinstance(node, dict):
            raise SpecError(f"{where}: sweep.{name}: {key} is not a mapping in the base point")
        node = node.setdefault(key, {})
    if not isinstance(node, dict):
        raise SpecError(f"{where}: sweep.{name}: cannot set {last} inside a value")
    node[last] = value


def run_point(point: dict[str, Any]) -> dict[str, Any]:
    """Model one point; a row of the axes' values and the result (or its error)."""
    row: dict[str, Any] = {k.replace(".", "_"): _cell(v) for k, v in point["axes"].items()}
    try:
        arch = architecture_from_dict(point["arch"], f"{point['where']} (arch)")
        cascade = _cascade(str(point["cascade"]), yaml.safe_dump(point["options"]), point["passes"])
        sizes = dict(point["workload"])
        if "length" in sizes:
            length = sizes.pop("length")
            sizes |= {"M": length, "P": length}
        work = Workload(
            str(point.get("name", "sweep")), tuple(sizes.items()), int(point["instances"])
        )
        result = evaluate(cascade, arch, work, point["mapping"])
    except AttnccError as error:
        return row | {"error": str(error)}
    return row | {k: v for k, v in result.row().items() if k != "workload"}


def _cell(value: object) -> object:
    return "x".join(map(str, value)) if isinstance(value, list) else value


@functools.lru_cache(maxsize=32)
def _cascade(source: str, options: str, passes: str | None) -> Cascade:
    cascade = load(source, yaml.safe_load(options) or None)
    return run_pipeline(cascade, passes)[0] if passes else cascade


def run_sweep(
    spec: dict[str, Any],
    *,
    backend: str = "processes",
    workers: int | None = None,
    address: str | None = None,
    on_point: Callable[[], None] | None = None,
) -> list[dict[str, Any]]:
    """Every point of `spec`, modeled on `backend`: local processes (`workers` of them), or a
    Ray or Dask cluster at `address` (a local one when None)."""
    todo = list(points(spec))
    if backend == "processes":
        with ProcessPoolExecutor(max_workers=workers) as pool:
            rows = []
            for row in pool.map(run_point, todo):
                rows.append(row)
                if on_point is not None:
                    on_point()
            return rows
    if backend == "ray":
        return _on_ray(todo, address)
    if backend == "dask":
        return _on_dask(todo, address)
    raise SpecError(f"unknown sweep backend {backend!r}; backends: {', '.join(BACKENDS)}")


def _on_ray(todo: list[dict[str, Any]], address: str | None) -> list[dict[str, Any]]:
    try:
        import ray
    except ImportError:
        raise AttnccError(_missing("ray")) from None
    ray.init(address=address, ignore_reinit_error=True)
    remote = ray.remote(run_point)
    return list(ray.get([remote.remote(point) for point in todo]))


def _on_dask(todo: list[dict[str, Any]], address: str | None) -> list[dict[str, Any]]:
    try:
        from dask.distributed import Client
    except ImportError:
        raise AttnccError(_missing("dask")) from None
    with Client(address) as client:
        return list(client.gather(client.map(run_point, todo, pure=False)))


def _missing(name: str) -> str:
    return (
        f"the {name} backend needs {name}, which is not installed: "
        "pip install 'attncc[cluster]' (or run without --cluster, in local processes)"
    )
