"""Variants that run as stages: one cascade states the whole variant, and is cut where a value
must exist before the attention kernel starts.

A content-based block table (routing), per-token head weights (MoH) or pooled keys (HiLo) are
Einsums of the variant's cascade, so the reference interpreter runs it as one and `attncc
analyze` reports every stage. The tiled backends cannot take it whole: their tile lists are
classified from the block table's *data* before the kernel launches (attncc.analysis.
data_masks), and a loop nest has one key loop over one partitioned rank, where pooling reduces
over a window and HiLo has two attentions. `cut` makes a stage of the Einsums some outputs
need, reading the tensors earlier stages computed as inputs; `Staged.run` runs the stages in
order, the attention stages (`kernel`) on the chosen backend and the small ones before them
(scoring, routing, pooling: no key loop) in the float64 reference interpreter, so that every
backend is handed the same block table and head weights.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import sympy

from attncc.backends.execute import Backend, execute
from attncc.backends.numpy.reference import interpret
from attncc.errors import AttnccError
from attncc.ir import (
    Cascade,
    DType,
    Einsum,
    Partition,
    Rank,
    Role,
    TensorDecl,
    bind_sizes,
    index_name,
    size_symbol,
    verify,
)


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


@dataclass(frozen=True)
class Stage:
    """A cut of a variant's cascade; `kernel` says it is an attention that the tiled backends
    lower to a loop nest, else it runs in the reference interpreter."""

    cascade: Cascade
    kernel: bool


@dataclass(frozen=True)
class Staged:
    """A variant's whole cascade and its stages, in the order they run."""

    whole: Cascade
    stages: tuple[Stage, ...]

    def run(
        self,
        inputs: Mapping[str, npt.ArrayLike],
        backend: Backend = Backend.REFERENCE,
        sizes: Mapping[str, int] | None = None,
    ) -> dict[str, np.ndarray]:
        """The whole cascade's outputs, stage by stage. Stages before the kernels run in
        float64; what they hand a kernel takes the floating-point type of the kernel's other
        inputs (the kernels' element type)."""
        arrays = {name: np.asarray(value) for name, value in inputs.items()}
        floats = [a.dtype for a in arrays.values() if a.dtype.kind == "f"]
        kind = floats[0] if floats else np.dtype(np.float64)
        # Sizes from the whole cascade: a stage may see a rank only through another (H = 2*G).
        shapes = {d.name: arrays[d.name].shape for d in self.whole.inputs if d.name in arrays}
        bound = bind_sizes(self.whole, sizes, shapes)
        results: dict[str, np.ndarray] = {}
        for stage in self.stages:
            cascade = stage.cascade
            own = {d.name: _typed(cascade, d, arrays, results, kind) for d in cascade.inputs}
            known = {r.name: bound[r.name] for r in cascade.ranks if r.size == size_symbol(r.name)}
            if stage.kernel:
                outputs = execute(cascade, own, known, backend)
            else:
                wide = {
                    n: a.astype(np.float64) if a.dtype.kind == "f" else a for n, a in own.items()
                }
                outputs = interpret(cascade, wide, known)
            results.update(outputs)
        return {name: results[name] for name in self.whole.output_names()}


def _typed(
    stage: Cascade,
    decl: TensorDecl,
    inputs: Mapping[str, np.ndarray],
    results: Mapping[str, np.ndarray],
    kind: np.dtype,
) -> np.ndarray:
    """The array a stage reads as `decl`: the caller's input, or an earlier stage's result as
    declared (integers for an i32 table, the kernels' floating-point type for values)."""
    if decl.name not in results:
        if decl.name not in inputs:
            raise AttnccError(f"stage {stage.name} reads input {decl.name}, which was not given")
        return inputs[decl.name]
    array = results[decl.name]
    if decl.dtype is not None and not decl.dtype.is_float:
        return array.astype(_INTEGER[decl.dtype])
    return array.astype(kind)


_INTEGER = {DType.I32: np.int32, DType.I64: np.int64, DType.BOOL: np.bool_}
