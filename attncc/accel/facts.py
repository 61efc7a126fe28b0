"""What the accelerator model reads from a cascade, computed once per cascade from the analyses.

The roles of its ranks (the key rank whose traversals the pass analysis counts, the query rank
the arrays spread over, the instance ranks such as batch and heads that only repeat the work),
each Einsum's operation counts from the cost analysis (compiled to plain functions of the
sizes, so that a sweep evaluates thousands of points without sympy), the pass each Einsum runs
in over the key traversal (the outer rank of a partition: the traversal that goes to memory),
the footprint of each pass, and each tensor's size. Nothing here depends on an architecture.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import sympy

from attncc.analysis import (
    LiveKind,
    RankPasses,
    analyze_passes,
    cascade_cost,
    count_passes,
    footprint,
)
from attncc.analysis.block_sparse import density_symbol
from attncc.analysis.cost import OP_KINDS, points, tensor_elements
from attncc.errors import AnalysisError
from attncc.ir import Access, Call, Cascade, Einsum, indices_used, walk


class Formula:
    """A sympy expression of sizes, compiled once and called with a mapping of sizes."""

    __slots__ = ("expr", "fn", "names")

    def __init__(self, expr: sympy.Expr) -> None:
        self.expr = sympy.sympify(expr)
        symbols = sorted(self.expr.free_symbols, key=lambda s: s.name)
        self.names = tuple(s.name for s in symbols)
        self.fn: Callable[..., float] = sympy.lambdify(symbols, self.expr, modules="math")

    def __call__(self, sizes: Mapping[str, float]) -> float:
        missing = [n for n in self.names if n not in sizes]
        if missing:
            raise AnalysisError(f"no size for {', '.join(missing)} in {self.expr}")
        return float(self.fn(*(sizes[n] for n in self.names)))


@dataclass(frozen=True)
class Roles:
    """`key`: the rank softmax reduces over (M); `outer`/`inner`: its tile ranks when
    partitioned (M1, M0), else both None; `query`: the rank of independent rows (P);
    `instances`: ranks that only repeat the problem (B, H)."""

    key: str
    outer: str | None
    inner: str | None
    query: str
    instances: tuple[str, ...]


@dataclass(frozen=True)
class EinsumFacts:
    """`sparse`: the density symbols (`density_S`) of the block-sparse declarations whose key
    tiles and queries the Einsum iterates: each hides tiles from it, as the cost analysis
    counts (the product of their densities)."""

    name: str
    space: frozenset[str]
    ops: tuple[tuple[str, Formula], ...]
    reads: tuple[str, ...]
    pass_number: int | None
    sparse: tuple[str, ...]

    def kinds(self) -> set[str]:
        return {kind for kind, _ in self.ops}


@dataclass(frozen=True)
class LiveFacts:
    """A value pass `pass_number` holds: `per_row` elements for each query row (a fiber: its
    length), read in that pass by `readers` (a running value: by its own update)."""

    tensor: str
    kind: LiveKind
    pass_number: int
    per_row: Formula
    readers: tuple[str, ...]


@dataclass(frozen=True)
class CascadeFacts:
    cascade: Cascade
    roles: Roles
    einsums: tuple[EinsumFacts, ...]
    live: tuple[LiveFacts, ...]
    tensors: tuple[tuple[str, Formula], ...]
    views: tuple[tuple[str, str], ...]
    tensor_indices: tuple[tuple[str, frozenset[str]], ...]

    def einsum(self, name: str) -> EinsumFacts:
        return next(e for e in self.einsums if e.name == name)

    def elements(self, tensor: str) -> Formula:
        return dict(self.tensors)[tensor]

    def indices(self, tensor: str) -> frozenset[str]:
        return dict(self.tensor_indices)[tensor]

    def source(self, tensor: str) -> str:
        """The input a view reads (BK -> K); any other tensor is its own source."""
        return dict(self.views).get(tensor, tensor)


@functools.lru_cache(maxsize=64)
def cascade_facts(
    cascade: Cascade, key: str | None = None, query: str | None = None
) -> CascadeFacts:
    """The facts of `cascade`; `key` and `query` override the rank roles it would infer."""
    roles = infer_roles(cascade, key, query)
    if roles.outer is not None:
        passes = count_passes(cascade, roles.outer, parent=roles.key, level="outer")
    else:
        passes = count_passes(cascade, roles.key)
    cost = {c.einsum: c for c in cascade_cost(cascade).einsums}
    einsums = tuple(
        _einsum_facts(cascade, e, dict(cost[e.tensor].ops), passes) for e in cascade.einsums
    )
    names = [d.name for d in cascade.inputs + cascade.outputs] + [e.tensor for e in cascade.einsums]
    tensors, indices = [], []
    for name in dict.fromkeys(names):
        decl = cascade.declaration(name)
        assert decl is not None, "verified cascades declare every tensor they use"
        tensors.append(
            (name, Formula(_scaled(cascade, decl.ranks, tensor_elements(cascade, decl))))
        )
        indices.append((name, frozenset(r.lower() for r in decl.ranks)))
    return CascadeFacts(
        cascade,
        roles,
        einsums,
        _live(cascade, roles, passes),
        tuple(tensors),
        tuple(_views(cascade)),
        tuple(indices),
    )


def _einsum_facts(
    cascade: Cascade, einsum: Einsum, counts: dict[str, sympy.Expr], passes: RankPasses
) -> EinsumFacts:
    """The cost analysis's `counts` as the hardware runs them, and what the model needs."""
    for kind, change in _hardware_ops(cascade, einsum).items():
        counts[kind] = counts.get(kind, sympy.Integer(0)) + change
    ops = tuple(
        (kind, Formula(sympy.expand(count)))
        for kind, count in sorted(counts.items())
        if sympy.expand(count) != 0
    )
    reads = tuple(dict.fromkeys(a.tensor for a in einsum.read_accesses()))
    sparse = tuple(
        density_symbol(s).name
        for s in cascade.sparse
        if {s.key_tile_index, s.query_index} <= einsum.space
    )
    number = passes.placement(einsum.tensor).pass_number
    return EinsumFacts(einsum.tensor, einsum.space, ops, reads, number, sparse)


