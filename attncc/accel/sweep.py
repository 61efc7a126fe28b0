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

Axis names are dotted paths into the base point (`arch.` paths into the architecture's YAML,
its `base` merged in); a point is a plain dict, so it travels to worker processes and cluster
nodes as is. The spec is checked before any point runs (field types, workload sizes and
instances, in the base point and on every axis); a point that fails all the same becomes a row
with its error, and the other points still run.
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

from attncc.accel.model import Workload, evaluate, size_problem
from attncc.accel.spec import SpecError, architecture_from_dict, load_spec_data, read_yaml
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
    spec = read_yaml(path)
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
    _check_fields(spec, where)
    spec["where"] = where
    spec["arch"] = _resolve(spec["arch"], base)
    spec["cascade"] = _resolve(spec["cascade"], base)
    return spec


def _check_fields(spec: dict[str, Any], where: str) -> None:
    """The base point's fields and every axis value that sets a workload size or instances."""
    kinds: dict[str, tuple[type, ...]] = {
        "name": (str,),
        "arch": (str, dict),
        "cascade": (str,),
        "options": (dict,),
        "passes": (str, type(None)),
        "workload": (dict,),
        "mapping": (dict,),
    }
    for key, types in kinds.items():
        if key in spec and not isinstance(spec[key], types):
            wanted = " or ".join("null" if t is type(None) else t.__name__ for t in types)
            raise SpecError(f"{where}: {key}: expected {wanted}, got {spec[key]!r}")
    values = [(f"workload.{k}", k, v) for k, v in spec["workload"].items()]
    values.append(("instances", "instances", spec["instances"]))
    for axis, given in spec["sweep"].items():
        if axis == "instances" or axis.startswith("workload."):
            key = axis.removeprefix("workload.")
            values += [(f"sweep.{axis}[{k}]", key, v) for k, v in enumerate(given)]
    for field, key, value in values:
        problem = size_problem("M" if key == "length" else key, value)
        if problem is not None:
            raise SpecError(f"{where}: {field}: {problem}")


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
        data, _ = load_spec_data(str(arch))
    except SpecError as error:
        raise SpecError(f"{where}: arch: {error}") from None
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
        work = Workload(str(point.get("name", "sweep")), tuple(sizes.items()), point["instances"])
        result = evaluate(cascade, arch, work, point["mapping"])
    except AttnccError as error:
        return row | {"error": str(error)}
    except Exception as error:
        # A bug in attncc at one point must not lose the other points' results.
        return row | {"error": f"internal error ({type(error).__name__}: {error}); please report"}
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
