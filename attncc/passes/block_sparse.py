"""block-sparse: skip the tiles a mask hides entirely (`sparse S[m1, p // T]`).

A masked Einsum S over a partitioned key rank (m = m1*M0 + m0) and a query index p makes some
(key tile, query tile) pairs EMPTY: S is its fill there. The pass declares S's tiles skippable,
which lets the interpreter and the backends loop over non-empty tiles only, after proving that
skipping changes nothing: at an EMPTY tile every Einsum over m1 and p is evaluated
symbolically (sympy, with S at its fill and each running value r an unknown, finite or at its
infinite initial value) and every running update must give back r, every reduction over m1
its identity. In FlashAttention's cascade that is max(r, -inf) = r, exp(-inf - r) = 0,
0 * V = 0 and exp(r - r) = 1. The mask may also read tables at S's other left-side indices
(b, h of MoH's `HW[b,h,p] != 0`): its tiles are then classified per grid point.

Rows that see no key at all divide 0 by 0 at the end; the pass makes them 0 (FlexAttention's
convention, and what a loop over no tiles yields) by guarding divisions by a running sum
that starts at 0. The original result there is NaN, so this only defines what was undefined.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace

import sympy

from attncc.analysis import query_index
from attncc.analysis.block_sparse import mask_grid, sparse_mask
from attncc.analysis.sparsity import check_classifiable
from attncc.errors import AnalysisError, PassError
from attncc.ir import (
    Access,
    BlockSparse,
    Call,
    Cascade,
    Const,
    Coord,
    Einsum,
    Expr,
    Partition,
    ReduceOp,
    Size,
    index_symbol,
    indices_used,
    map_expressions,
    size_symbol,
    walk,
)
from attncc.passes.base import CascadePass, PassResult
from attncc.passes.folding import EXACT_OPS, exact_number
from attncc.passes.registry import register


@register
@dataclass(frozen=True)
class BlockSparsePass(CascadePass):
    """Options: `query_tile` (queries per tile, default 64) and `tensor`, the masked Einsum
    (default: the one masked Einsum over a partitioned key rank)."""

    name = "block-sparse"
    query_tile: int = 64
    tensor: str | None = None

    def apply(self, cascade: Cascade) -> PassResult:
        if self.query_tile < 1:
            raise PassError(f"block-sparse: query_tile must be positive, got {self.query_tile}")
        candidates = [
            (e, part, query)
            for e in cascade.einsums
            if self.tensor in (None, e.tensor)
            for part, query in _mask_frame(cascade, e)
        ]
        if self.tensor is not None and cascade.writer(self.tensor) is None:
            raise PassError(f"block-sparse: no Einsum writes {self.tensor}")
        if not candidates:
            return PassResult(cascade, ("no mask over a partitioned key rank and one query",))
        declared = {s.tensor for s in cascade.sparse}
        if all(masked.tensor in declared for masked, _, _ in candidates):
            return PassResult(cascade, (f"{', '.join(sorted(declared))} already block-sparse",))
        candidates = [c for c in candidates if c[0].tensor not in declared]
        refusals = []
        for masked, part, query in candidates:
            sparse, reason = self._declaration(cascade, masked, part, query)
            if sparse is None:
                refusals.append(f"{masked.tensor} kept dense: {reason}")
                continue
            rewritten, guarded = _guard_empty_rows(cascade, part.outer.lower(), query)
            remarks = [f"{masked.tensor} skips EMPTY tiles of {part.outer} x {self.query_tile}"]
            remarks += [f"{name}: rows with no visible key give 0" for name in guarded]
            result = replace(rewritten, sparse=(*cascade.sparse, sparse))
            return PassResult(result, (*refusals, *remarks))
        return PassResult(cascade, tuple(refusals))

    def _declaration(
        self, cascade: Cascade, masked: Einsum, part: Partition, query: str
    ) -> tuple[BlockSparse | None, str]:
        """The `sparse` line for `masked`'s tiles, or None and why skipping is not safe."""
        reason = _skipping_changes_results(cascade, masked, part, query)
        if reason is not None:
            return None, reason
        query_rank = cascade.rank_of_index(query)
        assert query_rank is not None, "verified cascades index declared ranks"
        sparse = BlockSparse(
            masked.tensor, part.outer, query_rank.name, sympy.Integer(self.query_tile)
        )
        reason = _unclassifiable(cascade, sparse)
        return (None, reason) if reason is not None else (sparse, "")


def _unclassifiable(cascade: Cascade, sparse: BlockSparse) -> str | None:
    """Why the tiles of `sparse` could not be classified when the cascade runs, if so."""
    sizes = {r.name: int(r.size) for r in cascade.all_ranks() if r.size.is_Integer}
    predicate, key, query = sparse_mask(cascade, sparse)
    try:
        check_classifiable(
            predicate, key=key, query=query, sizes=sizes, grid=mask_grid(cascade, sparse)
        )
    except AnalysisError as error:
        return str(error)
    return None


