"""Expressions and tile operations as source text, shared by the Triton and NumPy emitters.

An emitter supplies a `Dialect`: how its language spells a constant, a coordinate, an operand,
an operator, a broadcast, a reduction and a matrix product. Everything else (which operand
broadcasts how, where a filter applies, what a reduction's masked lanes hold) is decided here
once, so the two emitters cannot drift apart.
"""

from __future__ import annotations

import abc
import contextlib
import math
from collections.abc import Iterator
from dataclasses import dataclass

from attncc.backends.tile_program import (
    IDENTITY,
    InputRead,
    Operand,
    OpKind,
    TileOp,
    TileProgram,
    ValueRead,
)
from attncc.errors import LoweringError
from attncc.ir import Access, Call, Const, Coord, Expr, ReduceOp, Size, indices_used


@dataclass(frozen=True)
class Code:
    """Source text of a value over tile `axes` (canonical order); `uniform` when it is the
    same for every program of the grid and every lane (a constant, a size, the tile index)."""

    text: str
    axes: tuple[str, ...] = ()
    uniform: bool = False


class Dialect(abc.ABC):
    """How a target language spells tile operations. Constants, coordinates and operands are
    spelled alike by both dialects (each input read emitted once per scope as a statement,
    `ldN_X = ...`); subclasses say how to spell infinity, whether the loop index is a plain
    number, and everything target-specific below."""

    INFINITY = "float('inf')"
    LOOP_INDEX_IS_NUMBER = False

    def __init__(self, program: TileProgram, writer: SourceWriter) -> None:
        self.program = program
        self.writer = writer
        self.loads: dict[Access, str] = {}

    def constant(self, value: float) -> str:
        if math.isinf(value):
            return self.INFINITY if value > 0 else f"-{self.INFINITY}"
        return repr(int(value)) if value.is_integer() and abs(value) < 2**31 else repr(value)

    def coordinate(self, var: str) -> Code:
        program = self.program
        if var == program.key_tiles:
            return Code("m1", uniform=self.LOOP_INDEX_IS_NUMBER)
        if var in program.grid:
            return Code(f"g_{var}")
        if var in program.axis_order:
            return Code(f"x_{var}", (var,))
        raise LoweringError(f"coordinate {var} is neither a grid, tile nor loop index")

    def operand(self, access: Access, operand: Operand) -> Code:
        if isinstance(operand, ValueRead):
            axes = self.program.value_axes[operand.tensor]
            return Code(value_name(operand.tensor, previous=operand.previous), axes)
        if access not in self.loads:
            # Numbered by the writer, not by this dialect: dialects of one kernel share a
            # scope (the loop's seeded with values loaded before it), and names must not clash.
            name = self.writer.fresh(f"ld{{}}_{operand.access.tensor}")
            self.writer.line(f"{name} = {self.load(operand)}")
            self.loads[access] = name
        return Code(self.loads[access], self.program.operand_axes(operand))

    @abc.abstractmethod
    def load(self, read: InputRead) -> str:
        """An input read at tile coordinates, as an expression."""

    @abc.abstractmethod
    def size(self, rank: str) -> Code: ...

    @abc.abstractmethod
    def call(self, op: str, args: list[str], *, uniform: bool = False) -> str:
        """Operator `op` applied to `args`; `uniform` when every argument is."""

    @abc.abstractmethod
    def expand(self, code: Code, axes: tuple[str, ...]) -> str:
        """`code` broadcastable against a tile over `axes` (a superset of its axes)."""

    @abc.abstractmethod
    def full(self, code: Code, axes: tuple[str, ...]) -> str:
        """`code` as a whole tile over `axes`, every lane materialized."""

    @abc.abstractmethod
    def reduce(self, op: ReduceOp, code: Code, axis: str) -> str: ...

    @abc.abstractmethod
    def dot(self, lhs: Code, rhs: Code, axis: str) -> Code: ...


def expression(expr: Expr, program: TileProgram, dialect: Dialect) -> Code:
    """`expr` as source text over the tile axes it spans."""
    if isinstance(expr, Const):
        return Code(dialect.constant(expr.value), uniform=True)
    if isinstance(expr, Coord):
        return dialect.coordinate(expr.name)
    if isinstance(expr, Size):
        return dialect.size(expr.rank)
    if isinstance(expr, Access):
        return dialect.operand(expr, program.operand(expr))
    assert isinstance(expr, Call)
    args = [expression(a, program, dialect) for a in expr.args]
    axes = program.ordered(a for arg in args for a in arg.axes)
    uniform = all(arg.uniform for arg in args)
    text = dialect.call(expr.op, [dialect.expand(arg, axes) for arg in args], uniform=uniform)
    return Code(text, axes, uniform)


