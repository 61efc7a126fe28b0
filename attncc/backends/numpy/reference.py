"""The reference interpreter: the meaning of every IR construct, executed Einsum by Einsum.

It is the oracle every rewrite and every backend is checked against, so it favours being
evidently right over being fast. Each Einsum is evaluated over its whole iteration space with
NumPy broadcasting: every index variable is an axis, every subexpression a `Field` that spans
some of the axes. Points outside the iteration domain (past the end of a partitioned rank, or
rejected by the filter) take no part in reductions; output points with none left take the
filter's fill. Running updates are loops over their iterative rank, and Einsums that read each
other's previous iteration step together (see `attncc.ir.graph`). In a block-sparse cascade
(`sparse S[m1, p // T]`) the tiles S's mask hides are outside the domain of every Einsum over
m1 and p, and running updates over m1 keep their value through them.

Sums of products are contracted with `np.einsum` instead of materializing the product over the
whole space; that is the only shortcut, and it applies only where it is exact.
"""

from __future__ import annotations

import string
from collections.abc import Mapping
from dataclasses import dataclass, replace

import numpy as np
import numpy.typing as npt

from attncc.analysis.block_sparse import tile_map
from attncc.analysis.tile_map import TileClass
from attncc.backends.numpy.ops import MAP_OPS, REDUCE_OPS
from attncc.errors import ExecutionError
from attncc.ir import (
    Access,
    BlockSparse,
    Call,
    Cascade,
    Const,
    Coord,
    Einsum,
    Expr,
    ReduceOp,
    Size,
    Step,
    bind_sizes,
    evaluate_index,
    execution_order,
    format_index,
    index_name,
    index_vars,
    iteration_successor,
    product_factors,
    verify,
)


@dataclass(frozen=True)
class Field:
    """Values over the iteration axes `axes`, stored in the Einsum's full layout: one array
    dimension per iteration axis, of extent 1 along the axes the field does not span."""

    array: np.ndarray
    axes: frozenset[str]


def interpret(
    cascade: Cascade,
    inputs: Mapping[str, npt.ArrayLike],
    sizes: Mapping[str, int] | None = None,
    *,
    keep_temporaries: bool = False,
) -> dict[str, np.ndarray]:
    """Run `cascade` on `inputs` (arrays in each input's declared rank order).

    Floating-point inputs are computed in float64 if any is float64, else in float32; integer
    and boolean temporaries stay exact (document ids, predicates). Sizes
    not fixed by the cascade come from the inputs' shapes and from `sizes`. Returns the outputs,
    or every tensor when `keep_temporaries` (running tensors have one extra entry, coordinate 0,
    along their iterative rank).
    """
    verify(cascade)
    arrays, dtype = prepare_inputs(cascade, inputs)
    bound = bind_sizes(cascade, sizes, {name: a.shape for name, a in arrays.items()})
    run = _Run(cascade, bound, dtype, arrays)
    with np.errstate(all="ignore"):
        for step in execution_order(cascade):
            run.step(step)
    for decl in cascade.outputs:
        # An output declared floating point is one, even when it holds integers (coordinates).
        if decl.dtype and decl.dtype.is_float:
            run.tensors[decl.name] = run.tensors[decl.name].astype(dtype)
    names = run.tensors.keys() if keep_temporaries else cascade.output_names()
    return {name: run.tensors[name] for name in names}


def prepare_inputs(
    cascade: Cascade, inputs: Mapping[str, npt.ArrayLike]
) -> tuple[dict[str, np.ndarray], np.dtype]:
    declared = {d.name: d for d in cascade.inputs}
    for name in inputs:
        if name not in declared:
            raise ExecutionError(
                f"unknown input {name}; the inputs of {cascade.name} are {', '.join(declared)}"
            )
    missing = [name for name in declared if name not in inputs]
    if missing:
        raise ExecutionError(f"missing input{'s' if len(missing) > 1 else ''} {', '.join(missing)}")
    arrays = {}
    for name, decl in declared.items():
        try:
            array = np.asarray(inputs[name])
        except ValueError as error:
            raise ExecutionError(f"input {name} is not a rectangular array: {error}") from None
        if array.dtype.kind not in "fiub":
            raise ExecutionError(
                f"input {name} has element type {array.dtype}; the reference interpreter takes "
                "real floating-point, integer or boolean arrays"
            )
        if not (decl.dtype and decl.dtype.is_float) and array.dtype.kind == "f":
            declared_type = decl.dtype.value if decl.dtype else "?"
            raise ExecutionError(
                f"input {name} is declared {declared_type} but holds floating-point values"
            )
        arrays[name] = array
    floats = [arrays[n] for n, d in declared.items() if d.dtype and d.dtype.is_float]
    dtype = np.dtype(np.float64 if any(a.dtype == np.float64 for a in floats) else np.float32)
    for name, decl in declared.items():
        if decl.dtype and decl.dtype.is_float:
            arrays[name] = arrays[name].astype(dtype, copy=False)
    return arrays, dtype


