"""Variants that run as stages: one cascade states the whole variant, and is cut
(attncc.frontends.zoo.cut) where a value must exist before the attention kernel starts.

A content-based block table (routing), per-token head weights (MoH) or pooled keys (HiLo) are
Einsums of the variant's cascade, so the reference interpreter runs it as one and `attncc
analyze` reports every stage. The tiled backends cannot take it whole: their tile lists are
classified from the block table's *data* before the kernel launches (attncc.analysis.
data_masks), and a loop nest has one key loop over one partitioned rank, where pooling reduces
over a window and HiLo has two attentions. `staged` names a variant's stages; `Staged.run`
runs them in order, the attention stages (`kernel`) on the chosen backend and the small ones
before them (scoring, routing, pooling: no key loop) in the float64 reference interpreter, so
that every backend is handed the same block table and head weights.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import ParamSpec

import numpy as np
import numpy.typing as npt

from attncc.backends.execute import Backend, execute
from attncc.backends.numpy.reference import interpret
from attncc.errors import AttnccError
from attncc.frontends.zoo.cut import cut
from attncc.ir import Cascade, DType, TensorDecl, bind_sizes, size_symbol

Options = ParamSpec("Options")


@dataclass(frozen=True)
class Stage:
    """A cut of a variant's cascade; `kernel` says it is an attention that the tiled backends
    lower to a loop nest, else it runs in the reference interpreter."""

    cascade: Cascade
    kernel: bool


@dataclass(frozen=True)
class Cut:
    """Where a stage is cut: the Einsums `outputs` need, reading `given` (earlier stages'
    results) as inputs; `kernel` as in Stage."""

    outputs: tuple[str, ...]
    given: tuple[str, ...] = ()
    kernel: bool = True

    def stage(self, whole: Cascade) -> Stage:
        return Stage(cut(whole, self.outputs, self.given), self.kernel)


def staged(build: Callable[Options, Cascade], *cuts: Cut) -> Callable[Options, Staged]:
    """`build`'s variant as it runs on the tiled backends: a function taking `build`'s options
    and returning its cascade cut into `cuts`, in the order they run."""

    def stages(*args: Options.args, **options: Options.kwargs) -> Staged:
        whole = build(*args, **options)
        return Staged(whole, tuple(c.stage(whole) for c in cuts))

    stages.__name__ = stages.__qualname__ = f"{getattr(build, '__name__', 'variant')}_stages"
    return stages


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
        float64; a kernel stage computes in the floating-point type of the inputs the caller
        gives it (one type: mixed types are refused), and earlier stages' results are cast to
        that type when they are handed to it."""
        arrays = {name: np.asarray(value) for name, value in inputs.items()}
        # Sizes from the whole cascade: a stage may see a rank only through another (H = 2*G).
        shapes = {d.name: arrays[d.name].shape for d in self.whole.inputs if d.name in arrays}
        bound = bind_sizes(self.whole, sizes, shapes)
        results: dict[str, np.ndarray] = {}
        for stage in self.stages:
            cascade = stage.cascade
            known = {r.name: bound[r.name] for r in cascade.ranks if r.size == size_symbol(r.name)}
            if stage.kernel:
                kind = _element_type(cascade, arrays, results)
                own = {d.name: _typed(cascade, d, arrays, results, kind) for d in cascade.inputs}
                outputs = execute(cascade, own, known, backend)
            else:
                wide = np.dtype(np.float64)
                own = {d.name: _typed(cascade, d, arrays, results, wide) for d in cascade.inputs}
                outputs = interpret(cascade, own, known)
            results.update(outputs)
        return {name: results[name] for name in self.whole.output_names()}


def _element_type(
    stage: Cascade, inputs: Mapping[str, np.ndarray], results: Mapping[str, np.ndarray]
) -> np.dtype:
    """The one floating-point type of the inputs the caller gives kernel `stage` (of all the
    caller's floating-point inputs when the stage reads none of them directly)."""
    own = {
        d.name: inputs[d.name].dtype
        for d in stage.inputs
        if d.name not in results and d.name in inputs and inputs[d.name].dtype.kind == "f"
    }
    floats = own or {n: a.dtype for n, a in inputs.items() if a.dtype.kind == "f"}
    kinds = set(floats.values())
    if len(kinds) == 1:
        return kinds.pop()
    if not kinds:
        return np.dtype(np.float64)
    listed = ", ".join(f"{name} {dtype}" for name, dtype in sorted(floats.items()))
    raise AttnccError(
        f"stage {stage.name} computes in one floating-point type, but its inputs are {listed}: "
        "give them all in one type (float32 for Triton)"
    )


def _typed(
    stage: Cascade,
    decl: TensorDecl,
    inputs: Mapping[str, np.ndarray],
    results: Mapping[str, np.ndarray],
    kind: np.dtype,
) -> np.ndarray:
    """The array a stage reads as `decl`: an earlier stage's result as declared (integers for
    an i32 table, `kind` for values), or the caller's input (floating-point ones as `kind`: the
    reference stages compute in float64; a kernel stage's own inputs already are `kind`)."""
    if decl.name in results:
        array = results[decl.name]
    elif decl.name in inputs:
        array = inputs[decl.name]
    else:
        raise AttnccError(f"stage {stage.name} reads input {decl.name}, which was not given")
    if decl.dtype is not None and not decl.dtype.is_float:
        return array.astype(_INTEGER[decl.dtype], copy=False)
    return array.astype(kind, copy=False) if array.dtype.kind == "f" else array


_INTEGER = {DType.I32: np.int32, DType.I64: np.int64, DType.BOOL: np.bool_}
