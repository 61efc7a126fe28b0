"""Masks a model computes from token positions, read back as IR predicates.

Models build causal and sliding-window masks in the graph from `arange` comparisons
(`kv_idx <= q_idx`, `tril(ones(P, M))`), then turn them into an additive mask with
`where(visible, 0, finfo.min)`. Evaluating that subgraph abstractly, with positions as
symbols, gives the predicate over key position m and query position p that the IR states as a
filter; the sparsity analysis can then skip the tiles it hides. Anything the subgraph reads
other than positions (a padding mask, a tensor of ids) makes the mask data, and it stays a
tensor.

Abstract values live on right-aligned dims: `Coord("r1")` varies along the last dim (the key
position once broadcast against the scores [B, H, P, M]), `Coord("r2")` along the one before
(the query position). Broadcasting aligns dims from the right, so right-aligned names survive
`expand` and implicit broadcasting unchanged.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import fx

from attncc.frontends.torch.graph_ops import example, node_op
from attncc.ir import Call, Const, Coord, Expr, index_symbol, substitute, walk

_HIDDEN = -1e30
"""An additive mask entry at or below this hides its key: finfo(float32).min is -3.4e38."""


class NotPositional(Exception):
    """The mask reads something other than positions; the message says what."""


@dataclass(frozen=True)
class Positional:
    """An integer or boolean expression over right-aligned dims, for a tensor of `ndim` dims.
    `lengths` records the arange behind each dim, to check it spans the whole dim."""

    expr: Expr
    ndim: int
    boolean: bool
    lengths: frozenset[tuple[int, int]] = frozenset()


_TRUE = Positional(Const(1.0), 0, True)

_COMPARE = {"le": "le", "lt": "lt", "eq": "eq", "ne": "ne"}
_SWAPPED = {"ge": "le", "gt": "lt"}


def boolean_predicate(node: Any, query_len: int, key_len: int) -> Expr:
    """The predicate a boolean mask tensor computes (true where the key is visible), over m
    and p; raises NotPositional with the reason when it is data."""
    value = _evaluate(node)
    if not value.boolean:
        raise NotPositional(f"{_name(node)} is not a boolean mask")
    return _over_m_p(value, query_len, key_len)


def additive_predicate(node: Any, query_len: int, key_len: int) -> tuple[Expr, float]:
    """For an additive mask `where(visible, 0, fill)` with fill <= -1e30 (finfo.min or -inf):
    the visible predicate over m and p, and the fill. Raises NotPositional otherwise."""
    op = node_op(node) if isinstance(node, fx.Node) else None
    if op is None or op.name != "where":
        raise NotPositional(f"{_name(node)} is not where(condition, 0, -inf)")
    condition, visible, hidden = op.arg(0, "condition"), op.arg(1, "input"), op.arg(2, "other")
    if not _is_zero(visible) or not isinstance(hidden, int | float) or hidden > _HIDDEN:
        raise NotPositional(f"{_name(node)} is not where(condition, 0, -inf or finfo.min)")
    return boolean_predicate(condition, query_len, key_len), float(hidden)


def _over_m_p(value: Positional, query_len: int, key_len: int) -> Expr:
    names = {n.name for n in _coords(value.expr)}
    if names - {"r1", "r2"}:
        raise NotPositional("the mask varies along the batch or head dims")
    for axis, length in value.lengths:
        expected = {1: key_len, 2: query_len}[axis]
        if length != expected:
            raise NotPositional(
                f"an arange of length {length} indexes a dim of size {expected}: "
                "it is broadcast, not a position"
            )
    return substitute(value.expr, {"r1": index_symbol("m"), "r2": index_symbol("p")})


def _coords(expr: Expr) -> list[Coord]:
    return [n for n in walk(expr) if isinstance(n, Coord)]


def _name(node: Any) -> str:
    return node.name if isinstance(node, fx.Node) else repr(node)


def _is_zero(value: Any) -> bool:
    if isinstance(value, int | float):
        return value == 0
    op = node_op(value) if isinstance(value, fx.Node) else None
    return op is not None and op.name == "zeros"


def _evaluate(node: Any) -> Positional:
    if isinstance(node, bool):
        return _TRUE if node else Positional(Const(0.0), 0, True)
    if isinstance(node, int):
        return Positional(Const(float(node)), 0, False)
    if not isinstance(node, fx.Node):
        raise NotPositional(f"the mask reads {node!r}")
    op = node_op(node)
    if op is None:
        raise NotPositional(f"the mask reads {node.name} ({node.op} {node.target})")
    rule = _RULES.get(op.name)
    if rule is None:
        raise NotPositional(f"the mask computes {op.name} ({node.name}), not a position")
    return rule(node, op.args, op.kwargs)


def _arange(node: fx.Node, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Positional:
    bounds = [a for a in args if isinstance(a, int)]
    if len(bounds) != len(args) or not 1 <= len(bounds) <= 3:
        raise NotPositional(f"{node.name}: an arange with bounds that are not constants")
    start, end, step = (0, bounds[0], 1) if len(bounds) == 1 else (*bounds, 1)[:3]
    length = max(0, math.ceil((end - start) / step))
    position: Expr = Coord("r1")
    if step != 1:
        position = Call("mul", (position, Const(float(step))))
    if start:
        position = Call("add", (position, Const(float(start))))
    return Positional(position, 1, False, frozenset({(1, length)}))


def _arithmetic(name: str) -> Any:
    def rule(node: fx.Node, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Positional:
        a, b = (_evaluate(x) for x in args[:2])
        if a.boolean or b.boolean:
            raise NotPositional(f"{node.name}: arithmetic on a boolean mask")
        if kwargs.get("alpha", 1) != 1:
            raise NotPositional(f"{node.name}: {name} with alpha")
        # Models offset positions by a cache length that is often 0: arange(n) + 0.
        if b.expr == Const(0.0) and name in ("add", "sub"):
            return replace(a, ndim=max(a.ndim, b.ndim))
        return _combine(name, a, b, boolean=False)

    return rule


def _comparison(name: str) -> Any:
    def rule(node: fx.Node, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Positional:
        a, b = (_evaluate(x) for x in args[:2])
        if name in _SWAPPED:
            return _combine(_SWAPPED[name], b, a, boolean=True)
        return _combine(_COMPARE[name], a, b, boolean=True)

    return rule


def _logical(name: str) -> Any:
    def rule(node: fx.Node, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Positional:
        values = [_evaluate(x) for x in args[: 1 if name == "not" else 2]]
        if not all(v.boolean for v in values):
            raise NotPositional(f"{node.name}: a logical operator on non-boolean values")
        if name == "not":
            (v,) = values
            return replace(v, expr=Call("not", (v.expr,)))
        a, b = values
        # HF starts its mask from new_ones(()) and ANDs conditions into it.
        if a.expr == _TRUE.expr and name == "and":
            return replace(b, ndim=max(a.ndim, b.ndim))
        if b.expr == _TRUE.expr and name == "and":
            return replace(a, ndim=max(a.ndim, b.ndim))
        return _combine(name, a, b, boolean=True)

    return rule


def _combine(name: str, a: Positional, b: Positional, *, boolean: bool) -> Positional:
    return Positional(
        Call(name, (a.expr, b.expr)), max(a.ndim, b.ndim), boolean, a.lengths | b.lengths
    )


def _passthrough(node: fx.Node, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Positional:
    value = _evaluate(args[0])
    targets = [*args[1:], *kwargs.values()]
    dtypes = [t for t in targets if isinstance(t, torch.dtype)]
    if any(d is not torch.bool for d in dtypes) and value.boolean:
        raise NotPositional(f"{node.name}: a boolean mask converted to numbers")
    return value


def _expand(node: fx.Node, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Positional:
    value = _evaluate(args[0])
    sizes = args[1] if len(args) == 2 and isinstance(args[1], tuple | list) else args[1:]
    return replace(value, ndim=max(value.ndim, len(sizes)))


def _getitem(node: fx.Node, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Positional:
    value = _evaluate(args[0])
    index = args[1] if isinstance(args[1], tuple) else (args[1],)
    whole = slice(None, None, None)
    if any(i not in (None, Ellipsis) and i != whole for i in index):
        raise NotPositional(f"{node.name}: indexing a mask other than by None and ':'")
    if index.count(Ellipsis) > 1:
        raise NotPositional(f"{node.name}: more than one '...'")
    consumed = sum(1 for i in index if i is not None and i is not Ellipsis)
    if Ellipsis in index:
        at = index.index(Ellipsis)
        index = (*index[:at], *([whole] * (value.ndim - consumed)), *index[at + 1 :])
    else:
        index = (*index, *([whole] * (value.ndim - consumed)))
    kept = [position for position, i in enumerate(index) if i is not None]
    return _moved(value, [len(index) - position for position in kept], len(index))


def _unsqueeze(node: fx.Node, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Positional:
    value = _evaluate(args[0])
    dim = args[1] if len(args) > 1 else kwargs["dim"]
    ndim = value.ndim + 1
    dim = dim % ndim
    kept = [position for position in range(ndim) if position != dim]
    return _moved(value, [ndim - position for position in kept], ndim)


def _moved(value: Positional, new_axes: list[int], ndim: int) -> Positional:
    """`value` with its dims (left to right) now at right-aligned `new_axes` of `ndim`."""
    old_axes = [value.ndim - position for position in range(value.ndim)]
    moves = dict(zip(old_axes, new_axes, strict=True))
    renamed = substitute(
        value.expr, {f"r{old}": index_symbol(f"r{new}") for old, new in moves.items()}
    )
    lengths = frozenset((moves[axis], length) for axis, length in value.lengths)
    return Positional(renamed, ndim, value.boolean, lengths)


def _ones(node: fx.Node, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Positional:
    if kwargs.get("dtype") is not torch.bool:
        raise NotPositional(f"{node.name}: ones that are not booleans")
    value = example(node)
    return replace(_TRUE, ndim=value.dim() if value is not None else 0)


def _triangle(upper: bool) -> Any:
    def rule(node: fx.Node, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Positional:
        value = _evaluate(args[0])
        diagonal = args[1] if len(args) > 1 else kwargs.get("diagonal", 0)
        if not value.boolean or not isinstance(diagonal, int):
            raise NotPositional(f"{node.name}: tril/triu of a non-boolean mask")
        # tril keeps key <= query + diagonal; triu keeps key >= query + diagonal.
        query: Expr = Coord("r2")
        if diagonal:
            query = Call("add", (query, Const(float(diagonal))))
        band = Call("le", (query, Coord("r1")) if upper else (Coord("r1"), query))
        kept = band if value.expr == _TRUE.expr else Call("and", (value.expr, band))
        return replace(value, expr=kept, ndim=max(value.ndim, 2))

    return rule


_RULES: dict[str, Any] = {
    "arange": _arange,
    "add": _arithmetic("add"),
    "sub": _arithmetic("sub"),
    "mul": _arithmetic("mul"),
    **{name: _comparison(name) for name in (*_COMPARE, *_SWAPPED)},
    "and": _logical("and"),
    "or": _logical("or"),
    "not": _logical("not"),
    "cast": _passthrough,
    "expand": _expand,
    "getitem": _getitem,
    "unsqueeze": _unsqueeze,
    "new_ones": _ones,
    "ones": _ones,
    "tril": _triangle(upper=False),
    "triu": _triangle(upper=True),
}