def infer_roles(cascade: Cascade, key: str | None = None, query: str | None = None) -> Roles:
    part = next((p for p in cascade.partitions if key in (None, p.rank)), None)
    if key is None:
        key = part.rank if part is not None else _traversed_rank(cascade)
    elif cascade.rank(key) is None:
        raise AnalysisError(f"key rank {key} is not a rank of {cascade.name}")
    if query is None:
        query = _query_rank(cascade, key)
    elif cascade.rank(query) is None:
        raise AnalysisError(f"query rank {query} is not a rank of {cascade.name}")
    with_query = [d for d in cascade.inputs if query in d.ranks]
    output = cascade.outputs[0].ranks if cascade.outputs else ()
    instances = tuple(
        r for r in output if r != query and all(r in d.ranks for d in with_query) and with_query
    )
    outer, inner = (part.outer, part.inner) if part is not None else (None, None)
    return Roles(key, outer, inner, query, instances)


def _traversed_rank(cascade: Cascade) -> str:
    """The rank with the most passes; ties go to the rank more Einsums iterate."""
    counts = analyze_passes(cascade)
    if not counts:
        raise AnalysisError(f"{cascade.name} reduces over no rank: no key rank to map")

    def iterated(name: str) -> int:
        return sum(name.lower() in e.space for e in cascade.einsums)

    return max(counts, key=lambda p: (p.passes, iterated(p.rank))).rank


