"""The verifier: every rule a cascade must follow before anything else may look at it.

It checks, and reports every violation it finds (not just the first):
- names: no tensor and no index variable is a keyword of the text form (`inf`, `where`, ...);
- ranks: names unique; a size is a positive integer or a finite expression of other declared
  ranks' sizes (no index variables, no circular definitions); partitions split a declared rank
  by a declared inner rank into a new outer rank;
- declarations: at least one output; tensor names unique; every rank they use is declared,
  once per tensor;
- each Einsum: it writes neither an input nor a tensor written before; its left side indexes
  each rank with a variable `r` or, for a running update, `r + 1`; every left-side variable
  appears on the right; every index variable and size belongs to a declared rank; every access
  names a declared tensor, has one index per rank, is quasi-affine, and does not address one rank
  with another rank's variable; indices missing on the left have a reduce operator and a reduce
  operator has something to reduce; a running update has an initial value and only a running
  update has one, and it does not run over a partition's inner rank; the initial value uses
  only the left side's other variables;
- outputs: each is written, by an Einsum whose left side has the declared ranks;
- block sparsity (`sparse S[m1, p // T]`): S is written by an Einsum with a filter whose
  iteration space holds m1, the inner index of m1's partition and p; the filter reads no other
  index but S's other left-side indices (grid indices: batch, head); T is a positive integer
  or a size;
- dependencies: no cycle, except running updates that read their previous iteration, and such
  a cycle runs over a single iterative rank.
Each diagnostic names the Einsum (with its source line when parsed), the tensor and the rank.
"""

from __future__ import annotations

from collections.abc import Iterator

import networkx as nx
import sympy

from attncc.errors import Diagnostic, SourceSpan, VerifyError
from attncc.ir.cascade import BlockSparse, Cascade
from attncc.ir.einsum import Einsum, iteration_successor
from attncc.ir.expr import Access, indices_used, sizes_used
from attncc.ir.graph import dependency_graph, uncarried
from attncc.ir.indexing import format_index, index_symbol, index_vars, is_quasi_affine, size_names
from attncc.ir.parser import keywords


def verify(cascade: Cascade) -> None:
    """Raise `VerifyError` listing every problem in `cascade`; return None when it is valid."""
    diagnostics = diagnose(cascade)
    if diagnostics:
        raise VerifyError(diagnostics)


def diagnose(cascade: Cascade) -> list[Diagnostic]:
    """Every problem in `cascade`, in source order."""
    found = [*_check_names_are_not_keywords(cascade), *_check_ranks(cascade)]
    found += _check_declarations(cascade)
    written: set[str] = set()
    for einsum in cascade.einsums:
        found.extend(_check_einsum(cascade, einsum, written))
        written.add(einsum.tensor)
    found.extend(_check_outputs(cascade))
    for sparse in cascade.sparse:
        found.extend(_check_sparse(cascade, sparse))
    if not found:
        found.extend(_check_dependencies(cascade))
    return found


def _check_names_are_not_keywords(cascade: Cascade) -> Iterator[Diagnostic]:
    reserved = keywords()
    for rank in cascade.all_ranks():
        if rank.index in reserved:
            yield Diagnostic(
                f"rank {rank.name} has index variable '{rank.index}', a keyword of the text form; "
                "rename the rank",
                rank.span,
                rank=rank.name,
            )
    tensors: list[tuple[str, SourceSpan | None, str | None]]
    tensors = [(d.name, d.span, None) for d in cascade.inputs + cascade.outputs]
    tensors += [(e.tensor, e.span, e.tensor) for e in cascade.einsums]
    for name, span, einsum in tensors:
        if name in reserved:
            yield Diagnostic(
                f"tensor name '{name}' is a keyword of the text form; rename the tensor",
                span,
                einsum=einsum,
                tensor=name,
            )


def _check_ranks(cascade: Cascade) -> Iterator[Diagnostic]:
    seen: set[str] = set()
    for rank in cascade.ranks:
        if rank.name in seen:
            yield Diagnostic(f"rank {rank.name} is declared twice", rank.span, rank=rank.name)
        seen.add(rank.name)
    for rank in cascade.ranks:
        for name in sorted(size_names(rank.size) - seen):
            yield Diagnostic(
                f"size of rank {rank.name} uses undeclared rank {name}", rank.span, rank=rank.name
            )
        if rank.size.is_number and not (rank.size.is_finite and rank.size > 0):
            yield Diagnostic(
                f"size of rank {rank.name} is {rank.size}; a size must be positive and finite",
                rank.span,
                rank=rank.name,
            )
        for name in sorted(index_vars(rank.size)):
            yield Diagnostic(
                f"size of rank {rank.name} uses index variable {name}; a size is an integer or "
                f"an expression of other ranks' sizes ({name.upper()})",
                rank.span,
                rank=rank.name,
            )
    yield from _check_size_cycles(cascade)
    for part in cascade.partitions:
        where = f"partition {part.rank} -> {part.outer}, {part.inner}"
        for name in (part.rank, part.inner):
            if name not in seen:
                yield Diagnostic(f"{where}: rank {name} is not declared", part.span, rank=name)
        if part.outer in seen:
            yield Diagnostic(
                f"{where}: outer rank {part.outer} is already declared; the partition declares it",
                part.span,
                rank=part.outer,
            )
        seen.add(part.outer)


