"""The NumPy emitter: a tile program as a Python function over NumPy arrays.

The function walks the query tiles and, for each, the key tiles its block list names, in
ascending order; every grid point (batch, head) of a tile is computed at once, so each tile
operation is one batched NumPy call (a BLAS matmul for a contraction). Arrays are laid out as
(grid..., tile axes...) with extent 1 where a value does not vary. The last tiles are simply
shorter slices, so only the block-sparse mask, and only on PARTIAL tiles, costs mask work;
nothing ever spans all queries by all keys.

The generated source is what `attncc lower --target numpy` prints; `run_tiled` executes it.
"""

from __future__ import annotations

import sympy

from attncc.backends.emit import (
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
from attncc.ir import ReduceOp, index_value

_REDUCE = {ReduceOp.SUM: "np.sum", ReduceOp.MAX: "np.max", ReduceOp.MIN: "np.min"}

_CALLS = {
    "add": "({0} + {1})",
    "sub": "({0} - {1})",
    "mul": "({0} * {1})",
    "div": "np.divide({0}, {1}, dtype=_dtype)",
    "floordiv": "({0} // {1})",
    "mod": "({0} % {1})",
    "neg": "(-{0})",
    "max": "np.maximum({0}, {1})",
    "min": "np.minimum({0}, {1})",
    "exp": "np.exp({0}, dtype=_dtype)",
    "exp2": "np.exp2({0}, dtype=_dtype)",
    "log": "np.log({0}, dtype=_dtype)",
    "log2": "np.log2({0}, dtype=_dtype)",
    "tanh": "np.tanh({0}, dtype=_dtype)",
    "sigmoid": "_sigmoid({0})",
    "sqrt": "np.sqrt({0}, dtype=_dtype)",
    "rsqrt": "(1.0 / np.sqrt({0}, dtype=_dtype))",
    "abs": "np.abs({0})",
    "select": "_select({0}, {1}, {2})",
    "lt": "({0} < {1})",
    "le": "({0} <= {1})",
    "gt": "({0} > {1})",
    "ge": "({0} >= {1})",
    "eq": "({0} == {1})",
    "ne": "({0} != {1})",
    "and": "np.logical_and({0}, {1})",
    "or": "np.logical_or({0}, {1})",
    "not": "np.logical_not({0})",
}

_FLOAT_OPS = frozenset(("div", "exp", "exp2", "log", "log2", "tanh", "sigmoid", "sqrt", "rsqrt"))

_PRELUDE = """\
import numpy as np


def _sigmoid(x):
    e = np.exp(-np.abs(x))
    return np.where(x >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


def _select(condition, a, b):
    # A condition over fewer axes than the result (a per-row guard) is usually the same for
    # the whole tile: then one branch is the result, without a pass over the tile.
    shape = np.broadcast_shapes(np.shape(condition), np.shape(a), np.shape(b))
    if 4 * np.size(condition) <= np.prod(shape):
        taken = a if np.all(condition) else b if not np.any(condition) else None
        if taken is not None:
            return np.broadcast_to(np.asarray(taken, dtype=np.result_type(a, b)), shape)
    return np.where(condition, a, b)
"""


class NumpyDialect(Dialect):
    """Spelling of tile operations for arrays laid out (grid..., tile axes...)."""

    INFINITY = "np.inf"
    # The key tile index is a Python int in the NumPy kernel's loop.
    LOOP_INDEX_IS_NUMBER = True

    def __init__(
        self, program: TileProgram, writer: SourceWriter, *, full_tile: bool = False
    ) -> None:
        super().__init__(program, writer)
        self.full_tile = full_tile

    def size(self, rank: str) -> Code:
        return Code(f"s_{rank}", uniform=True)

    def call(self, op: str, args: list[str], *, uniform: bool = False) -> str:
        if op == "exp2" and not self.full_tile:
            # NumPy's float32 exp2 is several times slower than exp on the -inf that masks
            # leave in scores; FULL tiles have none, and there exp2 saves a multiply.
            args = [f"({args[0]}) * 0.6931471805599453"]
            op = "exp"
        text = _CALLS[op].format(*args)
        # NumPy scalars of uniform values would be float64 and promote float32 tiles.
        return f"float({text})" if uniform and op in _FLOAT_OPS else text

    def expand(self, code: Code, axes: tuple[str, ...]) -> str:
        if code.uniform or code.axes == axes:
            return code.text
        picks = ", ".join(":" if a in code.axes else "None" for a in axes)
        return f"{code.text}[..., {picks}]"

    def full(self, code: Code, axes: tuple[str, ...]) -> str:
        if code.uniform:
            return f"np.full(_grid + {self._shape(axes)}, {code.text}, dtype=_dtype)"
        if set(code.axes) == set(axes):
            return self.expand(code, axes)
        # A broadcast view spans every lane without copying them (a reduction over an axis
        # the value does not vary along must still count each lane).
        return f"np.broadcast_to({self.expand(code, axes)}, _grid + {self._shape(axes)})"

    def reduce(self, op: ReduceOp, code: Code, axis: str) -> str:
        position = code.axes.index(axis) - len(code.axes)
        return f"{_REDUCE[op]}({code.text}, axis={position})"

    def dot(self, lhs: Code, rhs: Code, axis: str) -> Code:
        (i,) = [a for a in lhs.axes if a != axis]
        (j,) = [a for a in rhs.axes if a != axis]
        a = lhs.text if lhs.axes == (i, axis) else f"np.swapaxes({lhs.text}, -1, -2)"
        b = rhs.text if rhs.axes == (axis, j) else f"np.swapaxes({rhs.text}, -1, -2)"
        text = f"np.matmul({a}, {b})"
        if self.program.ordered((i, j)) != (i, j):
            return Code(f"np.swapaxes({text}, -1, -2)", (j, i))
        return Code(text, (i, j))

    def _shape(self, axes: tuple[str, ...]) -> str:
        return "(" + "".join(f"n_{a}, " for a in axes) + ")"

    def load(self, read: InputRead) -> str:
        basic = self._basic_load(read)
        if basic is not None:
            return basic
        # Any other index: one integer array per rank, broadcast over (grid..., axes...),
        # clipped into the rank: a point where it falls outside is one the cascade masks
        # (docs/ir.md: reads at filtered-out points never happen), so any value will do.
        axes = self.program.operand_axes(read)
        tensor = read.access.tensor
        picks = []
        for position, index in enumerate(read.access.indices):
            code = expression(index_value(index), self.program, self)
            pick = code.text if code.uniform else self.expand(code, axes)
            picks.append(f"np.clip({pick}, 0, {tensor}.shape[{position}] - 1)")
        return f"{tensor}[{', '.join(picks)}]"

    def _basic_load(self, read: InputRead) -> str | None:
        """A view for reads at plain indices (grid, query, feature, the key position), the
        common case; None for anything else."""
        program = self.program
        key_position = program.schedule.key.recombined()
        picks, labels = [], []
        for index in read.access.indices:
            if index.is_Integer:
                picks.append(str(index))
            elif sympy.expand(index - key_position) == 0:
                start = f"m1 * s_{program.schedule.key.inner}"
                picks.append(f"{start}:{start} + n_{program.key}")
                labels.append(program.key)
            elif index.is_Symbol and index.name == program.query:
                picks.append("p0:p1")
                labels.append(program.query)
            elif index.is_Symbol and (
                index.name in program.grid or index.name in program.axis_order
            ):
                picks.append(":")
                labels.append(index.name)
            else:
                return None
        return self._arrange(read.access.tensor, picks, labels)

    def _arrange(self, tensor: str, picks: list[str], labels: list[str]) -> str:
        """`tensor[picks]` with its dimensions put in (grid..., axes...) order."""
        target = [*self.program.grid, *self.program.ordered(labels)]
        order = sorted(range(len(labels)), key=lambda d: target.index(labels[d]))
        text = f"{tensor}[{', '.join(picks)}]"
        if order != list(range(len(labels))):
            text = f"{text}.transpose({', '.join(map(str, order))})"
        present = set(labels)
        if all(g in present for g in self.program.grid):
            return text
        grid = ", ".join(":" if g in present else "None" for g in self.program.grid)
        rest = ", ".join(":" for a in target if a not in self.program.grid)
        return f"{text}[{', '.join(x for x in (grid, rest) if x)}]"


def emit_numpy(program: TileProgram, *, function: str = "kernel") -> str:
    """Python source of `function(inputs, sizes, tiles, dtype)` computing the program's
    outputs; `tiles` is (counts, indices, full) per query tile (`TileLists`)."""
    nest = program.schedule
    cascade = nest.cascade
    writer = SourceWriter()
    writer.lines(_PRELUDE.splitlines())
    writer.line("")
    writer.line("")
    # select() evaluates both branches: the one not taken may divide 0 by 0 (and is dropped).
    writer.line('@np.errstate(invalid="ignore", divide="ignore", over="ignore")')
    writer.line(f"def {function}(inputs, sizes, tiles, dtype):")
    with writer.indented():
        writer.line(f'"""{cascade.name}: {len(cascade.einsums)} Einsums, tiled by attncc."""')
        for decl in cascade.inputs:
            writer.line(f'{decl.name} = inputs["{decl.name}"]')
        for rank in sorted(r.name for r in cascade.all_ranks()):
            writer.line(f's_{rank} = sizes["{rank}"]')
        writer.line("_dtype = dtype")
        grid_shape = ", ".join(f"s_{program.schedule.rank_of(g)}" for g in program.grid)
        writer.line(f"_grid = ({grid_shape}{',' if len(program.grid) == 1 else ''})")
        for n, var in enumerate(program.grid):
            shape = ", ".join("-1" if k == n else "1" for k in range(len(program.grid)))
            writer.line(f"g_{var} = np.arange(s_{program.schedule.rank_of(var)}).reshape({shape})")
        lead = "1, " * len(program.grid)
        for var in program.features:
            writer.line(f"n_{var} = s_{program.schedule.rank_of(var)}")
            writer.line(f"x_{var} = np.arange(n_{var}).reshape({lead}-1)")
        for decl in cascade.outputs:
            dims = ", ".join(f"s_{r}" for r in decl.ranks)
            writer.line(f"out_{decl.name} = np.empty(({dims},), dtype=_dtype)")
        writer.line("counts, indices, full = tiles")
        query_tile, query_rank = nest.query_tile, program.schedule.rank_of(program.query)
        if nest.hoisted:
            # One key loop for every query tile (the tile lists are alike: use the first).
            key_side = tuple(op for op in program.prologue if not _per_query(op, program))
            _ops(key_side, program, NumpyDialect(program, writer), writer, masked=True)
            _key_loop(program, writer, "0")
        writer.line(f"for qt in range(-(-s_{query_rank} // {query_tile})):")
        with writer.indented():
            _query_tile(program, writer, query_tile, query_rank)
        outputs = ", ".join(f'"{d.name}": out_{d.name}' for d in cascade.outputs)
        writer.line(f"return {{{outputs}}}")
    return writer.text()


def _query_tile(program: TileProgram, writer: SourceWriter, tile: int, rank: str) -> None:
    query = program.query
    writer.line(f"p0 = qt * {tile}")
    writer.line(f"p1 = min(p0 + {tile}, s_{rank})")
    writer.line(f"n_{query} = p1 - p0")
    writer.line(f"x_{query} = np.arange(p0, p1).reshape({'1, ' * len(program.grid)}-1)")
    dialect = NumpyDialect(program, writer)
    hoisted = program.schedule.hoisted
    prologue = [op for op in program.prologue if not hoisted or _per_query(op, program)]
    _ops(tuple(prologue), program, dialect, writer, masked=True)
    if not hoisted:
        _key_loop(program, writer, "qt")
    _ops(program.epilogue, program, NumpyDialect(program, writer), writer, masked=True)


def _per_query(op: TileOp, program: TileProgram) -> bool:
    return program.query in op.einsum.space


def _key_loop(program: TileProgram, writer: SourceWriter, row: str) -> None:
    """The carried values' initial values, the loop over the key tiles of tile list `row`,
    and the final values after it."""
    key, inner = program.key, program.schedule.key.inner
    dialect = NumpyDialect(program, writer)
    for op in program.body:
        if op.carried:
            initial = initial_value(op, program, dialect).text
            writer.line(f"{value_name(op.tensor, previous=True)} = {initial}")
    writer.line(f"for j in range(counts[{row}]):")
    with writer.indented():
        writer.line(f"m1 = int(indices[{row}, j])")
        writer.line(f"n_{key} = min(s_{inner}, s_{program.schedule.key.rank} - m1 * s_{inner})")
        writer.line(f"x_{key} = np.arange(n_{key}).reshape({'1, ' * len(program.grid)}-1)")
        if any(op.sparse_mask for op in program.body):
            writer.line(f"if full[{row}, j]:")
            with writer.indented():
                full = NumpyDialect(program, writer, full_tile=True)
                _ops(program.body, program, full, writer, masked=False)
            writer.line("else:")
            with writer.indented():
                _ops(program.body, program, NumpyDialect(program, writer), writer, masked=True)
        else:
            unmasked = all(op.einsum.filter is None for op in program.body)
            body = NumpyDialect(program, writer, full_tile=unmasked)
            _ops(program.body, program, body, writer, masked=True)
        for op in program.body:
            if op.carried:
                writer.line(
                    f"{value_name(op.tensor, previous=True)} = {carried_update(op, dialect)}"
                )
    outputs = program.schedule.cascade.output_names()
    for op in program.body:
        if op.carried:
            writer.line(f"{value_name(op.tensor)} = {value_name(op.tensor, previous=True)}")
        if op.accumulated and op.tensor in outputs:
            _store(op, program, writer)


def _ops(
    ops: tuple[TileOp, ...],
    program: TileProgram,
    dialect: NumpyDialect,
    writer: SourceWriter,
    *,
    masked: bool,
) -> None:
    outputs = set(program.schedule.cascade.output_names())
    for op in ops:
        value = tile_value(op, program, dialect, masked=masked)
        writer.line(f"{value_name(op.tensor)} = {value.text}")
        if op.tensor in outputs and not op.accumulated:
            _store(op, program, writer)


def _store(op: TileOp, program: TileProgram, writer: SourceWriter) -> None:
    picks, labels = [], []
    for index in op.einsum.indices:
        if not index.is_Symbol:
            raise LoweringError(
                f"output {op.tensor} is written at {index}; outputs are written at plain indices"
            )
        picks.append("p0:p1" if index.name == program.query else ":")
        labels.append(index.name)
    layout = [*program.grid, *op.axes]
    order = [layout.index(label) for label in labels]
    missing = [g for g in program.grid if g not in labels]
    if missing:
        raise LoweringError(f"output {op.tensor} does not index grid rank(s) {', '.join(missing)}")
    permutation = ", ".join(map(str, order))
    value = f"np.transpose({value_name(op.tensor)}, ({permutation},))"
    writer.line(f"out_{op.tensor}[{', '.join(picks)}] = {value}")
