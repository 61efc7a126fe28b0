"""The torch-mlir importer: a PyTorch module, exported to MLIR (torch dialect), and the attention
found in it as cascades.

`load_factory("model.py:Factory")` imports a Python file by path and calls the factory (a
callable returning an nn.Module, or an nn.Module class). `example_inputs` builds seeded random
inputs for forward's parameters from shapes named after them (`x=2x16x64,bias=2x1x1x16`).
`export` runs the module once eagerly (so a bad shape fails with PyTorch's own message at the
user's line), exports it with torch.export, functionalized but not decomposed (attention stays
`aten.scaled_dot_product_attention`, or the matmul/softmax the model wrote), and imports it with
`torch_mlir.fx.export_and_import`; torch.export's stack traces become MLIR locations.
`import_attention` finds the sites (`mlir_patterns`); `check_site` runs a site's cascade with the
reference interpreter on the tensors the module computed at that point (the exported program
run node by node, each MLIR value traced back to the FX node it was imported from) and compares
with the module's own output there.

Every failure a user can cause (a missing file, a factory that raises, shapes forward cannot
take, a model torch.export cannot trace) is an AttnccError naming the file and line.
"""

from __future__ import annotations

import contextlib
import importlib.util
import inspect
import io
import logging
import sys
import traceback
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch_mlir import fx, ir
from torch_mlir.dialects import torch as torch_dialect
from torch_mlir.extras.fx_decomp_util import get_decomposition_table
from torch_mlir.extras.fx_importer import FxImporter, GraphNodeImporter

from attncc.backends.numpy.reference import interpret
from attncc.errors import AttnccError
from attncc.frontends.torch.mlir_ops import source_location
from attncc.frontends.torch.mlir_patterns import (
    AttentionSite,
    MaskKind,
    Unrecognized,
    find_attention,
)

DTYPES = {"f32": torch.float32, "f64": torch.float64}


@dataclass(frozen=True)
class FactoryRef:
    """`path:name` of a factory in a Python file."""

    path: Path
    name: str

    def __str__(self) -> str:
        return f"{self.path}:{self.name}"


def parse_factory(text: str) -> FactoryRef:
    path, sep, name = text.rpartition(":")
    if not sep or not path or not name.isidentifier():
        raise AttnccError(
            f"{text!r}: give FILE.py:FACTORY, e.g. examples/torch_models.py:sdpa_attention "
            "(FACTORY returns an nn.Module, or is an nn.Module class)"
        )
    return FactoryRef(Path(path), name)


def load_factory(ref: FactoryRef) -> torch.nn.Module:
    """Import `ref.path` by path and build its module; errors name the file and line."""
    if not ref.path.is_file():
        raise AttnccError(f"{ref.path}: no such file")
    spec = importlib.util.spec_from_file_location(f"attncc_import_{ref.path.stem}", ref.path)
    if spec is None or spec.loader is None:
        raise AttnccError(f"{ref.path}: not a Python file that can be imported")
    source = importlib.util.module_from_spec(spec)
    # The file's own directory comes first, so it can import its neighbours.
    sys.path.insert(0, str(ref.path.resolve().parent))
    try:
        spec.loader.exec_module(source)
    except Exception as error:
        raise AttnccError(f"{ref.path}: importing it failed: {_located(error, ref.path)}") from None
    finally:
        sys.path.pop(0)
    factory = getattr(source, ref.name, None)
    if factory is None:
        found = sorted(n for n, v in vars(source).items() if _is_factory(v) and n[:1] != "_")
        raise AttnccError(
            f"{ref.path} has no {ref.name!r}; its factories and module classes: "
            f"{', '.join(found) or 'none'}"
        )
    if not callable(factory):
        raise AttnccError(f"{ref}: {type(factory).__name__} is not callable")
    try:
        module = factory()
    except Exception as error:
        raise AttnccError(f"{ref}() raised {_located(error, ref.path)}") from None
    if not isinstance(module, torch.nn.Module):
        raise AttnccError(f"{ref}() returned {type(module).__name__}, not a torch.nn.Module")
    return module