def _check_size_cycles(cascade: Cascade) -> Iterator[Diagnostic]:
    uses = nx.DiGraph()
    for rank in cascade.ranks:
        uses.add_edges_from((rank.name, used) for used in size_names(rank.size) - {rank.name})
    spans = {r.name: r.span for r in cascade.ranks}
    for cycle in nx.simple_cycles(uses):
        yield Diagnostic(
            f"sizes of ranks {' -> '.join([*cycle, cycle[0]])} are defined in a circle",
            spans.get(cycle[0]),
            rank=cycle[0],
        )


def _check_declarations(cascade: Cascade) -> Iterator[Diagnostic]:
    if not cascade.outputs:
        yield Diagnostic(f"cascade {cascade.name} declares no output; add 'output NAME[...]'")
    seen: set[str] = set()
    for decl in cascade.inputs + cascade.outputs:
        if decl.name in seen:
            yield Diagnostic(f"tensor {decl.name} is declared twice", decl.span, tensor=decl.name)
        seen.add(decl.name)
        for rank in sorted({r for r in decl.ranks if decl.ranks.count(r) > 1}):
            yield Diagnostic(
                f"{decl.role.value} {decl.name} uses rank {rank} twice; a tensor has each rank "
                "once",
                decl.span,
                tensor=decl.name,
                rank=rank,
            )
        for rank in decl.ranks:
            if cascade.rank(rank) is None:
                yield Diagnostic(
                    f"{decl.role.value} {decl.name} uses undeclared rank {rank}",
                    decl.span,
                    tensor=decl.name,
                    rank=rank,
                )


def _diag(
    einsum: Einsum, message: str, tensor: str | None = None, rank: str | None = None
) -> Diagnostic:
    return Diagnostic(message, einsum.span, einsum=einsum.tensor, tensor=tensor, rank=rank)


def _check_einsum(cascade: Cascade, einsum: Einsum, written: set[str]) -> Iterator[Diagnostic]:
    name = einsum.tensor
    if name in cascade.input_names():
        yield _diag(einsum, f"writes input {name}; inputs are read-only", tensor=name)
    if name in written:
        yield _diag(einsum, f"tensor {name} is written twice; each tensor has one Einsum", name)
    yield from _check_left_side(cascade, einsum)
    yield from _check_names(cascade, einsum)
    for access in einsum.read_accesses():
        yield from _check_access(cascade, einsum, access)
    for var in sorted(einsum.lhs_vars - _right_side_vars(einsum)):
        yield _diag(
            einsum,
            f"index {var} appears on the left of {name} but not on the right",
            tensor=name,
            rank=_rank_name(cascade, var),
        )
    yield from _check_reduction(cascade, einsum)
    yield from _check_iteration(cascade, einsum)


def _right_side_vars(einsum: Einsum) -> frozenset[str]:
    used = indices_used(einsum.expr)
    if einsum.filter is not None:
        used |= indices_used(einsum.filter.predicate)
    return used


def _rank_name(cascade: Cascade, var: str) -> str | None:
    rank = cascade.rank_of_index(var)
    return rank.name if rank else None


def _check_left_side(cascade: Cascade, einsum: Einsum) -> Iterator[Diagnostic]:
    seen: set[str] = set()
    successors = 0
    tensor = einsum.tensor
    for index in einsum.indices:
        variables = index_vars(index)
        rank = _rank_name(cascade, min(variables)) if variables else None
        is_plain = isinstance(index, sympy.Symbol) and bool(variables)
        if iteration_successor(index) is not None:
            successors += 1
        elif not is_plain:
            yield _diag(
                einsum,
                f"left-side index '{format_index(index)}' of {tensor} must be an index "
                "variable (m) or, for a running update, its successor (m1+1)",
                tensor=tensor,
                rank=rank,
            )
        for var in sorted(variables & seen):
            yield _diag(
                einsum,
                f"index {var} appears twice on the left of {tensor}",
                tensor=tensor,
                rank=_rank_name(cascade, var),
            )
        seen |= variables
    if successors > 1:
        yield _diag(
            einsum,
            "a running update iterates one rank; the left side has several 'r+1' indices",
            tensor=tensor,
        )


