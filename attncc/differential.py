"""Differential execution: a rewritten cascade must compute what the original computes.

Both run in the reference interpreter, in float64, on the same random inputs and at random
sizes (a tiled rank gets sizes that span several tiles and end in a partial one); outputs
must agree to a tight tolerance. Where the original is NaN its value is undefined (0/0,
exp(-inf - -inf) on a row whose keys are all masked) and a rewrite may compute anything there,
as compilers may refine undefined results; a rewrite may never turn a defined value into NaN.
This is how every pass is checked.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from attncc.backends.numpy.reference import interpret
from attncc.errors import AttnccError
from attncc.ir import Cascade, bind_sizes


class DifferentialError(AttnccError):
    """Two cascades that should agree do not."""


@dataclass(frozen=True)
class Mismatch:
    output: str
    sizes: Mapping[str, int]
    seed: int
    max_error: float
    nan_differences: int = 0
    trial: int = 0

    def __str__(self) -> str:
        sizes = ", ".join(f"{k}={v}" for k, v in self.sizes.items())
        nans = (
            f", NaN on one side only at {self.nan_differences} points"
            if self.nan_differences
            else ""
        )
        return (
            f"{self.output} differs by up to {self.max_error:.3g}{nans} at {sizes} "
            f"(seed {self.seed}, trial {self.trial})"
        )


def random_sizes(before: Cascade, after: Cascade, rng: np.random.Generator) -> dict[str, int]:
    """A size for every free rank of `before`; ranks tiled in either cascade span a few tiles
    and usually end in a partial one."""
    tiles: dict[str, int] = {}
    for cascade in (before, after):
        for part in cascade.partitions:
            inner = cascade.rank(part.inner)
            if inner is not None and inner.size.is_Integer:
                tiles[part.rank] = int(inner.size)
    sizes = {}
    for rank in before.ranks:
        if rank.size.is_Symbol and rank.size.name == rank.name:
            limit = 3 * tiles[rank.name] + 3 if rank.name in tiles else 6
            sizes[rank.name] = int(rng.integers(1, limit + 1))
    return sizes


def random_inputs(
    cascade: Cascade,
    sizes: Mapping[str, int],
    rng: np.random.Generator,
    dtype: npt.DTypeLike = np.float64,
) -> dict[str, np.ndarray]:
    """Standard-normal floating-point inputs of `dtype`; integer inputs (ids) drawn from 0..3."""
    bound = bind_sizes(cascade, sizes)
    inputs: dict[str, np.ndarray] = {}
    for decl in cascade.inputs:
        shape = tuple(bound[r] for r in decl.ranks)
        if decl.dtype and decl.dtype.is_float:
            inputs[decl.name] = rng.standard_normal(shape).astype(dtype)
        else:
            inputs[decl.name] = rng.integers(0, 4, size=shape)
    return inputs


def mismatches(
    before: Cascade, after: Cascade, *, trials: int = 3, seed: int = 0, rtol: float = 1e-9
) -> list[Mismatch]:
    """Where `after` disagrees with `before` on random inputs (empty when it never does)."""
    if before.input_names() != after.input_names():
        raise DifferentialError(
            f"inputs differ: {', '.join(before.input_names())} before, "
            f"{', '.join(after.input_names())} after"
        )
    found = []
    for trial in range(trials):
        rng = np.random.default_rng([seed, trial])
        sizes = random_sizes(before, after, rng)
        inputs = random_inputs(before, sizes, rng)
        expected = interpret(before, inputs, sizes)
        actual = interpret(after, inputs, sizes)
        for name, want in expected.items():
            got = actual[name]
            defined = ~np.isnan(want)
            nan_differences = int((np.isnan(got) & defined).sum())
            close = np.isclose(got, want, rtol=rtol, atol=rtol, equal_nan=True) | ~defined
            if nan_differences or not close.all():
                finite = np.isfinite(want) & np.isfinite(got)
                error = float(np.abs(got - want)[finite].max()) if finite.any() else 0.0
                found.append(Mismatch(name, sizes, seed, error, nan_differences, trial))
    return found


def check_equivalent(before: Cascade, after: Cascade, *, trials: int = 3, seed: int = 0) -> None:
    """Raise `DifferentialError` when `after` does not compute what `before` computes."""
    found = mismatches(before, after, trials=trials, seed=seed)
    if found:
        lines = "\n".join(f"  {m}" for m in found)
        raise DifferentialError(
            f"the rewritten cascade does not compute what the original does:\n{lines}"
        )