def _is_factory(value: object) -> bool:
    if inspect.isclass(value):
        return issubclass(value, torch.nn.Module)
    return inspect.isfunction(value)


def _located(error: BaseException, path: Path) -> str:
    """`Type: message (file, line N)`, at the innermost frame in the user's file."""
    line = None
    if isinstance(error, SyntaxError) and error.lineno is not None:
        line = error.lineno
    for frame in traceback.extract_tb(error.__traceback__):
        if Path(frame.filename).resolve() == path.resolve():
            line = frame.lineno
    text = error.msg if isinstance(error, SyntaxError) else str(error)
    message = text.strip().splitlines()[0] if text.strip() else ""
    where = f" ({path}, line {line})" if line is not None else ""
    return f"{type(error).__name__}: {message}{where}"


def parse_input_shapes(text: str) -> dict[str, tuple[int, ...]]:
    """`x=2x16x64,bias=2x1x1x16` as {name: shape}."""
    shapes: dict[str, tuple[int, ...]] = {}
    for item in (t.strip() for t in text.split(",")):
        name, sep, dims = item.partition("=")
        name = name.strip()
        sizes = dims.strip().split("x")
        if not sep or not name.isidentifier() or not all(s.isdigit() and int(s) > 0 for s in sizes):
            raise AttnccError(
                f"--shapes {item!r}: give NAME=DIMSxDIMS for each parameter of forward, "
                "e.g. x=2x16x64,bias=2x1x1x16 (positive sizes)"
            )
        if name in shapes:
            raise AttnccError(f"--shapes: {name} is given twice")
        shapes[name] = tuple(int(s) for s in sizes)
    return shapes


def example_inputs(
    module: torch.nn.Module, shapes: Mapping[str, tuple[int, ...]], dtype: str, seed: int
) -> dict[str, torch.Tensor]:
    """Seeded standard-normal inputs for forward's parameters, in their order."""
    parameters = list(inspect.signature(module.forward).parameters.values())
    named = [p for p in parameters if p.kind in (p.POSITIONAL_OR_KEYWORD, p.POSITIONAL_ONLY)]
    if any(p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) for p in parameters):
        raise AttnccError(
            f"{type(module).__name__}.forward takes *args or **kwargs; attncc import needs "
            "named parameters to give shapes to"
        )
    names = [p.name for p in named]
    unknown = sorted(set(shapes) - set(names))
    if unknown:
        raise AttnccError(
            f"--shapes names {', '.join(unknown)}, but {type(module).__name__}.forward takes "
            f"({', '.join(names)})"
        )
    missing = [p.name for p in named if p.name not in shapes and p.default is p.empty]
    if missing:
        raise AttnccError(
            f"--shapes gives no shape for {', '.join(missing)} of "
            f"{type(module).__name__}.forward({', '.join(names)}): give NAME=DIMSxDIMS for "
            "every parameter without a default"
        )
    given = [n for n in names if n in shapes]
    if given != names[: len(given)]:
        skipped = [n for n in names[: len(given)] if n not in shapes]
        raise AttnccError(
            f"--shapes skips {', '.join(skipped)} of {type(module).__name__}.forward"
            f"({', '.join(names)}): inputs are passed in order, so give a shape to every "
            "parameter before the last one given"
        )
    generator = torch.Generator().manual_seed(seed)
    return {
        name: torch.randn(shapes[name], generator=generator, dtype=DTYPES[dtype]) for name in given
    }