def _check_names(cascade: Cascade, einsum: Einsum) -> Iterator[Diagnostic]:
    exprs = einsum.parts()
    variables = einsum.space | frozenset().union(*(indices_used(e) for e in exprs))
    for var in sorted(variables):
        if cascade.rank_of_index(var) is None:
            yield _diag(
                einsum,
                f"index {var} names no rank; declare rank {var.upper()} or fix the index",
                rank=var.upper(),
            )
    sizes = frozenset().union(
        *(sizes_used(e) for e in exprs), *(size_names(i) for i in einsum.indices)
    )
    for size in sorted(sizes):
        if cascade.rank(size) is None:
            yield _diag(einsum, f"size {size} names no declared rank", rank=size)


def _check_access(cascade: Cascade, einsum: Einsum, access: Access) -> Iterator[Diagnostic]:
    decl = cascade.declaration(access.tensor)
    if decl is None:
        yield _diag(
            einsum,
            f"reads undeclared tensor {access.tensor}; declare it as an input or write it first",
            tensor=access.tensor,
        )
        return
    if len(access.indices) != len(decl.ranks):
        yield _diag(
            einsum,
            f"{access.tensor} has {len(decl.ranks)} ranks [{', '.join(decl.ranks)}] but is "
            f"indexed with {len(access.indices)}",
            tensor=access.tensor,
        )
        return
    for position, (index, rank) in enumerate(zip(access.indices, decl.ranks, strict=True)):
        text = format_index(index)
        if not is_quasi_affine(index):
            yield _diag(
                einsum,
                f"index '{text}' of {access.tensor} (rank {rank}) is not affine in index variables",
                tensor=access.tensor,
                rank=rank,
            )
            continue
        addressed = _addressed_rank(cascade, index)
        if addressed is not None and addressed != rank:
            yield _diag(
                einsum,
                f"{access.tensor} is indexed with '{text}' (rank {addressed}) in position "
                f"{position + 1}, where it is declared with rank {rank}",
                tensor=access.tensor,
                rank=rank,
            )


def _addressed_rank(cascade: Cascade, index: sympy.Expr) -> str | None:
    """The rank an index expression evidently ranges over, or None when it cannot be told:
    `m`, `m + 1` range over M; `m1*M0 + m0` over M when M is partitioned into M1, M0."""
    variables = index_vars(index)
    if len(variables) == 1:
        (var,) = variables
        if sympy.expand(index - index_symbol(var)).is_number:
            return _rank_name(cascade, var)
    for part in cascade.partitions:
        if sympy.expand(index - part.recombined()) == 0:
            return part.rank
    return None


def _check_reduction(cascade: Cascade, einsum: Einsum) -> Iterator[Diagnostic]:
    reduced = sorted(einsum.reduced)
    if reduced and einsum.reduce is None:
        yield _diag(
            einsum,
            f"indices {', '.join(reduced)} are reduced but the Einsum has no reduce operator",
            tensor=einsum.tensor,
            rank=_rank_name(cascade, reduced[0]),
        )
    if not reduced and einsum.reduce is not None:
        yield _diag(
            einsum,
            f"reduce operator {einsum.reduce.value} given but every index is on the left",
            tensor=einsum.tensor,
        )


def _check_iteration(cascade: Cascade, einsum: Einsum) -> Iterator[Diagnostic]:
    var = einsum.iterative_index
    rank = _rank_name(cascade, var) if var else None
    inner = next((p for p in cascade.partitions if p.inner.lower() == var), None)
    if var is not None and inner is not None:
        yield _diag(
            einsum,
            f"a running update over {var}, the inner rank of partition {inner.rank} -> "
            f"{inner.outer}, {inner.inner}, would step past the end of a ragged last tile; run "
            f"over {inner.rank.lower()} or over {inner.outer.lower()}",
            tensor=einsum.tensor,
            rank=rank,
        )
    if var is not None and einsum.init is None:
        yield _diag(
            einsum,
            f"running update over {var} has no initial value; add {_init_text(cascade, einsum)}",
            tensor=einsum.tensor,
            rank=rank,
        )
    if var is None and einsum.init is not None:
        yield _diag(
            einsum,
            f"{einsum.tensor} has an initial value but is not a running update (no 'r+1' index)",
            tensor=einsum.tensor,
        )
    if var is not None and einsum.init is not None:
        extra = indices_used(einsum.init) - (einsum.lhs_vars - {var})
        for name in sorted(extra):
            yield Diagnostic(
                f"initial value of {einsum.tensor} uses index {name}, which is not one of its "
                "other left-side indices",
                einsum.init_span or einsum.span,
                einsum=einsum.tensor,
                tensor=einsum.tensor,
                rank=_rank_name(cascade, name),
            )


