"""The Triton emitter: a tile program as one readable Triton kernel.

One program of the launch grid computes one query tile of one grid point (batch, head): axis 0
of the grid is the query tile, axis 1 the grid point, flattened with the last grid index
fastest. The program walks its key tiles from the block lists (`attncc.backends.tile_lists`:
its grid point's own where the mask reads batch or head, else those of its query tile) in
ascending order; a FULL tile runs the body without the block-sparse mask and without bounds
checks, any other tile with both. Every tile is computed in float32; matrix products take
their operands in the inputs' element type (tensor cores for fp16/bf16) and accumulate in
float32. Feature axes (head dimensions) are compile-time constants padded to a power of two.

The emitted source depends on the tile program, the tile configuration, the feature sizes and
the element types, which together key the kernel cache.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import sympy

from attncc.backends.emit import (
    IDENTITY,
    Code,
    Dialect,
    SourceWriter,
    carried_update,
    expression,
    initial_value,
    tile_value,
    value_name,
)
from attncc.backends.tile_program import InputRead, TileOp, TileProgram
from attncc.errors import LoweringError
from attncc.ir import Access, DType, ReduceOp, index_value, indices_used

_CALLS = {
    "add": "({0} + {1})",
    "sub": "({0} - {1})",
    "mul": "({0} * {1})",
    "div": "({0} / {1})",
    # Triton's // and % truncate toward zero like C; the IR's floor toward -inf like Python.
    "floordiv": "(({0} - ((({0}) % ({1}) + ({1})) % ({1}))) // ({1}))",
    "mod": "(((({0}) % ({1})) + ({1})) % ({1}))",
    "neg": "(-{0})",
    "max": "tl.maximum({0}, {1})",
    "min": "tl.minimum({0}, {1})",
    "exp": "tl.exp({0})",
    "exp2": "tl.exp2({0})",
    "log": "tl.log({0})",
    "log2": "tl.log2({0})",
    "tanh": "(2.0 * tl.sigmoid(2.0 * ({0})) - 1.0)",
    "sigmoid": "tl.sigmoid({0})",
    "sqrt": "tl.sqrt({0})",
    "rsqrt": "tl.rsqrt({0})",
    "abs": "tl.abs({0})",
    "select": "tl.where({0}, {1}, {2})",
    "lt": "({0} < {1})",
    "le": "({0} <= {1})",
    "gt": "({0} > {1})",
    "ge": "({0} >= {1})",
    "eq": "({0} == {1})",
    "ne": "({0} != {1})",
    "and": "((({0}) != 0) & (({1}) != 0))",
    "or": "((({0}) != 0) | (({1}) != 0))",
    "not": "({0} == 0)",
}

# Uniform values are Python numbers or scalars at trace time; these operators need a float.
_MATH = {
    "exp": "math.exp",
    "exp2": "2.0 ** ",
    "log": "math.log",
    "log2": "math.log2",
    "sqrt": "math.sqrt",
    "rsqrt": "1.0 / math.sqrt",
}


@dataclass(frozen=True)
class KernelShape:
    """What the emitted source is specialized for: the tiles, each feature rank's size, the
    element type of every input and output."""

    query_tile: int
    key_tile: int
    features: Mapping[str, int]
    dtypes: Mapping[str, DType]

    def block(self, var: str) -> int:
        return max(16, 1 << (self.features[var] - 1).bit_length())


class TritonDialect(Dialect):
    """Spelling of tile operations inside one Triton program."""

    INFINITY = 'float("inf")'

    def __init__(
        self,
        program: TileProgram,
        shape: KernelShape,
        writer: SourceWriter,
        *,
        checked: bool,
        converted: Mapping[tuple[str, str], str] | None = None,
    ) -> None:
        super().__init__(program, writer)
        self.shape = shape
        self.checked = checked
        # Loop-invariant matrix-product operands, converted once before the loop: (value,
        # summed axis) -> variable.
        self.converted = converted or {}

    def size(self, rank: str) -> Code:
        var = self._index_of(rank)
        if var in self.shape.features:
            return Code(str(self.shape.features[var]), uniform=True)
        if rank == self.program.schedule.key.inner:
            return Code(str(self.shape.key_tile), uniform=True)
        return Code(f"s_{rank}")

    def call(self, op: str, args: list[str], *, uniform: bool = False) -> str:
        if uniform and op in _MATH:
            return f"({_MATH[op]}({args[0]}))"
        if op in _MATH or op in ("tanh", "sigmoid"):
            # Sizes are int32 at run time; Triton's float functions take no integers.
            args = [f"({arg} * 1.0)" for arg in args]
        return _CALLS[op].format(*args)

    def expand(self, code: Code, axes: tuple[str, ...]) -> str:
        if not code.axes or code.axes == axes:
            return code.text
        picks = ", ".join(":" if a in code.axes else "None" for a in axes)
        return f"{code.text}[{picks}]"

    def full(self, code: Code, axes: tuple[str, ...]) -> str:
        if code.axes == axes:
            return code.text
        return f"(tl.zeros({self._shape(axes)}, tl.float32) + {self.expand(code, axes)})"

    def reduce(self, op: ReduceOp, code: Code, axis: str) -> str:
        values = self._masked(code, axis, IDENTITY[op])
        return f"tl.{op.value}({values}, axis={code.axes.index(axis)})"

    def dot(self, lhs: Code, rhs: Code, axis: str) -> Code:
        (i,) = [a for a in lhs.axes if a != axis]
        (j,) = [a for a in rhs.axes if a != axis]
        a, b = self.dot_operand(lhs, axis), self.dot_operand(rhs, axis)
        a = a if lhs.axes == (i, axis) else f"tl.trans({a})"
        b = b if rhs.axes == (axis, j) else f"tl.trans({b})"
        precision = ', input_precision="ieee"' if self._dot_type() == "tl.float32" else ""
        text = f"tl.dot({a}, {b}{precision})"
        if self.program.ordered((i, j)) != (i, j):
            return Code(f"tl.trans({text})", (j, i))
        return Code(text, (i, j))

    def dot_operand(self, code: Code, axis: str) -> str:
        """`code` as a matrix-product operand summed over `axis`: padding lanes zeroed and in
        the products' element type."""
        converted = self.converted.get((code.text, axis))
        if converted is not None:
            return converted
        return f"{self._masked(code, axis, 0.0)}.to({self._dot_type()})"

    def _dot_type(self) -> str:
        floats = {t for t in self.shape.dtypes.values() if t.is_float}
        if floats <= {DType.F16}:
            return "tl.float16"
        if floats <= {DType.BF16}:
            return "tl.bfloat16"
        return "tl.float32"

    def _masked(self, code: Code, axis: str, value: float) -> str:
        """`code` with lanes of `axis` past the data set to `value`, where there are any."""
        valid = self.valid(axis)
        if valid is None:
            return code.text
        mask = self.expand(Code(valid, (axis,)), code.axes)
        return f"tl.where({mask}, {code.text}, {self.constant(value)})"

    def valid(self, axis: str) -> str | None:
        """The lanes of `axis` inside the data (the ragged last key or query tile, a padded
        head dimension), or None where every lane is."""
        program = self.program
        if axis == program.key:
            return "k_valid" if self.checked else None
        if axis == program.query:
            return "q_valid"
        if self.shape.block(axis) != self.shape.features[axis]:
            return f"(x_{axis} < {self.shape.features[axis]})"
        return None

    def _shape(self, axes: tuple[str, ...]) -> str:
        return "[" + ", ".join(self.block_name(a) for a in axes) + "]"

    def block_name(self, axis: str) -> str:
        if axis == self.program.query:
            return "BLOCK_Q"
        if axis == self.program.key:
            return "BLOCK_K"
        return str(self.shape.block(axis))

    def _index_of(self, rank: str) -> str:
        found = self.program.schedule.cascade.rank(rank)
        return found.index if found is not None else rank.lower()

    def load(self, read: InputRead) -> str:
        access = read.access
        axes = self.program.operand_axes(read)
        offsets, masks = [], []
        for position, index in enumerate(access.indices):
            code = expression(index_value(index), self.program, self)
            offsets.append(f"{self.expand(code, axes)} * st_{access.tensor}_{position}")
            mask = self._in_range(access.tensor, position, index, code)
            if mask is not None:
                masks.append(self.expand(Code(mask, code.axes), axes))
        pointer = f"{access.tensor} + " + " + ".join(offsets)
        dtype = self.shape.dtypes[access.tensor]
        convert = ".to(tl.float32)" if dtype.is_float else ""
        if not masks:
            return f"tl.load({pointer}){convert}"
        return f"tl.load({pointer}, mask={' & '.join(masks)}, other=0){convert}"

    def _in_range(self, tensor: str, position: int, index: sympy.Expr, code: Code) -> str | None:
        """The lanes where `index` is inside the tensor's rank, or None when all are."""
        program = self.program
        if index.is_Integer or (index.is_Symbol and index.name in program.grid):
            return None
        if index.is_Symbol and index.name == program.query:
            return "q_valid"
        if index.is_Symbol and index.name in program.features:
            return self.valid(index.name)
        key_position = program.schedule.key.recombined()
        if sympy.expand(index - key_position) == 0:
            return "k_valid" if self.checked else None
        decl = program.schedule.cascade.declaration(tensor)
        assert decl is not None
        extent = self.size(decl.ranks[position]).text
        return f"(({code.text} >= 0) & ({code.text} < {extent}))"