class _Recorder(GraphNodeImporter):
    """torch-mlir's node importer, remembering which FX node each MLIR value comes from and
    which tensor each literal holds (what `check_site` needs to read a value's data)."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.literals: dict[ir.Value, torch.Tensor] = {}

    def _import_literal(self, py_value: Any, info: Any = None) -> ir.Value:
        value = super()._import_literal(py_value, info)
        if isinstance(py_value, torch.Tensor):
            self.literals[value] = py_value
        return value

    def nodes(self) -> dict[ir.Value, torch.fx.Node]:
        return {v: key[0] for key, v in self._v.items() if isinstance(v, ir.Value)}


@dataclass
class Exported:
    """A module exported to MLIR, with what is needed to read the data of its values."""

    source: FactoryRef
    module: ir.Module
    program: torch.export.ExportedProgram
    nodes: dict[ir.Value, torch.fx.Node]
    literals: dict[ir.Value, torch.Tensor]
    inputs: dict[str, torch.Tensor]
    dtype: str
    _values: dict[torch.fx.Node, Any] | None = None

    def mlir(self) -> str:
        """The module's MLIR with source locations; weights are elided."""
        return str(
            self.module.operation.get_asm(
                large_elements_limit=16, large_resource_limit=64, enable_debug_info=True
            )
        )

    def data(self, value: ir.Value) -> torch.Tensor:
        """What the module computes for `value` on the example inputs."""
        if value in self.literals:
            return self.literals[value]
        if self._values is None:
            self._values = _run_program(self.program, list(self.inputs.values()))
        node = self.nodes.get(value)
        if node is None or node not in self._values:
            raise AttnccError(f"{self.source}: no data for MLIR value {value.get_name()}")
        return self._values[node]


def _run_program(program: torch.export.ExportedProgram, inputs: list[torch.Tensor]) -> dict:
    values: dict[torch.fx.Node, Any] = {}

    class Capture(torch.fx.Interpreter):
        def run_node(self, n: torch.fx.Node) -> Any:
            values[n] = result = super().run_node(n)
            return result

    with torch.no_grad():
        Capture(program.graph_module, graph=program.graph).run(*inputs)
    return values


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """torch.export and torch-mlir log warnings and print graph dumps about their own
    internals; what matters to the user comes back as the exception, located in their file."""
    logger = logging.getLogger("torch")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stderr(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)


def export(
    ref: FactoryRef,
    module: torch.nn.Module,
    inputs: dict[str, torch.Tensor],
    dtype: str,
    *,
    decompose: bool = False,
) -> Exported:
    """Export `module` on `inputs` to MLIR. The program is functionalized but not decomposed,
    unless `decompose`: then torch-mlir's default decompositions (core ATen: bmm, _softmax,
    where) apply, except to scaled_dot_product_attention."""
    module = module.to(DTYPES[dtype]).eval()
    with torch.no_grad():
        try:
            module(**inputs)
        except Exception as error:
            shown = ", ".join(f"{n}: {'x'.join(map(str, t.shape))}" for n, t in inputs.items())
            raise AttnccError(
                f"{ref}: forward({shown}) raised {_located(error, ref.path)}; check --shapes"
            ) from None
        try:
            with _quiet():
                program = torch.export.export(module, tuple(inputs.values()))
                program = program.run_decompositions(_decompositions() if decompose else {})
        except Exception as error:
            raise AttnccError(
                f"{ref}: torch.export could not export the module: {_located(error, ref.path)}"
            ) from None
    context = ir.Context()
    torch_dialect.register_dialect(context)
    made: list[_Recorder] = []

    class Recorder(_Recorder):
        def __init__(self, *args: Any) -> None:
            super().__init__(*args)
            made.append(self)

    importer = FxImporter(context=context, graph_node_importer_cls=Recorder)
    try:
        with _quiet():
            fx.export_and_import(program, fx_importer=importer, decomposition_table={})
    except Exception as error:
        raise AttnccError(
            f"{ref}: torch-mlir could not import the exported program: {error}"
        ) from None
    nodes: dict[ir.Value, torch.fx.Node] = {}
    literals: dict[ir.Value, torch.Tensor] = {}
    for recorder in made:
        nodes |= recorder.nodes()
        literals |= recorder.literals
    return Exported(ref, importer.module, program, nodes, literals, inputs, dtype)


def _decompositions() -> dict:
    return {
        op: rule
        for op, rule in get_decomposition_table().items()
        if "scaled_dot_product" not in str(op)
    }


