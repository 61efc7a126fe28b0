"""A brute-force oracle for mask predicates: evaluate a mask at every (key, query) point and
classify tiles of the attention matrix, for tests of the mask library and of sparsity analyses.

`evaluate_mask` computes an IR predicate over `m` (key position) and `p` (query position) with
the reference backend's operator table, integers kept exact. `brute_force_classes` reduces it to
one class per (query tile, key tile): EMPTY (no point true), PARTIAL, or FULL (every in-range
point true); the last tiles are ragged and only their in-range points count.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from attncc.backends.numpy.ops import MAP_OPS
from attncc.ir import Access, Call, Const, Coord, Expr, evaluate_index, format_index

EMPTY, PARTIAL, FULL = 0, 1, 2


def evaluate_mask(
    expr: Expr,
    m: np.ndarray | int,
    p: np.ndarray | int,
    data: Mapping[str, np.ndarray] | None = None,
) -> np.ndarray:
    """`expr` at key positions `m` and query positions `p` (broadcast together), as booleans.

    Integer constants stay int64 so that floor division and modulo are exact; `data` holds the
    tensors that Access nodes read, indexed by the access's index expressions.
    """
    values = {"m": np.asarray(m, dtype=np.int64), "p": np.asarray(p, dtype=np.int64)}
    shape = np.broadcast_shapes(values["m"].shape, values["p"].shape)
    result = _evaluate(expr, values, data or {})
    return np.broadcast_to(np.asarray(result).astype(bool), shape)


def _evaluate(
    expr: Expr, values: Mapping[str, np.ndarray], data: Mapping[str, np.ndarray]
) -> np.ndarray:
    if isinstance(expr, Const):
        value = expr.value
        return np.asarray(int(value) if value.is_integer() else value)
    if isinstance(expr, Coord):
        if expr.name not in values:
            raise ValueError(f"a mask ranges over m and p only, not {expr.name!r}")
        return values[expr.name]
    if isinstance(expr, Access):
        return _gather(expr, values, data)
    if isinstance(expr, Call):
        return np.asarray(MAP_OPS[expr.op](*(_evaluate(a, values, data) for a in expr.args)))
    raise ValueError(f"a mask cannot hold {expr!r}")


def _gather(
    access: Access, values: Mapping[str, np.ndarray], data: Mapping[str, np.ndarray]
) -> np.ndarray:
    if access.tensor not in data:
        raise KeyError(f"the mask reads {access.tensor}; pass it in data")
    tensor = np.asarray(data[access.tensor])
    if tensor.ndim != len(access.indices):
        raise ValueError(
            f"{access.tensor} has {tensor.ndim} ranks, the mask indexes {len(access.indices)}"
        )
    indices = []
    for extent, index in zip(tensor.shape, access.indices, strict=True):
        value = np.asarray(evaluate_index(index, values), dtype=np.int64)
        if value.size and (value.min() < 0 or value.max() >= extent):
            raise IndexError(
                f"{access.tensor}[{format_index(index)}] leaves 0..{extent - 1} "
                f"(reaches {value.min()}..{value.max()})"
            )
        indices.append(value)
    return tensor[tuple(indices)]


def brute_force_classes(
    expr: Expr,
    *,
    key_len: int,
    query_len: int,
    key_tile: int,
    query_tile: int,
    data: Mapping[str, np.ndarray] | None = None,
) -> np.ndarray:
    """Class of every (query tile, key tile): int8 array of shape
    (ceil(query_len / query_tile), ceil(key_len / key_tile)) holding EMPTY, PARTIAL or FULL."""
    rows, cols = -(-query_len // query_tile), -(-key_len // key_tile)
    allowed = evaluate_mask(expr, np.arange(key_len)[None, :], np.arange(query_len)[:, None], data)
    # Pad the ragged last tiles: padding counts as true for "all" and false for "any".
    pad = ((0, rows * query_tile - query_len), (0, cols * key_tile - key_len))
    tiles = (rows, query_tile, cols, key_tile)
    any_true = np.pad(allowed, pad, constant_values=False).reshape(tiles).any(axis=(1, 3))
    all_true = np.pad(allowed, pad, constant_values=True).reshape(tiles).all(axis=(1, 3))
    classes = np.where(all_true, FULL, np.where(any_true, PARTIAL, EMPTY))
    return classes.astype(np.int8)