def emit_triton(program: TileProgram, shape: KernelShape, *, function: str) -> str:
    """Source of a module defining the Triton kernel `function` for `program` at `shape`."""
    nest = program.schedule
    cascade = nest.cascade
    if shape.query_tile < 16 or shape.key_tile < 16:
        raise LoweringError(
            f"tiles of {shape.query_tile} queries by {shape.key_tile} keys: Triton's matrix "
            "products need at least 16 along each"
        )
    for tile in (shape.query_tile, shape.key_tile):
        if tile & (tile - 1):
            raise LoweringError(f"tile size {tile} is not a power of two, as Triton needs")
    writer = SourceWriter()
    writer.lines(
        [
            f'"""Triton kernel for cascade {cascade.name}, emitted by attncc."""',
            "",
            "import math",
            "",
            "import triton",
            "import triton.language as tl",
            "",
            "",
            "@triton.jit",
            f"def {function}(",
        ]
    )
    with writer.indented():
        for param in kernel_parameters(program):
            writer.line(f"{param},")
        writer.line("BLOCK_Q: tl.constexpr,")
        writer.line("BLOCK_K: tl.constexpr,")
    writer.line("):")
    with writer.indented():
        _program_body(program, shape, writer)
    return writer.text()


def kernel_parameters(program: TileProgram) -> list[str]:
    """The kernel's runtime parameters, in order: tensors, their strides, sizes, tile lists."""
    cascade = program.schedule.cascade
    params = [d.name for d in (*cascade.inputs, *cascade.outputs)]
    for decl in (*cascade.inputs, *cascade.outputs):
        params += [f"st_{decl.name}_{n}" for n in range(len(decl.ranks))]
    params += [f"s_{rank}" for rank in runtime_sizes(program)]
    params += ["tile_counts", "tile_indices", "tile_full", "tiles_stride", "tiles_per_point"]
    return params


