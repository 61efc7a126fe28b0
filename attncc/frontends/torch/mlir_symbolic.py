"""Symbolic evaluation of the tensors a model computes from positions and constants: masks built
with arange, ones, tril and comparisons, and scalar constants such as a score scale.

`symbolic(value)` follows the torch dialect operations that compute a value back to their
leaves and returns, when every leaf is a constant or an arange, the tensor as one IR value
expression of its coordinates: element [i0, i1, ...] is `expr` with Coord("d0") = i0, and so on
(`arange(8)[None, :] > arange(8)[:, None]` is `d1 > d0`). A dimension of size 1 has no
coordinate in `expr`, so broadcasting is renaming. A value that depends on data (a function
argument, a weight) is not symbolic: None. `position_masks` reads such masks as predicates.
"""

from __future__ import annotations

from collections.abc import Callable

import sympy
from torch_mlir import ir

from attncc.frontends.torch.mlir_ops import (
    SAME_DATA,
    NotConstant,
    constant,
    element_kind,
    int_constant,
    normalize_dim,
    permutation,
    producer,
    shape,
    splat_literal,
)
from attncc.frontends.torch.position_masks import Symbolic, axis, broadcast, normalized, rename
from attncc.ir import Call, Const, Expr, index_symbol, index_value

# -- The evaluator: one rule per torch dialect operation. ---------------------------------------

Rule = Callable[["_Evaluator", ir.Operation, tuple[int, ...]], Expr | None]
_RULES: dict[str, Rule] = {}


def _rule(*names: str) -> Callable[[Rule], Rule]:
    def register(rule: Rule) -> Rule:
        for name in names:
            _RULES[name] = rule
        return rule

    return register


class _Evaluator:
    """Memoized symbolic evaluation of values; at most `budget` operations are visited."""

    def __init__(self, budget: int = 256) -> None:
        self.memo: dict[ir.Value, Symbolic | None] = {}
        self.budget = budget

    def __call__(self, value: ir.Value) -> Symbolic | None:
        if value not in self.memo:
            self.memo[value] = self._evaluate(value)
        return self.memo[value]

    def _evaluate(self, value: ir.Value) -> Symbolic | None:
        op, dims = producer(value), shape(value)
        if op is None or dims is None or self.budget <= 0:
            return None
        self.budget -= 1
        splat = splat_literal(value)
        if splat is not None:
            return Symbolic(dims, Const(splat))
        rule = _RULES.get(op.name)
        expr = rule(self, op, dims) if rule is not None else None
        return None if expr is None else normalized(dims, expr)

    def operand(self, value: ir.Value, target: tuple[int, ...]) -> Expr | None:
        """A tensor operand broadcast to `target`, or a number operand as a constant."""
        if shape(value) is not None:
            sym = self(value)
            return None if sym is None else broadcast(sym, target)
        number = _number(value)
        return None if number is None else Const(number)


def _number(value: ir.Value) -> float | None:
    try:
        number = constant(value)
    except NotConstant:
        return None
    return float(number) if isinstance(number, int | float) else None


def _int_or_none(value: ir.Value, default: int) -> int | None:
    """An int operand that may be None (`x[2:]` has no end), which reads as `default`."""
    op = producer(value)
    return default if op is not None and op.name == "torch.constant.none" else int_constant(value)


@_rule("torch.aten.arange", "torch.aten.arange.start", "torch.aten.arange.start_step")
def _arange(ev: _Evaluator, op: ir.Operation, dims: tuple[int, ...]) -> Expr | None:
    args = list(op.operands)
    start = int_constant(args[0]) if op.name != "torch.aten.arange" else 0
    step = int_constant(args[2]) if op.name == "torch.aten.arange.start_step" else 1
    if start is None or step is None:
        return None  # float positions are not positions
    return index_value(start + step * index_symbol(axis(0)))


@_rule(
    "torch.aten.ones",
    "torch.aten.zeros",
    "torch.aten.ones_like",
    "torch.aten.zeros_like",
    "torch.aten.new_ones",
    "torch.aten.new_zeros",
)
def _filled(ev: _Evaluator, op: ir.Operation, dims: tuple[int, ...]) -> Expr | None:
    return Const(1.0 if "ones" in op.name else 0.0)


