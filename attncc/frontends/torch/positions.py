"""Masks an FX graph computes from token positions, in the symbolic form both PyTorch
frontends read masks in (`position_masks.Symbolic`).

Models build causal and sliding-window masks in the graph from `arange` comparisons
(`kv_idx <= q_idx`, `tril(ones(P, M))`), then turn them into an additive mask with
`where(visible, 0, finfo.min)`. `symbolic(node)` evaluates that subgraph with positions as
coordinates: element [d0, d1, ...] of the node's value is one IR expression of them. Leaves
must be constants or aranges; anything else (a padding mask, a tensor of ids, a weight) makes
the mask data, and the reason says what it read. `position_masks.mask_predicate` then proves
which keys the mask hides, as a predicate over key position m and query position p.

Shapes come from the example values Dynamo records; a size-1 dim has no coordinate, so
broadcasting is renaming (`position_masks.broadcast`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import fx

from attncc.frontends.torch.graph_ops import NodeOp, example, node_op
from attncc.frontends.torch.position_masks import Symbolic, axis, broadcast, normalized, rename
from attncc.ir import Call, Const, Coord, Expr, index_symbol


class NotPositional(Exception):
    """The value reads something other than positions and constants; the message says what."""


Rule = Callable[[fx.Node, NodeOp, tuple[int, ...]], Expr]

_ELEMENTWISE = ("add", "sub", "mul", "div", "le", "lt", "ge", "gt", "eq", "ne", "and", "or")
"""graph_ops' canonical names that are also the IR's map operators, computed elementwise."""


def symbolic(value: Any) -> Symbolic:
    """`value` (a node or a Python number) as a symbolic tensor; raises NotPositional."""
    if isinstance(value, bool | int | float):
        return Symbolic((), Const(float(value)))
    if not isinstance(value, fx.Node):
        raise NotPositional(f"the mask reads {value!r}")
    op = node_op(value)
    if op is None:
        raise NotPositional(f"the mask reads {value.name} ({value.op} {value.target})")
    rule = _RULES.get(op.name)
    if rule is None:
        raise NotPositional(f"the mask computes {op.name} ({value.name}) from data")
    shape = _static_shape(value)
    return normalized(shape, rule(value, op, shape))


def _static_shape(node: fx.Node) -> tuple[int, ...]:
    value = example(node)
    if value is None:
        raise NotPositional(f"{node.name} has no recorded shape")
    if not all(isinstance(n, int) for n in value.shape):
        raise NotPositional(f"{node.name} has a symbolic shape {tuple(value.shape)}")
    return tuple(int(n) for n in value.shape)


def _on(value: Any, shape: tuple[int, ...]) -> Expr:
    """`value`'s expression on a tensor of `shape` that it broadcasts to."""
    sym = symbolic(value)
    expr = broadcast(sym, shape)
    if expr is None:
        raise NotPositional(f"a value of shape {sym.shape} does not broadcast to {shape}")
    return expr


def _arange(node: fx.Node, op: NodeOp, shape: tuple[int, ...]) -> Expr:
    bounds = list(op.args)
    if not bounds or not all(isinstance(b, int) for b in bounds) or len(bounds) > 3:
        raise NotPositional(f"{node.name}: an arange whose bounds are not constants")
    start, step = (0, 1) if len(bounds) == 1 else (bounds[0], bounds[2] if len(bounds) == 3 else 1)
    position: Expr = Coord(axis(0))
    if step != 1:
        position = Call("mul", (position, Const(float(step))))
    return Call("add", (position, Const(float(start)))) if start else position


def _filled(value: float) -> Rule:
    def rule(node: fx.Node, op: NodeOp, shape: tuple[int, ...]) -> Expr:
        return Const(value)

    return rule


def _full(node: fx.Node, op: NodeOp, shape: tuple[int, ...]) -> Expr:
    fill = op.arg(1, "fill_value")
    if not isinstance(fill, bool | int | float):
        raise NotPositional(f"{node.name}: full with a value that is not a constant")
    return Const(float(fill))