def _mask_frame(cascade: Cascade, einsum: Einsum) -> list[tuple[Partition, str]]:
    """(key partition, query index) for a filtered `einsum` over both tile indices of a key
    partition: the query is the one left-side index the key-side operands (those reading the
    tiles) lack, p of QK[b,h,m1,m0,p]; where every operand reads it too (modified scores
    S = QK + BIAS[b,h,p,m1,m0]), the cascade's query (the last index of its first output).
    The filter may read the tiles, the query and other left-side indices (the grid: b, h of
    `HW[b,h,p] != 0`), nothing reduced."""
    if einsum.filter is None:
        return []
    written = einsum.lhs_vars
    if not indices_used(einsum.filter.predicate) <= written:
        return []
    frames = []
    for part in cascade.partitions:
        tiles = {part.outer.lower(), part.inner.lower()}
        if not tiles <= written:
            continue
        operands = [a for a in walk(einsum.expr) if isinstance(a, Access)]
        key_side = set().union(*(_names_read(a) for a in operands if tiles & _names_read(a)))
        queries = written - tiles - key_side
        if len(queries) != 1:
            query = query_index(cascade)
            queries = frozenset({query} if query in written - tiles else ())
        if len(queries) == 1:
            frames.append((part, next(iter(queries))))
    return frames


def _names_read(access: Access) -> set[str]:
    return set().union(*(_names(i) for i in access.indices))


_REAL = {"real": True, "finite": True}


def _skipping_changes_results(
    cascade: Cascade, masked: Einsum, part: Partition, query: str
) -> str | None:
    """None when skipping an EMPTY tile leaves every result as it was; else why not."""
    outer = part.outer.lower()
    body = [e for e in cascade.einsums if {outer, query} <= e.space]
    running = [e for e in body if e.iterative_index == outer]
    if any(e.iterative_index not in (None, outer) for e in body):
        return f"a running update over another rank iterates over {outer} and {query}"
    choices = []
    for update in running:
        unknown = sympy.Symbol(f"r_{update.tensor}", **_REAL)
        start = _constant(update.init)
        infinite = [exact_number(start)] if start is not None and math.isinf(start) else []
        choices.append([(update.tensor, value) for value in (unknown, *infinite)])
    for assumption in itertools.product(*choices):
        state = dict(assumption)
        reason = _check_tile(body, masked, outer, query, state)
        if reason is not None:
            return reason
    return _read_after_loop(cascade, body, outer, query)


def _check_tile(
    body: list[Einsum], masked: Einsum, outer: str, query: str, state: dict[str, sympy.Expr]
) -> str | None:
    values: dict[str, sympy.Expr] = dict(state)
    values[masked.tensor] = exact_number(_masked_value(masked))
    for einsum in body:
        if einsum is masked:
            continue
        if einsum.filter is not None:
            return f"{einsum.tensor} has a filter of its own"
        value = _value(einsum, values, outer, query)
        if einsum.tensor in state and einsum.reduce is ReduceOp.SUM:
            # A sum adds the previous value once per reduced point: no longer a carry.
            return f"{einsum.tensor} sums its previous value over {', '.join(einsum.reduced)}"
        if einsum.tensor in state:
            before = state[einsum.tensor]
            if not _equal(value, before):
                return f"{einsum.tensor} changes at a tile its mask hides ({before} -> {value})"
            continue
        if einsum.reduced & {outer, query}:
            # A total over tiles or queries: the hidden tile must add nothing to it, and
            # readers see the total (an unknown), not this tile's part.
            identity = _IDENTITY[einsum.reduce or ReduceOp.SUM]
            if not _equal(value, identity):
                return f"{einsum.tensor} adds {value}, not {identity}, for a hidden tile"
            continue
        values[einsum.tensor] = _reduced(einsum, value)
    return None


def _read_after_loop(cascade: Cascade, body: list[Einsum], outer: str, query: str) -> str | None:
    """Outside the tile loop only totals (over the key tiles or the queries, to which hidden
    tiles add nothing) and final running values may be read: the values of single hidden
    tiles are never computed."""
    running = {e.tensor for e in body if e.iterative_index == outer}
    totals = {e.tensor for e in body if e.reduced & {outer, query}}
    per_tile = {e.tensor for e in body} - totals
    final = size_symbol(outer.upper())
    for einsum in cascade.einsums:
        if einsum in body:
            continue
        for access in einsum.read_accesses():
            if access.tensor in per_tile and not (
                access.tensor in running and final in access.indices
            ):
                return f"{einsum.tensor} reads {access.tensor} of single tiles outside the loop"
    return None