def _init_text(cascade: Cascade, einsum: Einsum) -> str:
    indices = ",".join(format_index(i) for i in einsum.init_indices)
    return f"'{einsum.tensor}[{indices}] = <value>' before it"


def _check_outputs(cascade: Cascade) -> Iterator[Diagnostic]:
    for decl in cascade.outputs:
        writer = cascade.writer(decl.name)
        if writer is None:
            yield Diagnostic(f"output {decl.name} is never written", decl.span, tensor=decl.name)
            continue
        written = tuple(cascade.written_rank(i) for i in writer.indices)
        resolved = all(cascade.rank(r) is not None for r in (*written, *decl.ranks))
        if resolved and written != decl.ranks:
            yield _diag(
                writer,
                f"writes output {decl.name}[{', '.join(written)}] but it is declared "
                f"[{', '.join(decl.ranks)}]",
                tensor=decl.name,
            )


def _check_sparse(cascade: Cascade, sparse: BlockSparse) -> Iterator[Diagnostic]:
    where = f"sparse {sparse.tensor}"

    def problem(message: str, rank: str | None = None) -> Diagnostic:
        return Diagnostic(f"{where}: {message}", sparse.span, tensor=sparse.tensor, rank=rank)

    writer = cascade.writer(sparse.tensor)
    if writer is None or writer.filter is None:
        yield problem(f"{sparse.tensor} must be written by an Einsum with a filter (the mask)")
        return
    part = next((p for p in cascade.partitions if p.outer == sparse.key_tiles), None)
    if part is None:
        yield problem(f"{sparse.key_tiles} is not the outer rank of a partition", sparse.key_tiles)
        return
    needed = {sparse.key_tile_index, part.inner.lower(), sparse.query_index}
    for var in sorted(needed - writer.space):
        yield problem(f"{sparse.tensor} does not iterate over {var}", _rank_name(cascade, var))
    # Other left-side indices (batch, head) are the grid of a query on the left side: tiles
    # are classified per grid point.
    grid = writer.lhs_vars if sparse.query_index in writer.lhs_vars else frozenset()
    for var in sorted(indices_used(writer.filter.predicate) - needed - grid):
        yield problem(
            f"the mask of {sparse.tensor} reads index {var}; a block-sparse mask may read only "
            f"{', '.join(sorted(needed))} and {sparse.tensor}'s other left-side indices",
            _rank_name(cascade, var),
        )
    tile = sparse.query_tile
    if (tile.is_Integer and tile < 1) or not (tile.is_Integer or size_names(tile)):
        yield problem(f"the query tile {tile} is not a positive integer or a size")
    for name in sorted(size_names(tile)):
        if cascade.rank(name) is None:
            yield problem(f"the query tile uses size {name}, which no rank declares", name)
    if [s.tensor for s in cascade.sparse].count(sparse.tensor) > 1:
        yield problem(f"{sparse.tensor} is declared sparse more than once")


def _check_dependencies(cascade: Cascade) -> Iterator[Diagnostic]:
    graph = dependency_graph(cascade)
    by_name = {e.tensor: e for e in cascade.einsums}
    for cycle in nx.simple_cycles(uncarried(graph)):
        first = by_name[min(cycle, key=[e.tensor for e in cascade.einsums].index)]
        yield _diag(
            first,
            f"dependency cycle {' -> '.join(cycle + cycle[:1])}; a tensor may read another's "
            "value only from an earlier iteration (r) of a running update written at r + 1",
            tensor=first.tensor,
        )
    position = {e.tensor: i for i, e in enumerate(cascade.einsums)}
    for component in nx.strongly_connected_components(graph):
        members = sorted(
            (by_name[n] for n in component if n in by_name), key=lambda e: position[e.tensor]
        )
        loops = sorted({e.iterative_index for e in members if e.iterative_index is not None})
        if len(loops) > 1:
            yield _diag(
                members[0],
                f"Einsums {', '.join(e.tensor for e in members)} depend on each other across "
                f"different iterative ranks ({', '.join(loops)})",
                tensor=members[0].tensor,
            )
        elif loops and len(members) > 1:
            (var,) = loops
            for einsum in members:
                if var not in einsum.lhs_vars:
                    yield _diag(
                        einsum,
                        f"{einsum.tensor} takes part in the running update over {var} but does "
                        f"not write one value per {var} (no {var} on its left side)",
                        tensor=einsum.tensor,
                        rank=_rank_name(cascade, var),
                    )