def runtime_sizes(program: TileProgram) -> list[str]:
    """Ranks whose sizes the kernel takes at run time: all but features and the key tile."""
    fixed = {*program.features, program.key}
    return [r.name for r in program.schedule.cascade.all_ranks() if r.index not in fixed]


def _program_body(program: TileProgram, shape: KernelShape, writer: SourceWriter) -> None:
    query_rank = program.schedule.rank_of(program.query)
    hoisted = program.schedule.hoisted
    # 64-bit grid indices: the batch and head offsets of a large tensor pass 2**31. Offsets
    # within one (batch, head) stay 32-bit, which keeps tiles of them in fewer registers.
    writer.line("qt = tl.program_id(0)")
    writer.line("flat = tl.program_id(1).to(tl.int64)")
    for var in reversed(program.grid):
        rank = program.schedule.rank_of(var)
        writer.line(f"g_{var} = flat % s_{rank}")
        writer.line(f"flat = flat // s_{rank}")
    for var in program.features:
        writer.line(f"x_{var} = tl.arange(0, {shape.block(var)})")
    per_query = tuple(op for op in program.prologue if program.query in op.einsum.space)
    if hoisted:
        # One program per grid point: the key loop once, then every query tile in turn.
        key_side = tuple(op for op in program.prologue if op not in per_query)
        _ops(key_side, program, TritonDialect(program, shape, writer, checked=True), writer)
        _key_loop(program, shape, writer)
        writer.line(f"for qt in range(0, tl.cdiv(s_{query_rank}, BLOCK_Q)):")
        with writer.indented():
            _query_tile(program, shape, writer, per_query)
    else:
        _query_tile(program, shape, writer, program.prologue)


def _query_tile(
    program: TileProgram, shape: KernelShape, writer: SourceWriter, prologue: tuple[TileOp, ...]
) -> None:
    """Query tile `qt`: its coordinates, prologue, key loop (unless hoisted) and epilogue."""
    query_rank = program.schedule.rank_of(program.query)
    writer.line(f"x_{program.query} = qt * BLOCK_Q + tl.arange(0, BLOCK_Q)")
    writer.line(f"q_valid = x_{program.query} < s_{query_rank}")
    _ops(prologue, program, TritonDialect(program, shape, writer, checked=True), writer)
    if not program.schedule.hoisted:
        _key_loop(program, shape, writer)
    _ops(program.epilogue, program, TritonDialect(program, shape, writer, checked=True), writer)


