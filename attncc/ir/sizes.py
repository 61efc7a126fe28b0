"""Binding rank sizes to integers, from explicit values and from the shapes of input arrays.

A cascade's sizes are sympy expressions; running it needs integers. `bind_sizes` takes what the
user says (`M=512`) and what the inputs show (K is [E, M]), checks that they agree with each
other and with the cascade (E = 64 declared, Q has 32 along e: an error naming both), and
derives the rest (M1 = ceil(M/M0)).
"""

from __future__ import annotations

from collections.abc import Mapping

from attncc.errors import ShapeError
from attncc.ir.cascade import Cascade
from attncc.ir.indexing import evaluate_size, index_name, size_names


def bind_sizes(
    cascade: Cascade,
    given: Mapping[str, int] | None = None,
    shapes: Mapping[str, tuple[int, ...]] | None = None,
) -> dict[str, int]:
    """Every rank's size, including partition outer ranks, as an integer."""
    ranks = {r.name: r for r in cascade.all_ranks()}
    values: dict[str, int] = {}
    source: dict[str, str] = {}
    for name, value in (given or {}).items():
        if name not in ranks:
            raise ShapeError(f"unknown rank {name} in sizes; the ranks are {', '.join(ranks)}")
        _bind(values, source, name, value, f"the given size {name}={value}")
    for decl in cascade.inputs:
        shape = (shapes or {}).get(decl.name)
        if shape is None:
            continue
        if len(shape) != len(decl.ranks):
            declared = f"{decl.name}[{','.join(index_name(r) for r in decl.ranks)}]"
            raise ShapeError(
                f"input {decl.name} has {len(shape)} dimensions {tuple(shape)} but is declared "
                f"{declared} ({len(decl.ranks)} ranks)"
            )
        for rank, extent in zip(decl.ranks, shape, strict=True):
            where = f"input {decl.name} (extent {extent} along {index_name(rank)})"
            _bind(values, source, rank, extent, where)
    _derive(ranks, values, source)
    # Ask only for free sizes: the others follow from them (I = ceiling(P/64)).
    unbound = [name for name in ranks if name not in values]
    missing = [n for n in unbound if ranks[n].size.is_Symbol and ranks[n].size.name == n]
    missing = missing or unbound
    if missing:
        hint = ", ".join(f"{name}=..." for name in missing)
        raise ShapeError(
            f"size of rank{'s' if len(missing) > 1 else ''} {', '.join(missing)} unknown: no "
            f"input has {'them' if len(missing) > 1 else 'it'}; give {hint}"
        )
    return values


def _bind(values: dict[str, int], source: dict[str, str], rank: str, value: int, where: str):
    if not isinstance(value, int) or value < 1:
        raise ShapeError(f"rank {rank} must have a positive integer size, got {value!r} ({where})")
    if rank in values and values[rank] != value:
        raise ShapeError(
            f"rank {rank} is {values[rank]} from {source[rank]} but {value} from {where}"
        )
    values[rank] = value
    source[rank] = where


def _derive(ranks: dict, values: dict[str, int], source: dict[str, str]) -> None:
    """Evaluate declared size expressions until nothing new follows, checking bound values."""
    progress = True
    while progress:
        progress = False
        for name, rank in ranks.items():
            if rank.size.is_Symbol and rank.size.name == name:
                continue
            if not size_names(rank.size) <= values.keys():
                continue
            value = evaluate_size(rank.size, values)
            if name not in values:
                progress = True
            made = f"{rank.size} = {value}" if rank.size.free_symbols else str(value)
            where = f"the cascade, which makes {name} = {made}"
            if name in values and values[name] != value:
                raise ShapeError(
                    f"rank {name} is {values[name]} from {source[name]} but {value} from {where}"
                )
            _bind(values, source, name, value, where)