@_rule("torch.aten.full", "torch.aten.full_like", "torch.aten.new_full", "torch.aten.scalar_tensor")
def _full(ev: _Evaluator, op: ir.Operation, dims: tuple[int, ...]) -> Expr | None:
    position = {"torch.aten.full": 1, "torch.aten.full_like": 1, "torch.aten.new_full": 2}
    value = _number(list(op.operands)[position.get(op.name, 0)])
    return None if value is None else Const(value)


@_rule(*SAME_DATA)
def _converted(ev: _Evaluator, op: ir.Operation, dims: tuple[int, ...]) -> Expr | None:
    source = op.operands[0]
    sym = ev(source)
    if sym is None or sym.shape != dims:
        return None
    kind, source_kind = element_kind(op.result), element_kind(source)
    if kind == "bool" and source_kind != "bool":
        return Call("ne", (sym.expr, Const(0.0)))
    if kind == "int" and source_kind == "float":
        return None  # truncation: not worth stating
    return sym.expr


def _same_data(old: tuple[int, ...], new: tuple[int, ...]) -> dict[str, sympy.Expr] | None:
    """The renaming of coordinates when a view only inserts or drops size-1 dimensions."""
    kept_old = [i for i, s in enumerate(old) if s != 1]
    kept_new = [i for i, s in enumerate(new) if s != 1]
    if [old[i] for i in kept_old] != [new[i] for i in kept_new]:
        return None
    return {axis(a): index_symbol(axis(b)) for a, b in zip(kept_old, kept_new, strict=True)}


@_rule(
    "torch.aten.unsqueeze",
    "torch.aten.squeeze",
    "torch.aten.squeeze.dim",
    "torch.aten.view",
    "torch.aten.reshape",
    "torch.aten._unsafe_view",
)
def _reshaped(ev: _Evaluator, op: ir.Operation, dims: tuple[int, ...]) -> Expr | None:
    sym = ev(op.operands[0])
    mapping = None if sym is None else _same_data(sym.shape, dims)
    return None if sym is None or mapping is None else rename(sym.expr, mapping)


@_rule("torch.aten.expand", "torch.aten.expand_as", "torch.aten.broadcast_to")
def _expanded(ev: _Evaluator, op: ir.Operation, dims: tuple[int, ...]) -> Expr | None:
    return ev.operand(op.operands[0], dims)


@_rule("torch.aten.slice.Tensor")
def _sliced(ev: _Evaluator, op: ir.Operation, dims: tuple[int, ...]) -> Expr | None:
    source, dim_v, start_v, _, step_v = list(op.operands)
    sym, dim = ev(source), int_constant(dim_v)
    if sym is None or dim is None or (dim := normalize_dim(dim, len(sym.shape))) is None:
        return None
    start, step = _int_or_none(start_v, 0), int_constant(step_v)
    if start is None or step is None:
        return None
    start = max(start + sym.shape[dim], 0) if start < 0 else min(start, sym.shape[dim])
    return rename(sym.expr, {axis(dim): start + step * index_symbol(axis(dim))})


@_rule("torch.aten.select.int")
def _selected(ev: _Evaluator, op: ir.Operation, dims: tuple[int, ...]) -> Expr | None:
    source, dim_v, index_v = list(op.operands)
    sym, dim, index = ev(source), int_constant(dim_v), int_constant(index_v)
    if sym is None or dim is None or index is None:
        return None
    if (dim := normalize_dim(dim, len(sym.shape))) is None:
        return None
    index = index + sym.shape[dim] if index < 0 else index
    mapping: dict[str, sympy.Expr] = {axis(dim): sympy.Integer(index)}
    mapping |= {axis(i): index_symbol(axis(i - 1)) for i in range(dim + 1, len(sym.shape))}
    return rename(sym.expr, mapping)


@_rule("torch.aten.transpose.int", "torch.aten.permute", "torch.aten.t", "torch.aten.numpy_T")
def _permuted(ev: _Evaluator, op: ir.Operation, dims: tuple[int, ...]) -> Expr | None:
    args = list(op.operands)
    sym = ev(args[0])
    if sym is None:
        return None
    order = permutation(op, len(sym.shape))
    if order is None:
        return None
    return rename(sym.expr, {axis(old): index_symbol(axis(new)) for new, old in enumerate(order)})