def tile_value(op: TileOp, program: TileProgram, dialect: Dialect, *, masked: bool) -> Code:
    """The value `op` computes, over exactly `op.axes`. `masked` False leaves out the
    block-sparse mask (a FULL tile); other filters always apply.

    Lanes a filter masks inside a reduced axis take the reduction's identity; output points it
    masks whole take its fill (by default the identity, or 0 without a reduction). A total
    over the key tiles is combined across tiles, so there masked points hold the identity
    (`tile_program` refuses any other fill)."""
    einsum = op.einsum
    active = einsum.filter if einsum.filter is not None and (masked or not op.sparse_mask) else None
    identity = IDENTITY[einsum.reduce] if einsum.reduce is not None else 0.0
    fill = identity if active is None or active.fill is None or op.accumulated else active.fill

    def filtered(value: Code, otherwise: float) -> Code:
        if active is None:
            return value
        predicate = expression(active.predicate, program, dialect)
        axes = program.ordered((*value.axes, *predicate.axes))
        default = Code(dialect.constant(otherwise), uniform=True)
        picks = [dialect.expand(c, axes) for c in (predicate, value, default)]
        return Code(dialect.call("select", picks), axes, value.uniform and predicate.uniform)

    if op.kind is OpKind.MAP:
        value = filtered(expression(einsum.expr, program, dialect), fill)
        return Code(dialect.full(value, op.axes), op.axes)
    assert einsum.reduce is not None and op.reduced is not None
    if op.kind is OpKind.REDUCE:
        lanes = active is not None and op.reduced in indices_used(active.predicate)
        value = expression(einsum.expr, program, dialect)
        value = filtered(value, identity) if lanes else value
        over = program.ordered((*op.axes, op.reduced))
        spread = Code(dialect.full(value, over), over)
        result = Code(dialect.reduce(einsum.reduce, spread, op.reduced), op.axes)
        return result if lanes else Code(dialect.full(filtered(result, fill), op.axes), op.axes)
    assert op.contraction is not None
    lhs = expression(op.contraction.lhs, program, dialect)
    rhs = expression(op.contraction.rhs, program, dialect)
    result = dialect.dot(lhs, rhs, op.reduced)
    for factor in op.contraction.rest:
        scale = expression(factor, program, dialect)
        axes = program.ordered((*result.axes, *scale.axes))
        text = dialect.call("mul", [dialect.expand(result, axes), dialect.expand(scale, axes)])
        result = Code(text, axes)
    return Code(dialect.full(filtered(result, fill), op.axes), op.axes)


def initial_value(op: TileOp, program: TileProgram, dialect: Dialect) -> Code:
    """A carried value before the first key tile, over `op.axes`: a running update's initial
    value, or the identity of a total over the key tiles."""
    if op.accumulated:
        assert op.einsum.reduce is not None
        value = Code(dialect.constant(IDENTITY[op.einsum.reduce]), uniform=True)
    else:
        assert op.einsum.init is not None, "verified running updates have an initial value"
        value = expression(op.einsum.init, program, dialect)
    return Code(dialect.full(value, op.axes), op.axes)


def carried_update(op: TileOp, dialect: Dialect) -> str:
    """What a carried value becomes at the end of a key tile: the running update's new value,
    or the total so far combined with this tile's part."""
    current = value_name(op.tensor)
    if not op.accumulated:
        return current
    assert op.einsum.reduce is not None
    combine = {ReduceOp.SUM: "add", ReduceOp.MAX: "max", ReduceOp.MIN: "min"}[op.einsum.reduce]
    return dialect.call(combine, [value_name(op.tensor, previous=True), current])


def value_name(tensor: str, *, previous: bool = False) -> str:
    """The variable holding a computed tile. A running value lives in `c_X` across key tiles
    and its update in `v_X` until the end of the tile; after the loop `v_X` holds the final
    value. The prefixes keep names fresh whatever the cascade calls its tensors."""
    return f"c_{tensor}" if previous else f"v_{tensor}"


class SourceWriter:
    """Lines of generated Python with their indentation."""

    def __init__(self) -> None:
        self._lines: list[str] = []
        self._depth = 0
        self._names = 0

    def fresh(self, pattern: str) -> str:
        """`pattern` with its `{}` replaced by a number no other fresh name of this source has."""
        self._names += 1
        return pattern.format(self._names - 1)

    def line(self, text: str) -> None:
        self._lines.append("    " * self._depth + text if text else "")

    def lines(self, texts: list[str]) -> None:
        for text in texts:
            self.line(text)

    @contextlib.contextmanager
    def indented(self) -> Iterator[None]:
        self._depth += 1
        try:
            yield
        finally:
            self._depth -= 1

    def text(self) -> str:
        return "\n".join(self._lines) + "\n"
