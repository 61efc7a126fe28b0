"""The torch-mlir importer: a PyTorch module, exported to MLIR (torch dialect), and the attention
found in it as cascades.

`export` runs the module once eagerly on example inputs (`import_inputs`), so a bad shape fails
with PyTorch's own message at the user's line, exports it with torch.export, functionalized but
not decomposed (attention stays `aten.scaled_dot_product_attention`, or the matmul/softmax the
model wrote; `decompose` applies torch-mlir's core-ATen decompositions instead), and imports it
with `torch_mlir.fx.export_and_import`; torch.export's stack traces become MLIR locations.
`import_attention` finds the sites (`mlir_patterns`); `check_site` runs a site's cascade with the
reference interpreter on the tensors the module computed at that point (the exported program
run node by node, each MLIR value traced back to the FX node it was imported from) and compares
with the module's own output there.

Every failure a user can cause (a missing file, a factory that raises, shapes forward cannot
take, a model torch.export cannot trace) is an AttnccError naming the file and line.
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch_mlir import fx, ir
from torch_mlir.dialects import torch as torch_dialect
from torch_mlir.extras.fx_decomp_util import get_decomposition_table
from torch_mlir.extras.fx_importer import FxImporter, GraphNodeImporter

from attncc.backends.numpy.reference import interpret
from attncc.errors import AttnccError
from attncc.frontends.torch.import_inputs import (
    DTYPES,
    FactoryRef,
    example_inputs,
    load_factory,
    located,
    parse_factory,
    parse_input_shapes,
)
from attncc.frontends.torch.mlir_ops import source_location
from attncc.frontends.torch.mlir_patterns import (
    AttentionSite,
    MaskKind,
    Unrecognized,
    find_attention,
)


class _Recorder(GraphNodeImporter):
    """torch-mlir's node importer, remembering which FX node each MLIR value comes from and
    which tensor each literal holds (what `check_site` needs to read a value's data). It reads
    the importer's value map `_v` and wraps `_import_literal`: internals of the pinned
    torch-mlir build, which tests/test_mlir_import.py exercises through every check."""

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
                f"{ref}: forward({shown}) raised {located(error, ref.path)}; check --shapes"
            ) from None
        try:
            with _quiet():
                program = torch.export.export(module, tuple(inputs.values()))
                program = program.run_decompositions(_decompositions() if decompose else {})
        except Exception as error:
            raise AttnccError(
                f"{ref}: torch.export could not export the module: {located(error, ref.path)}"
            ) from None
    # torch-mlir's frozen import looks every buffer up in the state dict, where torch.export
    # leaves out non-persistent ones (rotary inv_freq, BERT's position_ids): it keeps them
    # among the constants.
    for buffer in program.graph_signature.inputs_to_buffers.values():
        if buffer not in program.state_dict and buffer in program.constants:
            program.state_dict[buffer] = program.constants[buffer]
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
    """torch-mlir's default decomposition table, without the one that expands SDPA."""
    return {
        op: rule
        for op, rule in get_decomposition_table().items()
        if "scaled_dot_product" not in str(op)
    }


@dataclass(frozen=True)
class ImportResult:
    """The exported module, its attention sites and the softmax calls that are not attention
    as attncc compiles it."""

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
    """max |cascade - module| at a site, and the largest error accepted there."""

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
    finite = np.abs(want[np.isfinite(want)])
    scale = max(1.0, float(finite.max())) if finite.size else 1.0
    return SiteCheck(_difference(got, want), TOLERANCE[exported.dtype] * scale)


def _difference(got: np.ndarray, want: np.ndarray) -> float:
    """max |got - want| over finite points; infinite when they are not finite at the same places."""
    finite = np.isfinite(want)
    if not np.array_equal(finite, np.isfinite(got)):
        return float("inf")
    return float(np.abs(got[finite] - want[finite]).max()) if finite.any() else 0.0
