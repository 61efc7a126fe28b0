"""The torch-mlir importer: a PyTorch module, exported to MLIR (torch dialect), and the attention
found in it as cascades.

`export` runs the module once eagerly on example inputs (`import_inputs`), so a bad shape fails
with PyTorch's own message at the user's line, exports it with torch.export, functionalized but
not decomposed (attention stays `aten.scaled_dot_product_attention`, or the matmul/softmax the
model wrote; `decompose` applies torch-mlir's core-ATen decompositions instead), and imports it
with `torch_mlir.fx.export_and_import`; torch.export's stack traces become MLIR locations.
`import_attention` finds the sites (`mlir_patterns`). `Exported.data` gives the tensor the
module computed for an MLIR value (the exported program run node by node, each MLIR value
traced back to the FX node it was imported from), which `mlir_check` compares a site's cascade
with.

Every failure a user can cause (a missing file, a factory that raises, shapes forward cannot
take, a model torch.export cannot trace) is an AttnccError naming the file and line.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import io
import logging
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch_mlir import fx, ir
from torch_mlir.dialects import torch as torch_dialect
from torch_mlir.extras.fx_decomp_util import get_decomposition_table
from torch_mlir.extras.fx_importer import FxImporter, GraphNodeImporter

from attncc.errors import AttnccError
from attncc.frontends.torch.import_inputs import (
    DTYPES,
    FactoryRef,
    example_inputs,
    load_factory,
    located,
    parse_factory,
    parse_input_shapes,
    shapes_text,
)
from attncc.frontends.torch.mlir_ops import source_location
from attncc.frontends.torch.mlir_patterns import AttentionSite, Unrecognized, find_attention

TORCH_MLIR = "20261001"
"""The torch-mlir build attncc import is written against (pyproject pins it)."""


def _require(attribute: str, present: bool) -> None:
    """A clear error, not an AttributeError deep in the import, when torch-mlir's internals
    that `_Recorder` reads are not there."""
    if not present:
        try:
            installed = importlib.metadata.version("torch-mlir")
        except importlib.metadata.PackageNotFoundError:
            installed = "unknown"
        raise AttnccError(
            f"torch-mlir {installed} has no GraphNodeImporter.{attribute}, which attncc import "
            f"reads to tie MLIR values to their data; install torch-mlir=={TORCH_MLIR} "
            "(pip install 'attncc[mlir]')"
        )


class _Recorder(GraphNodeImporter):
    """torch-mlir's node importer, remembering which FX node each MLIR value comes from and
    which tensor each literal holds (what `Exported.data` needs to read a value's data).

    There is no public way to either: `resolve_node_value` builds the values it has not built
    yet (parameters, lazily), and the public `FxImporterHooks.resolve_literal` runs before the
    literal's value exists. So it reads the importer's value map `_v` and wraps
    `_import_literal`, internals of torch-mlir. That is safe under the pin (pyproject requires
    torch-mlir==20261001, the one build that imports with torch 2.13, and
    tests/test_mlir_import.py exercises both through every check); another build that lacks
    them is refused by `_require` with the version to install."""

    def __init__(self, *args: Any) -> None:
        _require("_import_literal", callable(getattr(GraphNodeImporter, "_import_literal", None)))
        super().__init__(*args)
        _require("_v", isinstance(getattr(self, "_v", None), dict))
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
    _run_eagerly(ref, module, inputs)
    program = _torch_export(ref, module, inputs, decompose)
    _keep_non_persistent_buffers(program)
    mlir, nodes, literals = _import_program(ref, program)
    return Exported(ref, mlir, program, nodes, literals, inputs, dtype)


def _run_eagerly(ref: FactoryRef, module: torch.nn.Module, inputs: dict[str, torch.Tensor]) -> None:
    """One eager run first, so that shapes forward cannot take fail with PyTorch's own message
    at the user's line, not inside torch.export."""
    try:
        with torch.no_grad():
            module(**inputs)
    except Exception as error:
        raise AttnccError(
            f"{ref}: forward({shapes_text(inputs)}) raised {located(error, ref.path)}; "
            "check --shapes"
        ) from None


def _torch_export(
    ref: FactoryRef, module: torch.nn.Module, inputs: dict[str, torch.Tensor], decompose: bool
) -> torch.export.ExportedProgram:
    try:
        with torch.no_grad(), _quiet():
            program = torch.export.export(module, tuple(inputs.values()))
            return program.run_decompositions(_decompositions() if decompose else {})
    except Exception as error:
        raise AttnccError(
            f"{ref}: torch.export could not export the module: {located(error, ref.path)}"
        ) from None


def _keep_non_persistent_buffers(program: torch.export.ExportedProgram) -> None:
    """torch-mlir's frozen import looks every buffer up in the state dict, where torch.export
    leaves out non-persistent ones (rotary inv_freq, BERT's position_ids): it keeps them
    among the constants."""
    for buffer in program.graph_signature.inputs_to_buffers.values():
        if buffer not in program.state_dict and buffer in program.constants:
            program.state_dict[buffer] = program.constants[buffer]


def _import_program(
    ref: FactoryRef, program: torch.export.ExportedProgram
) -> tuple[ir.Module, dict[ir.Value, torch.fx.Node], dict[ir.Value, torch.Tensor]]:
    """The program in MLIR, with the FX node of each value and the tensor of each literal."""
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
    except AttnccError:
        raise
    except Exception as error:
        raise AttnccError(
            f"{ref}: torch-mlir could not import the exported program: {error}"
        ) from None
    nodes: dict[ir.Value, torch.fx.Node] = {}
    literals: dict[ir.Value, torch.Tensor] = {}
    for recorder in made:
        nodes |= recorder.nodes()
        literals |= recorder.literals
    return importer.module, nodes, literals


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
