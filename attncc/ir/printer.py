"""The text form of a cascade: `print_cascade` writes what `parse` reads back to an equal cascade.

The syntax follows the FuseMax paper (see docs/ir.md): one Einsum per line, sums implicit,
other reductions as a prefix (`GM[p] = max(m) QK[m,p]`), filters as a `where` clause, and the
initial value of a running update as its own line written at coordinate 0 (`RM[0,p] = -inf`).
"""

from __future__ import annotations

import math

import sympy

from attncc.ir.cascade import BlockSparse, Cascade, Partition, Rank, TensorDecl
from attncc.ir.einsum import Einsum, ReduceOp
from attncc.ir.expr import OPS, Access, Call, Const, Coord, Expr, Size
from attncc.ir.indexing import format_index, index_name, index_symbol
from attncc.ir.parser import format_access, reduction_prefix

_ATOM = 100


def format_number(value: float) -> str:
    """Shortest text that reads back to exactly `value`."""
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    if value.is_integer() and abs(value) < 1e15:
        text = str(int(value))
        return "-0" if text == "0" and math.copysign(1.0, value) < 0 else text
    return repr(value)


def format_expr(expr: Expr) -> str:
    return _format(expr)[0]


def _format(expr: Expr) -> tuple[str, int]:
    """Text of `expr` and the binding strength of its outermost operator."""
    if isinstance(expr, Access):
        return format_access(expr), _ATOM
    if isinstance(expr, Const):
        text = format_number(expr.value)
        return text, OPS["neg"].precedence if text.startswith("-") else _ATOM
    if isinstance(expr, Coord):
        return expr.name, _ATOM
    if isinstance(expr, Size):
        return expr.rank, _ATOM
    return _format_call(expr)


def _format_call(call: Call) -> tuple[str, int]:
    info = OPS[call.op]
    if info.symbol is None or (call.op == "neg" and isinstance(call.args[0], Const)):
        # neg of a literal is spelled as a call: '-1' reads back as the constant -1.
        return f"{call.op}({', '.join(format_expr(a) for a in call.args)})", _ATOM
    if info.arity == 1:
        text, strength = _format(call.args[0])
        operand = text if strength >= info.precedence else f"({text})"
        separator = " " if info.symbol.isalpha() else ""
        return f"{info.symbol}{separator}{operand}", info.precedence
    (left, left_strength), (right, right_strength) = (_format(a) for a in call.args)
    comparison = info.precedence == OPS["eq"].precedence
    # Infix operators group to the left; comparisons do not chain.
    if left_strength < info.precedence or (comparison and left_strength == info.precedence):
        left = f"({left})"
    if right_strength <= info.precedence:
        right = f"({right})"
    return f"{left} {info.symbol} {right}", info.precedence


def _guarded(body: str) -> str:
    """A right side without a reduction: a leading map max(a, b) of coordinates must not read
    back as a reduction prefix."""
    return f"({body})" if reduction_prefix().match(body) else body


def format_einsum(einsum: Einsum) -> str:
    """One Einsum as text; a running update is preceded by its initial-value line."""
    lines = []
    if einsum.init is not None:
        start = format_access(Access(einsum.tensor, einsum.init_indices))
        lines.append(f"{start} = {_guarded(format_expr(einsum.init))}")
    body = format_expr(einsum.expr)
    if einsum.reduce is not None and einsum.reduce is not ReduceOp.SUM:
        body = f"{einsum.reduce.value}({', '.join(sorted(einsum.reduced))}) {body}"
    else:
        body = _guarded(body)
    if einsum.filter is not None:
        body += f" where {format_expr(einsum.filter.predicate)}"
        if einsum.filter.fill is not None:
            body += f" else {format_number(einsum.filter.fill)}"
    lines.append(f"{format_access(einsum.output)} = {body}")
    return "\n".join(lines)


def _format_rank(rank: Rank) -> str:
    if rank.size.is_Symbol and rank.size.name == rank.name:
        return rank.name
    return f"{rank.name} = {format_index(rank.size)}"


def _format_partition(part: Partition) -> str:
    return f"partition {part.rank} -> {part.outer}, {part.inner}"


def _format_decl(decl: TensorDecl) -> str:
    indices = ",".join(index_name(r) for r in decl.ranks)
    dtype = f" : {decl.dtype.value}" if decl.dtype is not None else ""
    return f"{decl.role.value} {decl.name}[{indices}]{dtype}"


def _format_sparse(sparse: BlockSparse) -> str:
    query = format_index(sympy.floor(index_symbol(sparse.query_index) / sparse.query_tile))
    return f"sparse {sparse.tensor}[{sparse.key_tile_index},{query}]"


def print_cascade(cascade: Cascade) -> str:
    lines = [f"cascade {cascade.name}"]
    if cascade.ranks:
        lines.append("rank " + ", ".join(_format_rank(r) for r in cascade.ranks))
    lines += [_format_partition(p) for p in cascade.partitions]
    lines += [_format_decl(d) for d in cascade.inputs + cascade.outputs]
    lines += [_format_sparse(s) for s in cascade.sparse]
    lines.append("")
    lines += [format_einsum(e) for e in cascade.einsums]
    return "\n".join(lines) + "\n"