@_rule("torch.aten.tril", "torch.aten.triu")
def _triangle(ev: _Evaluator, op: ir.Operation, dims: tuple[int, ...]) -> Expr | None:
    source, diagonal_v = list(op.operands)
    sym, diagonal = ev(source), int_constant(diagonal_v)
    if sym is None or diagonal is None or len(dims) < 2:
        return None
    # tril keeps column - row <= diagonal, triu column - row >= diagonal.
    row, col = (index_symbol(axis(len(dims) + k)) for k in (-2, -1))
    side = (index_value(col - row), Const(float(diagonal)))
    condition = Call("le" if op.name.endswith("tril") else "ge", side)
    return Call("select", (condition, sym.expr, Const(0.0)))


def _binary(map_op: str, *, alpha: int | None = None, reverse: bool = False) -> Rule:
    """A broadcasting binary operation on operands 0 and 1; `alpha` is the operand that
    aten's alpha argument (operand 2, when present) multiplies; `reverse` swaps the sides."""

    def rule(ev: _Evaluator, op: ir.Operation, dims: tuple[int, ...]) -> Expr | None:
        args = list(op.operands)
        a, b = ev.operand(args[0], dims), ev.operand(args[1], dims)
        if a is None or b is None:
            return None
        if alpha is not None and len(args) > 2:
            factor = _number(args[2])
            if factor is None:
                return None
            if factor != 1 and alpha == 0:
                a = Call("mul", (a, Const(factor)))
            elif factor != 1:
                b = Call("mul", (b, Const(factor)))
        return Call(map_op, (b, a) if reverse else (a, b))

    return rule


def _ops(*same: str, **renamed: str) -> dict[str, str]:
    """aten operation names -> the IR's op names: those in `same` are spelled alike."""
    return {**{name: name for name in same}, **renamed}


for _name, _op in _ops(
    *("add", "sub", "mul", "div", "gt", "ge", "lt", "le", "eq", "ne"),
    logical_and="and",
    logical_or="or",
    bitwise_and="and",
    bitwise_or="or",
    __and__="and",
    __or__="or",
    maximum="max",
    minimum="min",
).items():
    # add and sub, Tensor and Scalar alike: self + alpha * other, self - alpha * other.
    _scaled = 1 if _name in ("add", "sub") else None
    for _suffix in ("Tensor", "Scalar"):
        _rule(f"torch.aten.{_name}.{_suffix}")(_binary(_op, alpha=_scaled))
    _rule(f"torch.aten.{_name}")(_binary(_op))
# rsub(self, other, alpha) = other - alpha * self.
_rule("torch.aten.rsub.Scalar", "torch.aten.rsub.Tensor")(_binary("sub", alpha=0, reverse=True))


def _unary(map_op: str) -> Rule:
    def rule(ev: _Evaluator, op: ir.Operation, dims: tuple[int, ...]) -> Expr | None:
        a = ev.operand(op.operands[0], dims)
        return None if a is None else Call(map_op, (a,))

    return rule


for _name, _op in _ops(
    *("neg", "sqrt", "rsqrt", "abs", "exp", "log"), logical_not="not", bitwise_not="not"
).items():
    _rule(f"torch.aten.{_name}")(_unary(_op))


@_rule("torch.aten.reciprocal")
def _reciprocal(ev: _Evaluator, op: ir.Operation, dims: tuple[int, ...]) -> Expr | None:
    a = ev.operand(op.operands[0], dims)
    return None if a is None else Call("div", (Const(1.0), a))


@_rule(
    "torch.aten.where.self",
    "torch.aten.where.ScalarSelf",
    "torch.aten.where.ScalarOther",
    "torch.aten.where.Scalar",
)
def _where(ev: _Evaluator, op: ir.Operation, dims: tuple[int, ...]) -> Expr | None:
    cond, yes, no = (ev.operand(v, dims) for v in op.operands)
    if cond is None or yes is None or no is None:
        return None
    return Call("select", (cond, yes, no))


@_rule("torch.aten.masked_fill.Scalar", "torch.aten.masked_fill.Tensor")
def _masked_fill(ev: _Evaluator, op: ir.Operation, dims: tuple[int, ...]) -> Expr | None:
    source, mask, fill = (ev.operand(v, dims) for v in op.operands)
    if source is None or mask is None or fill is None:
        return None
    return Call("select", (mask, fill, source))


def symbolic(value: ir.Value) -> Symbolic | None:
    """`value` as an expression of its coordinates, or None when it depends on data."""
    return _Evaluator()(value)


def scalar_constant(value: ir.Value) -> float | None:
    """The value of a tensor whose elements are one constant (a 0-d literal, sqrt of one)."""
    sym = symbolic(value)
    return sym.expr.value if sym is not None and isinstance(sym.expr, Const) else None