def _elementwise(name: str) -> Rule:
    def rule(node: fx.Node, op: NodeOp, shape: tuple[int, ...]) -> Expr:
        if op.kwargs.get("alpha", 1) != 1 or op.kwargs.get("rounding_mode") is not None:
            raise NotPositional(f"{node.name}: {name} with alpha or rounding_mode")
        return Call(name, tuple(_on(a, shape) for a in op.args[:2]))

    return rule


def _not(node: fx.Node, op: NodeOp, shape: tuple[int, ...]) -> Expr:
    return Call("not", (_on(op.args[0], shape),))


def _where(node: fx.Node, op: NodeOp, shape: tuple[int, ...]) -> Expr:
    condition, yes, no = (op.arg(i, name) for i, name in enumerate(("condition", "input", "other")))
    return Call("select", tuple(_on(a, shape) for a in (condition, yes, no)))


def _masked_fill(node: fx.Node, op: NodeOp, shape: tuple[int, ...]) -> Expr:
    tensor, condition, fill = op.args[0], op.arg(1, "mask"), op.arg(2, "value")
    return Call("select", (_on(condition, shape), _on(fill, shape), _on(tensor, shape)))


def _same(node: fx.Node, op: NodeOp, shape: tuple[int, ...]) -> Expr:
    """Casts, `expand` and identity reshapes: the same elements."""
    source = op.args[0]
    if op.name == "reshape" and _static_shape(source) != shape:
        raise NotPositional(f"{node.name}: a reshape that moves elements")
    return _on(source, shape)


def _getitem(node: fx.Node, op: NodeOp, shape: tuple[int, ...]) -> Expr:
    """Indexing with None (a new dim) and whole slices only: dims move, elements do not."""
    source = op.args[0]
    old = _static_shape(source)
    index = op.args[1] if isinstance(op.args[1], tuple) else (op.args[1],)
    whole = slice(None, None, None)
    if any(i is not None and i is not Ellipsis and i != whole for i in index):
        raise NotPositional(f"{node.name}: indexing a mask other than with None and ':'")
    taken = sum(1 for i in index if i is not None and i is not Ellipsis)
    at = index.index(Ellipsis) if Ellipsis in index else len(index)
    index = (*index[:at], *([whole] * (len(old) - taken)), *index[at + 1 :])
    kept = [position for position, i in enumerate(index) if i is not None]
    return _moved(source, dict(enumerate(kept)))


def _unsqueeze(node: fx.Node, op: NodeOp, shape: tuple[int, ...]) -> Expr:
    dim = op.arg(1, "dim") % len(shape)
    kept = [position for position in range(len(shape)) if position != dim]
    return _moved(op.args[0], dict(enumerate(kept)))


def _moved(source: Any, moves: dict[int, int]) -> Expr:
    """`source`'s expression with its dim i now dim moves[i]."""
    sym = symbolic(source)
    return rename(sym.expr, {axis(old): index_symbol(axis(new)) for old, new in moves.items()})


def _triangle(upper: bool) -> Rule:
    def rule(node: fx.Node, op: NodeOp, shape: tuple[int, ...]) -> Expr:
        diagonal = op.arg(1, "diagonal", 0)
        if len(shape) < 2 or not isinstance(diagonal, int):
            raise NotPositional(f"{node.name}: tril/triu with a diagonal that is not a constant")
        row, column = Coord(axis(len(shape) - 2)), Coord(axis(len(shape) - 1))
        bound = Call("add", (row, Const(float(diagonal)))) if diagonal else row
        # tril keeps column <= row + diagonal, triu keeps column >= row + diagonal.
        kept = Call("ge" if upper else "le", (column, bound))
        return Call("select", (kept, _on(op.args[0], shape), Const(0.0)))

    return rule


_RULES: dict[str, Rule] = {
    "arange": _arange,
    "zeros": _filled(0.0),
    "ones": _filled(1.0),
    "new_ones": _filled(1.0),
    "full": _full,
    **{name: _elementwise(name) for name in _ELEMENTWISE},
    "not": _not,
    "where": _where,
    "masked_fill": _masked_fill,
    "cast": _same,
    "expand": _same,
    "reshape": _same,
    "getitem": _getitem,
    "unsqueeze": _unsqueeze,
    "tril": _triangle(upper=False),
    "triu": _triangle(upper=True),
}