_IDENTITY = {ReduceOp.SUM: sympy.Integer(0), ReduceOp.MAX: -sympy.oo, ReduceOp.MIN: sympy.oo}


def _masked_value(masked: Einsum) -> float:
    """What a fully masked output point holds: the fill, else the reduction's identity, else 0."""
    assert masked.filter is not None, "the masked Einsum has a filter"
    if masked.filter.fill is not None:
        return masked.filter.fill
    return {None: 0.0, ReduceOp.SUM: 0.0, ReduceOp.MAX: -math.inf, ReduceOp.MIN: math.inf}[
        masked.reduce
    ]


def _equal(value: sympy.Expr, expected: sympy.Expr) -> bool:
    if expected.is_infinite:
        return bool(value == expected)
    return bool(sympy.simplify(value - expected) == 0)


def _reduced(einsum: Einsum, value: sympy.Expr) -> sympy.Expr:
    """An output's value from its per-point value: a constant survives max/min and a zero
    survives sums; anything else is some unknown value."""
    if einsum.reduce is None or (value.is_constant() and einsum.reduce is not ReduceOp.SUM):
        return value
    if value.is_zero:
        return value
    return sympy.Symbol(f"t_{einsum.tensor}", **_REAL)


def _value(einsum: Einsum, values: Mapping[str, sympy.Expr], outer: str, query: str) -> sympy.Expr:
    """`einsum`'s value at a point of a hidden tile. Reads of that same point (indexed by
    plain index variables, the key tile as m1, or m1 + 1 for a running value) take the tile's
    values; any other read (another tile, a shifted query, a final value) is unknown."""
    tile = index_symbol(outer)

    def access(node: Access) -> sympy.Expr:
        plain = all(i.is_Symbol or i == tile + 1 for i in node.indices)
        same_point = plain and (tile in node.indices or tile + 1 in node.indices)
        if node.tensor in values and same_point:
            return values[node.tensor]
        return sympy.Symbol(f"x_{node.tensor}", **_REAL)

    return _symbolic(einsum.expr, access)


def _symbolic(expr: Expr, access: Callable[[Access], sympy.Expr]) -> sympy.Expr:
    if isinstance(expr, Const):
        return exact_number(expr.value)
    if isinstance(expr, Coord):
        return sympy.Symbol(expr.name, integer=True)
    if isinstance(expr, Size):
        return sympy.Symbol(expr.rank, positive=True, integer=True)
    if isinstance(expr, Access):
        return access(expr)
    assert isinstance(expr, Call)
    args = [_symbolic(a, access) for a in expr.args]
    return EXACT_OPS[expr.op](*args)


def _constant(expr: Expr | None) -> float | None:
    if isinstance(expr, Const):
        return expr.value
    if isinstance(expr, Call) and expr.op == "neg" and isinstance(expr.args[0], Const):
        return -expr.args[0].value
    return None


def _guard_empty_rows(cascade: Cascade, outer: str, query: str) -> tuple[Cascade, list[str]]:
    """Divisions by the final value of a running sum that starts at 0, outside the tile loop,
    become `select(d == 0, 0, n / d)`."""
    sums = {
        e.tensor
        for e in cascade.einsums
        if e.iterative_index == outer and _constant(e.init) == 0 and query in e.space
    }
    guarded: list[str] = []

    def guard(expr: Expr) -> Expr:
        if not isinstance(expr, Call):
            return expr
        args = tuple(guard(a) for a in expr.args)
        if expr.op == "div" and _reads_final(args[1], sums, outer):
            # Only 0/0 (no key seen) becomes 0; n/0 with n != 0 keeps its infinity.
            zero = Const(0.0)
            nothing = Call("and", (Call("eq", (args[1], zero)), Call("eq", (args[0], zero))))
            return Call("select", (nothing, zero, Call("div", args)))
        return Call(expr.op, args)

    einsums = []
    for einsum in cascade.einsums:
        if outer in einsum.space:
            einsums.append(einsum)
            continue
        rewritten = map_expressions(einsum, guard)
        if rewritten != einsum:
            guarded.append(einsum.tensor)
        einsums.append(rewritten)
    return replace(cascade, einsums=tuple(einsums)), guarded


def _reads_final(expr: Expr, sums: set[str], outer: str) -> bool:
    """Whether `expr` reads one of `sums` after its last tile (at the size of its rank)."""
    return any(
        isinstance(node, Access)
        and node.tensor in sums
        and any(_names(i) == {outer.upper()} for i in node.indices)
        for node in walk(expr)
    )


def _names(index: sympy.Expr) -> set[str]:
    return {symbol.name for symbol in index.free_symbols}
