"""Cutting a variant's cascade into stages: `cut` keeps the Einsums some outputs need and reads
the tensors an earlier stage computed as inputs of the same ranks, so that each stage is a
cascade of its own (verified) that a backend can take. What runs the stages, and where, is
attncc.frontends.zoo.stages.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import sympy

from attncc.errors import AttnccError
from attncc.ir import Cascade, DType, Einsum, Partition, Rank, Role, TensorDecl, index_name, verify


def cut(cascade: Cascade, outputs: Sequence[str], given: Iterable[str] = ()) -> Cascade:
    """The stage of `cascade` that computes `outputs` from its inputs and the tensors `given`
    (computed by an earlier stage, read here as inputs of the same ranks). It keeps the ranks
    and partitions it uses: a stage that iterates over none of a partition's ranks leaves the
    rank whole, for the flash pipeline to tile."""
    given = frozenset(given)
    einsums = _needed(cascade, outputs, given)
    reads = frozenset().union(*(e.reads for e in einsums)) | frozenset(outputs)
    inputs = [d for d in cascade.inputs if d.name in reads]
    inputs += [_declared(cascade, name, Role.INPUT) for name in sorted(given & reads)]
    decls = [*inputs, *(_declared(cascade, name, Role.OUTPUT) for name in outputs)]
    used = frozenset().union(*(e.space for e in einsums))
    partitions = tuple(
        p for p in cascade.partitions if {index_name(p.outer), index_name(p.inner)} & used
    )
    stage = Cascade(
        name=f"{cascade.name}_{'_'.join(outputs).lower()}",
        ranks=_ranks(cascade, decls, einsums, partitions),
        partitions=partitions,
        inputs=tuple(inputs),
        outputs=tuple(decls[len(inputs) :]),
        einsums=einsums,
    )
    verify(stage)
    return stage


def _needed(cascade: Cascade, outputs: Sequence[str], given: frozenset[str]) -> tuple[Einsum, ...]:
    """The Einsums `outputs` depend on, in cascade order, stopping at `given` and inputs."""
    wanted: set[str] = set()
    pending = list(outputs)
    while pending:
        name = pending.pop()
        writer = cascade.writer(name)
        if name in wanted or name in given or writer is None:
            continue
        wanted.add(name)
        pending.extend(writer.reads)
    missing = [name for name in outputs if cascade.writer(name) is None]
    if missing:
        raise AttnccError(f"cut {cascade.name}: no Einsum writes {', '.join(missing)}")
    return tuple(e for e in cascade.einsums if e.tensor in wanted)


def _declared(cascade: Cascade, name: str, role: Role) -> TensorDecl:
    """`name`'s declaration with `role`: its own type where the cascade declares it (an i32
    block table), else f32."""
    decl = cascade.declaration(name)
    if decl is None:
        raise AttnccError(f"cut {cascade.name}: no tensor {name}")
    return TensorDecl(name, decl.ranks, decl.dtype or DType.F32, role)


def _ranks(
    cascade: Cascade,
    decls: Sequence[TensorDecl],
    einsums: Sequence[Einsum],
    partitions: Sequence[Partition],
) -> tuple[Rank, ...]:
    """The declared ranks the stage names, and those their sizes name (H = 2*G), in order."""
    sizes = {r.name: sympy.sympify(r.size) for r in cascade.ranks}
    named = {r for d in decls for r in d.ranks} | {p.rank for p in partitions}
    for einsum in einsums:
        named |= {r.name for v in einsum.space if (r := cascade.rank_of_index(v)) is not None}
    pending = [name for name in named if name in sizes]
    while pending:
        for symbol in sizes[pending.pop()].free_symbols:
            if symbol.name in sizes and symbol.name not in named:
                named.add(symbol.name)
                pending.append(symbol.name)
    return tuple(r for r in cascade.ranks if r.name in named)