def _key_loop(program: TileProgram, shape: KernelShape, writer: SourceWriter) -> None:
    """The carried values' initial values, the loop over the key tiles of query tile `qt`'s
    list (the first list when hoisted: every list is alike then), and the final values."""
    prologue = TritonDialect(program, shape, writer, checked=True)
    for op in program.body:
        if op.carried:
            initial = initial_value(op, program, prologue).text
            writer.line(f"{value_name(op.tensor, previous=True)} = {initial}")
    converted, preloaded = _convert_invariants(program, prologue, writer)
    # This grid point's tile lists: its own where the mask reads the grid (tiles_per_point
    # query tiles a point), else the shared ones (tiles_per_point 0). 32-bit (the launch
    # checks that the lists fit) and recomputed where used: a 64-bit row held through the
    # prologue spills the bias kernel on sm_80.
    tile_row = "(tl.program_id(1) * tiles_per_point + qt)"
    writer.line(f"count = tl.load(tile_counts + {tile_row})")
    writer.line("for j in range(0, count):")
    with writer.indented():
        writer.line(f"tile_start = {tile_row} * tiles_stride")
        writer.line("m1 = tl.load(tile_indices + tile_start + j)")
        writer.line(f"x_{program.key} = tl.arange(0, BLOCK_K)")
        key_rank = program.schedule.key.rank
        writer.line(f"k_valid = m1 * BLOCK_K + x_{program.key} < s_{key_rank}")
        writer.line("if tl.load(tile_full + tile_start + j) != 0:")
        with writer.indented():
            full = TritonDialect(program, shape, writer, checked=False, converted=converted)
            full.loads.update(preloaded)
            _ops(program.body, program, full, writer, masked=False)
        writer.line("else:")
        with writer.indented():
            partial = TritonDialect(program, shape, writer, checked=True, converted=converted)
            partial.loads.update(preloaded)
            _ops(program.body, program, partial, writer)
        for op in program.body:
            if op.carried:
                update = carried_update(op, prologue)
                writer.line(f"{value_name(op.tensor, previous=True)} = {update}")
    after = TritonDialect(program, shape, writer, checked=True)
    outputs = program.schedule.cascade.output_names()
    for op in program.body:
        if op.carried:
            writer.line(f"{value_name(op.tensor)} = {value_name(op.tensor, previous=True)}")
        if op.accumulated and op.tensor in outputs:
            _store(op, program, after, writer)


def _convert_invariants(
    program: TileProgram, prologue: TritonDialect, writer: SourceWriter
) -> tuple[dict[tuple[str, str], str], dict[Access, str]]:
    """Convert the prologue's values that the loop multiplies (Q scaled) to the products'
    element type once, instead of once per key tile; so too the inputs the loop multiplies
    that do not vary with the keys (Q unscaled, a projection), loaded once before the loop.
    Returns the converted operands by (value, summed axis) and the inputs loaded by access."""
    before_loop = {op.tensor for op in program.prologue}
    keys = {program.key, program.key_tiles}
    converted: dict[tuple[str, str], str] = {}
    preloaded: dict[Access, str] = {}
    for op in program.body:
        if op.contraction is None or op.reduced is None:
            continue
        for factor in (op.contraction.lhs, op.contraction.rhs):
            if not isinstance(factor, Access):
                continue
            operand = program.operand(factor)
            if factor.tensor in before_loop:
                code = Code(value_name(factor.tensor), program.value_axes[factor.tensor])
            elif isinstance(operand, InputRead) and not keys & indices_used(factor):
                code = prologue.operand(factor, operand)
                preloaded[factor] = code.text
            else:
                continue
            if (code.text, op.reduced) not in converted:
                name = f"d{len(converted)}_{factor.tensor}"
                writer.line(f"{name} = {prologue.dot_operand(code, op.reduced)}")
                converted[(code.text, op.reduced)] = name
    return converted, preloaded


def _ops(
    ops: tuple[TileOp, ...],
    program: TileProgram,
    dialect: TritonDialect,
    writer: SourceWriter,
    *,
    masked: bool = True,
) -> None:
    outputs = set(program.schedule.cascade.output_names())
    for op in ops:
        value = tile_value(op, program, dialect, masked=masked)
        writer.line(f"{value_name(op.tensor)} = {value.text}")
        if op.tensor in outputs and not op.accumulated:
            _store(op, program, dialect, writer)


def _store(op: TileOp, program: TileProgram, dialect: TritonDialect, writer: SourceWriter) -> None:
    offsets, masks = [], []
    for position, index in enumerate(op.einsum.indices):
        if not index.is_Symbol:
            raise LoweringError(
                f"output {op.tensor} is written at {index}; outputs are written at plain indices"
            )
        code = dialect.coordinate(index.name)
        offsets.append(f"{dialect.expand(code, op.axes)} * st_{op.tensor}_{position}")
        valid = None if index.name in program.grid else dialect.valid(index.name)
        if valid is not None:
            masks.append(dialect.expand(Code(valid, code.axes), op.axes))
    pointer = f"{op.tensor} + " + " + ".join(offsets)
    value = f"{value_name(op.tensor)}.to({op.tensor}.dtype.element_ty)"
    mask = f", mask={' & '.join(masks)}" if masks else ""
    writer.line(f"tl.store({pointer}, {value}{mask})")