@dataclass(frozen=True)
class ImportResult:
    exported: Exported
    sites: list[AttentionSite]
    unrecognized: list[Unrecognized]

    def location(self, found: AttentionSite | Unrecognized) -> str:
        """Where `found` comes from: the file:line of the model's source (from the MLIR
        location) and the submodule that ran it (from torch.export's module stack)."""
        where = source_location(found.op, self.exported.source.path, found.position)
        node = self.exported.nodes.get(found.op.results[0]) if found.op.results else None
        stack = node.meta.get("nn_module_stack") if node is not None else None
        if not stack:
            return where
        path, kind = list(stack.values())[-1]
        name = str(kind).rsplit(".", 1)[-1].strip("'>")
        return f"{where}, in {path} ({name})" if path else f"{where}, in {name}"


def import_attention(
    factory: str, shapes: str, *, dtype: str = "f32", seed: int = 0, decompose: bool = False
) -> ImportResult:
    """Export `factory` (FILE.py:NAME) on inputs of `shapes` and find its attention."""
    ref = parse_factory(factory)
    wanted = parse_input_shapes(shapes)
    module = load_factory(ref)
    inputs = example_inputs(module, wanted, dtype, seed)
    exported = export(ref, module, inputs, dtype, decompose=decompose)
    sites, unrecognized = find_attention(exported.module)
    return ImportResult(exported, sites, unrecognized)


@dataclass(frozen=True)
class SiteCheck:
    error: float
    tolerance: float

    @property
    def ok(self) -> bool:
        return self.error <= self.tolerance


TOLERANCE = {"f32": 1e-4, "f64": 1e-10}
"""Largest accepted |cascade - module| relative to max(1, max |module|), per dtype."""


def check_site(exported: Exported, site: AttentionSite) -> SiteCheck:
    """The site's cascade run by the reference interpreter (float64) on the tensors the module
    computed at that point, against the module's own attention output."""
    d = site.dims

    def f64(value: ir.Value) -> torch.Tensor:
        return exported.data(value).detach().to(torch.float64)

    q = f64(site.query).reshape(d.batch, d.heads, d.queries, d.head_dim)
    k = f64(site.key)
    k = k.reshape(d.batch, d.kv_heads, *k.shape[-2:])
    v = f64(site.value).reshape(d.batch, d.kv_heads, d.keys, d.value_dim)
    inputs = {
        "Q": q.transpose(-1, -2),
        "K": k if site.key_transposed else k.transpose(-1, -2),
        "V": v.transpose(-1, -2),
    }
    if site.masks:
        bias = torch.zeros(d.batch, d.heads, d.queries, d.keys, dtype=torch.float64)
        for term in site.masks:
            mask = exported.data(term.value)
            if term.kind is MaskKind.ADDITIVE:
                added = mask.to(torch.float64) * term.scale
            else:
                hidden = ~mask.bool() if term.kind is MaskKind.VISIBLE else mask.bool()
                added = torch.zeros(hidden.shape, dtype=torch.float64).masked_fill(hidden, -np.inf)
            bias += added.broadcast_to(term.scores_shape).reshape(bias.shape)
        inputs["BIAS"] = bias
    arrays = {name: t.contiguous().numpy() for name, t in inputs.items()}
    result = interpret(site.cascade(), arrays)["AV"]
    got = np.swapaxes(result, -1, -2)
    want = f64(site.output).reshape(d.batch, d.heads, d.queries, d.value_dim).numpy()
    return SiteCheck(
        _difference(got, want), TOLERANCE[exported.dtype] * max(1.0, float(np.nanmax(np.abs(want))))
    )


def _difference(got: np.ndarray, want: np.ndarray) -> float:
    """max |got - want| over finite points; infinite when they are not finite at the same places."""
    finite = np.isfinite(want)
    if not np.array_equal(finite, np.isfinite(got)):
        return float("inf")
    return float(np.abs(got[finite] - want[finite]).max()) if finite.any() else 0.0