class _Run:
    """The state of one execution: bound sizes and every tensor computed so far."""

    def __init__(
        self, cascade: Cascade, sizes: dict[str, int], dtype: np.dtype, inputs: dict
    ) -> None:
        self.cascade = cascade
        self.sizes = sizes
        self.dtype = dtype
        self.tensors: dict[str, np.ndarray] = dict(inputs)
        self.tiles: dict[BlockSparse, np.ndarray] = {}

    def extent(self, var: str) -> int:
        rank = self.cascade.rank_of_index(var)
        assert rank is not None, f"verified cascades name only declared ranks ({var})"
        return self.sizes[rank.name]

    def step(self, step: Step) -> None:
        if step.loop is None:
            (einsum,) = step.einsums
            self.tensors[einsum.tensor] = self.evaluate(einsum, {})
            return
        for einsum in step.einsums:
            self.allocate(einsum)
        for coordinate in range(self.extent(step.loop)):
            for einsum in step.einsums:
                self.write(einsum, {step.loop: coordinate})

    def allocate(self, einsum: Einsum) -> None:
        """Storage for a loop member; a running tensor gets one more entry along its rank."""
        var = einsum.iterative_index
        shape = [
            self.extent(v) + (1 if v == var else 0)
            for v in (next(iter(index_vars(i))) for i in einsum.indices)
        ]
        self.tensors[einsum.tensor] = np.full(shape, np.nan, dtype=self.dtype)
        if einsum.init is not None:
            start = replace(
                einsum,
                indices=einsum.init_indices,
                expr=einsum.init,
                init=None,
                reduce=None,
                filter=None,
            )
            self.write(start, {})

    def write(self, einsum: Einsum, fixed: dict[str, int]) -> None:
        target = tuple(
            int(evaluate_index(i, fixed)) if index_vars(i) <= fixed.keys() else slice(None)
            for i in einsum.indices
        )
        values = self.evaluate(einsum, fixed)
        for sparse in self.cascade.sparse:
            var = sparse.key_tile_index
            if einsum.iterative_index == var and sparse.query_index in einsum.lhs_vars:
                # A running update keeps its value through the tiles the mask hides.
                before = tuple(
                    t - 1 if isinstance(t, int) and iteration_successor(i) == var else t
                    for i, t in zip(einsum.indices, target, strict=True)
                )
                lhs = [v for i in einsum.indices for v in sorted(index_vars(i)) if v not in fixed]
                shape = [-1 if v == sparse.query_index else 1 for v in lhs]
                keep = self.active(sparse)[fixed[var]].reshape(shape)
                values = np.where(keep, values, self.tensors[einsum.tensor][before])
        self.tensors[einsum.tensor][target] = values

    def active(self, sparse: BlockSparse) -> np.ndarray:
        """Whether tile (m1, p // T) is not EMPTY, over (m1, p), classified on first use
        (the mask may read tensors the cascade computes)."""
        if sparse not in self.tiles:
            tiles = tile_map(self.cascade, sparse, self.sizes, self.tensors)
            query_tiles = np.arange(self.sizes[sparse.query]) // tiles.query_tile
            self.tiles[sparse] = (tiles.classes[query_tiles] != TileClass.EMPTY).T
        return self.tiles[sparse]

    def evaluate(self, einsum: Einsum, fixed: dict[str, int]) -> np.ndarray:
        """The values of `einsum`'s left side, over its variables that `fixed` does not fix."""
        lhs = [v for i in einsum.indices for v in sorted(index_vars(i)) if v not in fixed]
        layout = tuple(lhs) + tuple(sorted(einsum.reduced))
        return _EinsumEvaluation(self, einsum, layout, fixed).result()