def _query_rank(cascade: Cascade, key: str) -> str:
    """The sparse mask's query rank; else an output rank that no key-indexed input has (not
    F of V[f,m], nor the batch and heads K shares), iterated by the most key-iterating
    Einsums, the last in the output's layout on a tie."""
    if cascade.sparse:
        return cascade.sparse[0].query
    keyed = {r for d in cascade.inputs if key in d.ranks for r in d.ranks}
    indices = {key.lower()} | {p.outer.lower() for p in cascade.partitions if p.rank == key}
    over_key = [e for e in cascade.einsums if indices & e.space]
    candidates = [r for d in cascade.outputs for r in d.ranks if r not in keyed]
    if not candidates:
        raise AnalysisError(
            f"{cascade.name}: no output rank is free of the key rank's inputs; name the query "
            "rank in the mapping (ranks: {query: P})"
        )
    return max(
        dict.fromkeys(candidates),
        key=lambda r: (sum(r.lower() in e.space for e in over_key), candidates.index(r)),
    )


def _scaled(cascade: Cascade, ranks: tuple[str, ...], elements: sympy.Expr) -> sympy.Expr:
    """Elements of a tensor over key tiles and queries that a block-sparse loop writes."""
    for sparse in cascade.sparse:
        if sparse.key_tiles in ranks and sparse.query in ranks:
            elements *= density_symbol(sparse)
    return elements


def _hardware_ops(cascade: Cascade, einsum: Einsum) -> dict[str, sympy.Expr]:
    """Changes to the cost analysis's counts for hardware: map operators over no index and no
    tensor (rsqrt(E)) are constants, folded before the hardware runs; a mask over coordinates
    only (m1*M0 + m0 <= p) is one comparison per point, made on the coordinates the PE's loop
    counters hold, not arithmetic on data (its additions and `and`s are address logic)."""
    change: dict[str, sympy.Expr] = {}

    def drop(node: Call) -> None:
        kind = OP_KINDS[node.op]
        change[kind] = change.get(kind, sympy.Integer(0)) - points(cascade, indices_used(node))

    for part in einsum.parts():
        for node in walk(part):
            reads = any(isinstance(n, Access) for n in walk(node))
            if isinstance(node, Call) and not indices_used(node) and not reads:
                drop(node)
    predicate = einsum.filter.predicate if einsum.filter is not None else None
    if predicate is not None and not any(isinstance(n, Access) for n in walk(predicate)):
        for node in walk(predicate):
            if isinstance(node, Call) and indices_used(node):
                drop(node)
        compare = change.get("compare", sympy.Integer(0))
        change["compare"] = compare + points(cascade, indices_used(predicate))
    share = sympy.Integer(1)
    for sparse in cascade.sparse:
        if {sparse.key_tile_index, sparse.query_index} <= einsum.space:
            share *= density_symbol(sparse)
    return {kind: sympy.expand(share * value) for kind, value in change.items()}


def _views(cascade: Cascade) -> list[tuple[str, str]]:
    """`BK[e,m1,m0] = K[e,m1*M0+m0]`: re-indexed inputs, which are loads, not work."""
    inputs = cascade.input_names()
    return [
        (e.tensor, e.expr.tensor)
        for e in cascade.einsums
        if isinstance(e.expr, Access) and e.expr.tensor in inputs and e.filter is None
    ]


def _live(cascade: Cascade, roles: Roles, passes: RankPasses) -> tuple[LiveFacts, ...]:
    """Per-pass live values over the key traversal, with their size per query row (the
    query rank at 1; instance ranks stay, the model evaluates them at one instance's sizes)."""
    found = []
    for pass_footprint in footprint(cascade, passes).passes:
        number = pass_footprint.pass_number
        in_pass = [e for e in cascade.einsums if passes.placement(e.tensor).pass_number == number]
        for live in pass_footprint.live:
            if live.kind is LiveKind.RUNNING:
                readers: tuple[str, ...] = (live.tensor,)
            else:
                readers = tuple(e.tensor for e in in_pass if live.tensor in e.reads)
            ones = {s: 1 for s in live.elements.free_symbols if s.name == roles.query}
            found.append(
                LiveFacts(
                    live.tensor,
                    live.kind,
                    number,
                    Formula(live.elements.subs(ones)),
                    readers,
                )
            )
    return tuple(found)
