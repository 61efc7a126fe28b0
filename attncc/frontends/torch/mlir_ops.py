"""Reading torch-mlir's torch dialect from Python: what the importer's pattern matchers ask of
an operation or a value.

torch-mlir's Python bindings give generic operations (a name such as `torch.aten.matmul`,
operands, results, a location) and values typed `!torch.vtensor<[2,4,16,16],f32>`. These
helpers turn that into Python: the producing operation of a value, a tensor's static shape, the
Python value of a constant operand (`torch.constant.int`, `torch.prim.ListConstruct`, ...),
the users of a value, and the Python source frames an operation's location names. Nothing here
knows about attention.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch_mlir import ir

_TENSOR_TYPE = re.compile(r"!torch\.vtensor<\[([^\]]*)\],([^>]+)>")
_FRAME = re.compile(r'"([^"]+)":(\d+):(\d+)')


class NotConstant(Exception):
    """An operand that is not a compile-time constant where one was needed."""


def producer(value: ir.Value) -> ir.Operation | None:
    """The operation that computes `value`; None for a function argument."""
    owner = value.owner
    return owner.operation if isinstance(owner, ir.OpView | ir.Operation) else None


def shape(value: ir.Value) -> tuple[int, ...] | None:
    """The static shape of a tensor value; None for other values or unknown dimensions."""
    match = _TENSOR_TYPE.fullmatch(str(value.type))
    if match is None:
        return None
    dims = [d.strip() for d in match.group(1).split(",") if d.strip()]
    if not all(d.lstrip("-").isdigit() and int(d) >= 0 for d in dims):
        return None
    return tuple(int(d) for d in dims)


def element_type(value: ir.Value) -> str | None:
    """The element type of a tensor value as torch-mlir spells it (f32, f64, i1, si64)."""
    match = _TENSOR_TYPE.fullmatch(str(value.type))
    return match.group(2) if match else None


def is_float_tensor(value: ir.Value) -> bool:
    return element_kind(value) == "float"


def element_kind(value: ir.Value) -> str | None:
    """The kind of a tensor value's elements: "bool" (i1), "int" (si64, ui8) or "float" (f32,
    bf16); None for other values and element types."""
    element = element_type(value) or ""
    if element == "i1":
        return "bool"
    if element.startswith(("si", "ui", "i")):
        return "int"
    return "float" if element.startswith(("f", "bf")) else None


SAME_DATA = frozenset(
    {
        "torch.aten.clone",
        "torch.aten.contiguous",
        "torch.aten.detach",
        "torch.aten.alias",
        "torch.aten.lift_fresh_copy",
        "torch.aten.to.dtype",
        "torch.aten.to.dtype_layout",
        "torch.aten.to.device",
        "torch.aten._to_copy",
        "torch.aten.type_as",
        "torch.prims.convert_element_type",
    }
)
"""Operations that leave every element where it was (copies, dtype and device conversions):
their result is their first operand, element by element, perhaps in another dtype."""


def constant(value: ir.Value) -> Any:
    """The Python value of a constant operand: int, float, bool, None, str, or a list of them.

    Raises NotConstant for anything computed at run time."""
    op = producer(value)
    if op is None:
        raise NotConstant(str(value.type))
    if op.name == "torch.constant.none":
        return None
    if op.name in ("torch.constant.int", "torch.constant.float", "torch.constant.bool"):
        return op.attributes["value"].value
    if op.name == "torch.constant.str":
        return str(op.attributes["value"]).strip('"')
    if op.name == "torch.constant.device":
        return str(op.attributes["value"]).strip('"')
    if op.name == "torch.prim.ListConstruct":
        return [constant(item) for item in op.operands]
    raise NotConstant(op.name)


def constant_or(value: ir.Value, default: Any) -> Any:
    try:
        return constant(value)
    except NotConstant:
        return default


def splat_literal(value: ir.Value) -> float | None:
    """The value of a `torch.vtensor.literal` whose elements are all equal; None otherwise."""
    op = producer(value)
    if op is None or op.name != "torch.vtensor.literal":
        return None
    attribute = op.attributes["value"]
    if not getattr(attribute, "is_splat", False):
        return None
    return float(attribute.get_splat_value().value)


@dataclass(frozen=True)
class Use:
    """An operation reading a value as its operand number `index`."""

    op: ir.Operation
    index: int


def users(value: ir.Value) -> Iterator[Use]:
    for use in value.uses:
        yield Use(use.owner.operation, use.operand_number)


def normalize_dim(dim: int, rank: int) -> int | None:
    """A possibly negative dimension as 0..rank-1; None when out of range."""
    dim = dim + rank if dim < 0 else dim
    return dim if 0 <= dim < rank else None


def permutation(op: ir.Operation, rank: int) -> list[int] | None:
    """The source dimension of each result dimension of a transpose or permute."""
    args = list(op.operands)
    if op.name in ("torch.aten.t", "torch.aten.numpy_T"):
        return list(reversed(range(rank)))
    if op.name == "torch.aten.permute":
        try:
            order = constant(args[1])
        except NotConstant:
            return None
        normal = [normalize_dim(d, rank) for d in order]
        return None if None in normal else [d for d in normal if d is not None]
    a, b = int_constant(args[1]), int_constant(args[2])
    a = None if a is None else normalize_dim(a, rank)
    b = None if b is None else normalize_dim(b, rank)
    if a is None or b is None:
        return None
    order = list(range(rank))
    order[a], order[b] = order[b], order[a]
    return order


def int_constant(value: ir.Value) -> int | None:
    """The value of a constant int operand; None for anything else (a bool is not an int)."""
    number = constant_or(value, None)
    return number if isinstance(number, int) and not isinstance(number, bool) else None


@dataclass(frozen=True)
class SourceFrame:
    """A Python source line that an operation came from."""

    file: str
    line: int

    def __str__(self) -> str:
        return f"{_shown(self.file)}:{self.line}"


def source_frames(op: ir.Operation) -> list[SourceFrame]:
    """The Python frames of the op's location, innermost first (torch.export records the
    stack of each node; torch-mlir makes it a call-site location)."""
    text = str(op.location)
    return [SourceFrame(m.group(1), int(m.group(2))) for m in _FRAME.finditer(text)]


def source_location(op: ir.Operation, user_file: Path | None, position: int) -> str:
    """Where `op` came from, for a report: the innermost frame outside PyTorch itself (the
    line of the model that called the operation), and the innermost frame in `user_file`
    when that is another one (`modeling_gpt2.py:123 (from model.py:42)`); without a location,
    the operation's position in the function."""
    frames = source_frames(op)
    if not frames:
        return f"operation #{position} of @main (no source location: export kept no stack trace)"
    torch_dir = Path(torch.__file__).resolve().parent
    model = next((f for f in frames if not _under(f.file, torch_dir)), frames[0])
    mine = next((f for f in frames if user_file and _same_file(f.file, user_file)), None)
    return str(model) if mine in (None, model) else f"{model} (from {mine})"


def _same_file(name: str, path: Path) -> bool:
    try:
        return Path(name).resolve() == path.resolve()
    except OSError:
        return False


def _under(name: str, directory: Path) -> bool:
    try:
        return Path(name).resolve().is_relative_to(directory)
    except OSError:
        return False


def _shown(file: str) -> str:
    """A path relative to the working directory when it is under it; an installed package's
    file from its package directory (transformers/models/...)."""
    parts = Path(file).parts
    if "site-packages" in parts:
        return str(Path(*parts[parts.index("site-packages") + 1 :]))
    try:
        return str(Path(file).resolve().relative_to(Path.cwd().resolve()))
    except (ValueError, OSError):
        return file


def function_ops(module: ir.Module) -> list[ir.Operation]:
    """The operations of the module's function body, in order (torch-mlir's import makes
    one function, @main)."""
    found: list[ir.Operation] = []
    for func in module.body.operations:
        for region in func.operation.regions:
            for block in region.blocks:
                found.extend(op.operation for op in block.operations)
    return found