class _EinsumEvaluation:
    """Evaluation of one Einsum over the axes `layout` (left-side variables first)."""

    def __init__(
        self, run: _Run, einsum: Einsum, layout: tuple[str, ...], fixed: dict[str, int]
    ) -> None:
        self.run = run
        self.einsum = einsum
        self.layout = layout
        self.fixed = fixed
        self.shape = tuple(run.extent(v) for v in layout)
        self.values: dict[str, np.ndarray | int] = {**run.sizes, **fixed}
        for position, var in enumerate(layout):
            self.values[var] = np.arange(self.shape[position]).reshape(self._axis_shape(position))

    def _axis_shape(self, position: int) -> tuple[int, ...]:
        return tuple(self.shape[position] if k == position else 1 for k in range(len(self.shape)))

    def lift(self, value: npt.ArrayLike, axes: frozenset[str]) -> Field:
        array = np.asarray(value)
        if array.ndim == 0:
            array = array.reshape((1,) * len(self.layout))
        return Field(array, axes & frozenset(self.layout))

    def result(self) -> np.ndarray:
        mask = self.domain()
        if self.einsum.filter is not None:
            predicate = self.expr(self.einsum.filter.predicate, mask)
            mask = _conjunction(mask, Field(predicate.array.astype(bool), predicate.axes))
        reduce = self.einsum.reduce
        if reduce is None:
            value = self.expr(self.einsum.expr, mask)
            full = np.broadcast_to(value.array, self.shape)
            if mask is not None:
                full = np.where(mask.array, full, self._fill(0.0))
            return self.stored(full)
        return self.stored(self.reduction(reduce, mask))

    def stored(self, values: np.ndarray) -> np.ndarray:
        """Floating-point results in the compute type; integer and boolean ones (document ids,
        predicates) as they are, since rounding them to float32 could change them."""
        if values.dtype.kind in "iub":
            return np.array(values)
        return values.astype(self.run.dtype)

    def _fill(self, default: float) -> float:
        fill = self.einsum.filter.fill if self.einsum.filter is not None else None
        return default if fill is None else fill

    def reduction(self, reduce: ReduceOp, mask: Field | None) -> np.ndarray:
        function, identity = REDUCE_OPS[reduce]
        reduced = frozenset(self.einsum.reduced)
        axes = tuple(k for k, v in enumerate(self.layout) if v in reduced)
        factors = product_factors(self.einsum.expr) if reduce is ReduceOp.SUM else None
        if factors is not None:
            fields = [self.expr(f, mask) for f in factors]
            if mask is None or not (mask.axes & reduced):
                result = self.contract(fields)
                if mask is not None:
                    result = np.where(np.squeeze(mask.array, axis=axes), result, self._fill(0.0))
                return result
            if all(np.isfinite(f.array).all() for f in fields):
                # Multiplying by a 0/1 mask is exact when every factor is finite.
                result = self.contract(
                    [*fields, Field(mask.array.astype(self.run.dtype), mask.axes)]
                )
                return self._fill_empty(result, mask, axes, identity)
        value = np.broadcast_to(self.expr(self.einsum.expr, mask).array, self.shape)
        if mask is not None:
            value = np.where(mask.array, value, identity)
        result = function(value, axis=axes)
        return result if mask is None else self._fill_empty(result, mask, axes, identity)

    def _fill_empty(
        self, result: np.ndarray, mask: Field, axes: tuple[int, ...], identity: float
    ) -> np.ndarray:
        """Output points none of whose reduction points survive take the filter's fill."""
        fill = self._fill(identity)
        if fill == identity:
            return result
        survivors = np.broadcast_to(mask.array, self.shape).any(axis=axes)
        return np.where(survivors, result, fill)

    def contract(self, fields: list[Field]) -> np.ndarray:
        """Sum over the reduced axes of the product of `fields`, by `np.einsum`, over the
        left-side axes (constant along those no factor spans)."""
        letters = dict(zip(self.layout, string.ascii_letters, strict=False))
        operands, subscripts = [], []
        for field in fields:
            dims = tuple(k for k, v in enumerate(self.layout) if v not in field.axes)
            # np.einsum sums booleans as a logical or: count in the compute type instead.
            operands.append(np.squeeze(field.array, axis=dims).astype(self.run.dtype, copy=False))
            subscripts.append("".join(letters[v] for v in self.layout if v in field.axes))
        lhs = [v for v in self.layout if v not in self.einsum.reduced]
        spanned = frozenset().union(*(f.axes for f in fields))
        kept = "".join(letters[v] for v in lhs if v in spanned)
        result = np.einsum(f"{','.join(subscripts)}->{kept}", *operands, optimize=True)
        shape = tuple(self.shape[k] if v in spanned else 1 for k, v in enumerate(lhs))
        return np.broadcast_to(result.reshape(shape), tuple(self.shape[: len(lhs)]))

    def domain(self) -> Field | None:
        """Points inside every partitioned rank (m1*M0 + m0 < M wherever m1 and m0 both
        vary) and, for a block-sparse cascade, in tiles its mask does not hide."""
        space = self.einsum.space
        mask: Field | None = None
        for part in self.run.cascade.partitions:
            outer, inner = index_name(part.outer), index_name(part.inner)
            if outer in space and inner in space:
                coordinate = self.values[outer] * self.run.sizes[part.inner] + self.values[inner]
                valid = np.asarray(coordinate < self.run.sizes[part.rank])
                mask = _conjunction(mask, self.lift(valid, frozenset({outer, inner})))
        for sparse in self.run.cascade.sparse:
            tiles, queries = sparse.key_tile_index, sparse.query_index
            if {tiles, queries} <= space:
                active = self.run.active(sparse)[self.values[tiles], self.values[queries]]
                mask = _conjunction(mask, self.lift(active, frozenset({tiles, queries})))
        return mask

    def expr(self, expr: Expr, mask: Field | None) -> Field:
        if isinstance(expr, Const):
            return self.lift(np.asarray(expr.value, dtype=self.run.dtype), frozenset())
        if isinstance(expr, Size):
            return self.lift(np.asarray(self.run.sizes[expr.rank], self.run.dtype), frozenset())
        if isinstance(expr, Coord):
            return self.lift(self.values[expr.name], frozenset({expr.name}))
        if isinstance(expr, Access):
            return self.gather(expr, mask)
        assert isinstance(expr, Call)
        operands = [self.expr(a, mask) for a in expr.args]
        value = MAP_OPS[expr.op](*(o.array for o in operands))
        return self.lift(value, frozenset().union(*(o.axes for o in operands)))

    def gather(self, access: Access, mask: Field | None) -> Field:
        tensor = self.run.tensors[access.tensor]
        indices = []
        spanned: set[str] = set()
        for position, index in enumerate(access.indices):
            spanned |= index_vars(index)
            value = self.lift(evaluate_index(index, self.values), frozenset()).array
            extent = tensor.shape[position]
            outside = (value < 0) | (value >= extent)
            if outside.any():
                relevant = outside if mask is None else outside & mask.array
                if relevant.any():
                    raise self._out_of_range(access, position, value, relevant, extent)
                value = np.clip(value, 0, extent - 1)
            indices.append(value)
        return self.lift(tensor[tuple(indices)], frozenset(spanned))

    def _out_of_range(
        self, access: Access, position: int, value: np.ndarray, bad: np.ndarray, extent: int
    ) -> ExecutionError:
        point = np.argwhere(np.broadcast_to(bad, self.shape))[0]
        at = {v: int(c) for v, c in zip(self.layout, point, strict=True)} | self.fixed
        read = int(np.broadcast_to(value, self.shape)[tuple(point)])
        decl = self.run.cascade.declaration(access.tensor)
        rank = decl.ranks[position] if decl else "?"
        where = ", ".join(f"{v}={c}" for v, c in sorted(at.items()))
        indices = ",".join(format_index(i) for i in access.indices)
        return ExecutionError(
            f"Einsum {self.einsum.tensor}: {access.tensor}[{indices}] reads index {read} along "
            f"rank {rank}, whose extent is {extent} (at {where})"
        )


def _conjunction(a: Field | None, b: Field) -> Field:
    return b if a is None else Field(a.array & b.array, a.axes | b.axes)
