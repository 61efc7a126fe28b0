"""What each IR map operator and reduce operator computes on NumPy arrays.

The reference interpreter looks operators up here by name; nothing else defines their meaning
on the CPU. Comparisons and logical operators yield booleans.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from attncc.ir import ReduceOp


def _sigmoid(x: np.ndarray) -> np.ndarray:
    # Two branches so that exp never overflows: 1/(1+e^-x) for x >= 0, e^x/(1+e^x) below.
    e = np.exp(-np.abs(x))
    return np.where(x >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


MAP_OPS: dict[str, Callable[..., np.ndarray]] = {
    "add": np.add,
    "sub": np.subtract,
    "mul": np.multiply,
    "div": np.divide,
    "floordiv": np.floor_divide,
    "mod": np.mod,
    "neg": np.negative,
    "max": np.maximum,
    "min": np.minimum,
    "exp": np.exp,
    "exp2": np.exp2,
    "log": np.log,
    "log2": np.log2,
    "tanh": np.tanh,
    "sigmoid": _sigmoid,
    "sqrt": np.sqrt,
    "rsqrt": lambda x: 1.0 / np.sqrt(x),
    "abs": np.abs,
    "select": lambda c, a, b: np.asarray(np.where(np.asarray(c, dtype=bool), a, b)),
    "lt": np.less,
    "le": np.less_equal,
    "gt": np.greater,
    "ge": np.greater_equal,
    "eq": np.equal,
    "ne": np.not_equal,
    "and": lambda a, b: np.logical_and(a, b),
    "or": lambda a, b: np.logical_or(a, b),
    "not": lambda a: np.logical_not(a),
}

REDUCE_OPS: dict[ReduceOp, tuple[Callable[..., np.ndarray], float]] = {
    ReduceOp.SUM: (np.sum, 0.0),
    ReduceOp.MAX: (np.max, -np.inf),
    ReduceOp.MIN: (np.min, np.inf),
}
"""Each reduce operator's NumPy reduction and its identity (the value of an empty reduction)."""
