"""Constant folding and algebraic simplification of value expressions, and the small
expression helpers the canonicalize rewrites share.

Constant subtrees (with the sizes a cascade fixes, such as E = 64) are evaluated exactly with
sympy and rounded once to float64. The numeric factors of a product are merged into one
(`x*2*y*3` -> `x*y*6`): exact in real arithmetic, a reassociation in floating point (results
agree to rounding; an intermediate overflow can disappear). Identities are applied only where
IEEE arithmetic agrees:
`x * 1`, `x - 0`, `x + -0`, `-(-x)`, `max(x, -inf)`; `x + 0` (-0 + 0 is +0), `x - x` and `x * 0`
(NaN when x is infinite) are kept, and constants fold only to a nonzero real value so that the
sign of a zero never depends on the folding.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import replace

import sympy

from attncc.ir import (
    Access,
    Call,
    Cascade,
    Const,
    Coord,
    Expr,
    Size,
    evaluate_size,
    map_expressions,
    product,
    product_factors,
    walk,
)

# Past this magnitude exp and exp2 leave the float64 range; sympy would build huge exact powers.
_LARGEST_EXPONENT = 2048.0


# ----------------------------------------------------------------------------- helpers


def concrete_sizes(cascade: Cascade) -> dict[str, int]:
    """Ranks whose size is an integer, directly or through other ranks (`H = 4*G`, G = 2)."""
    known: dict[str, int] = {}
    progress = True
    while progress:
        progress = False
        for rank in cascade.all_ranks():
            names = {s.name for s in rank.size.free_symbols}
            if rank.name not in known and rank.name not in names and names <= known.keys():
                known[rank.name] = evaluate_size(rank.size, known)
                progress = True
    return known


def map_cascade(cascade: Cascade, fn: Callable[[Expr], Expr]) -> Cascade:
    return replace(cascade, einsums=tuple(map_expressions(e, fn) for e in cascade.einsums))


def is_constant(expr: Expr) -> bool:
    """Reads no tensor and no coordinate: the same value at every point of every Einsum."""
    return not any(isinstance(n, Access | Coord) for n in walk(expr))


def _is(expr: Expr, value: float) -> bool:
    """`expr` is the constant `value`, zeros told apart by sign."""
    return (
        isinstance(expr, Const)
        and expr.value == value
        and math.copysign(1.0, expr.value) == math.copysign(1.0, value)
    )


def times(expr: Expr, constant: float) -> Expr:
    """`expr * constant`, merged into a trailing numeric factor (where fold leaves one)."""
    # a * k -> a * (k*constant)
    if isinstance(expr, Call) and expr.op == "mul" and isinstance(expr.args[1], Const):
        merged = expr.args[1].value * constant
        if not math.isnan(merged):
            return Call("mul", (expr.args[0], Const(merged)))
    # a -> a * constant
    return Call("mul", (expr, Const(constant)))


# ----------------------------------------------------------------------------- fold

EXACT_OPS: dict[str, Callable[..., sympy.Expr]] = {
    "add": lambda a, b: a + b,
    "sub": lambda a, b: a - b,
    "mul": lambda a, b: a * b,
    "div": lambda a, b: a / b,
    "neg": lambda a: -a,
    "max": sympy.Max,
    "min": sympy.Min,
    "abs": sympy.Abs,
    "exp": sympy.exp,
    "exp2": lambda a: sympy.Integer(2) ** a,
    "log": sympy.log,
    "log2": lambda a: sympy.log(a, 2),
    "sqrt": sympy.sqrt,
    "rsqrt": lambda a: 1 / sympy.sqrt(a),
    "tanh": sympy.tanh,
    "sigmoid": lambda a: 1 / (1 + sympy.exp(-a)),
    "select": lambda c, a, b: sympy.Piecewise((a, c), (b, True)),
    "lt": sympy.Lt,
    "le": sympy.Le,
    "gt": sympy.Gt,
    "ge": sympy.Ge,
    "eq": lambda a, b: sympy.true if a == b else sympy.Eq(a, b),
    "ne": lambda a, b: sympy.false if a == b else sympy.Ne(a, b),
    "and": sympy.And,
    "or": sympy.Or,
    "not": sympy.Not,
    "floordiv": lambda a, b: sympy.floor(a / b),
    "mod": sympy.Mod,
}
"""What each IR map operator means on exact sympy values, infinities included."""

_FOLDED = frozenset(EXACT_OPS) - {
    "select", "lt", "le", "gt", "ge", "eq", "ne", "and", "or", "not", "floordiv", "mod"
}  # fmt: skip
"""Operators folded by exact evaluation; comparisons, select and // % are left alone."""


def exact_number(value: float) -> sympy.Expr:
    """A float's exact value (its binary value, not its decimal text); infinities as sympy's."""
    if math.isinf(value):
        return sympy.oo if value > 0 else -sympy.oo
    return sympy.Rational(value)


def _exact(expr: Expr, sizes: Mapping[str, int]) -> sympy.Expr | None:
    """A constant or a known rank size as an exact number; None for anything else."""
    if isinstance(expr, Size):
        return sympy.Integer(sizes[expr.rank]) if expr.rank in sizes else None
    return exact_number(expr.value) if isinstance(expr, Const) else None


def _rounded(value: sympy.Expr) -> float | None:
    """The float64 nearest `value`; None for zero (IEEE would give it a sign), NaN or complex."""
    if value in (sympy.oo, -sympy.oo):
        return math.inf if value == sympy.oo else -math.inf
    if value.is_real is not True or value.is_zero is not False:
        return None
    return float(value.evalf(40))


def _evaluate(call: Call, sizes: Mapping[str, int]) -> Expr | None:
    # rsqrt(E) -> 0.125 (rank E = 64): constant operands fold to the rounded exact value
    operands = [x for a in call.args if (x := _exact(a, sizes)) is not None]
    if call.op not in _FOLDED or len(operands) < len(call.args):
        return None
    if call.op in ("exp", "exp2", "sigmoid", "tanh") and abs(operands[0]) > _LARGEST_EXPONENT:
        return None
    folded = _rounded(EXACT_OPS[call.op](*operands))
    return None if folded is None else Const(folded)


def _drop_identity(call: Call) -> Expr | None:
    # x * 1 -> x,  x / 1 -> x,  x - 0 -> x,  x + -0 -> x,  1 * x -> x,  -0 + x -> x
    if len(call.args) != 2:
        return None
    a, b = call.args
    right = {"mul": 1.0, "div": 1.0, "sub": 0.0, "add": -0.0}
    left = {"mul": 1.0, "add": -0.0}
    if call.op in right and _is(b, right[call.op]):
        return a
    if call.op in left and _is(a, left[call.op]):
        return b
    return None


def _double_negation(call: Call) -> Expr | None:
    # -(-x) -> x
    inner = call.args[0]
    if call.op == "neg" and isinstance(inner, Call) and inner.op == "neg":
        return inner.args[0]
    return None


def _trivial_extremum(call: Call) -> Expr | None:
    # max(x, x) -> x,  max(x, -inf) -> x,  min(x, inf) -> x   (np.maximum keeps a NaN x)
    if call.op not in ("max", "min"):
        return None
    a, b = call.args
    identity = -math.inf if call.op == "max" else math.inf
    # Two equal constants are evaluated instead: max(-0, 0) depends on the order of the zeros.
    if (a == b and not isinstance(a, Const)) or _is(b, identity):
        return a
    return b if _is(a, identity) else None


def _constant_select(call: Call) -> Expr | None:
    # select(1, a, b) -> a,  select(0, a, b) -> b
    if call.op == "select" and isinstance(call.args[0], Const):
        return call.args[1] if call.args[0].value != 0 else call.args[2]
    return None


def _merge_constants(call: Call) -> Expr | None:
    # x * 2 * y * 3 -> x * y * 6,  x * 0.5 * 2 -> x
    if call.op != "mul":
        return None
    factors = product_factors(call)
    numbers = [f.value for f in factors if isinstance(f, Const)]
    if len(numbers) < 2:
        return None
    merged = math.prod(numbers)
    if math.isnan(merged):  # 0 * inf: leave it to run time, where it is NaN too
        return None
    rest: list[Expr] = [f for f in factors if not isinstance(f, Const)]
    if not rest:
        return Const(merged)
    return product(rest if merged == 1.0 else [*rest, Const(merged)])


_CALL_RULES: tuple[Callable[[Call], Expr | None], ...] = (
    _drop_identity,
    _double_negation,
    _trivial_extremum,
    _constant_select,
    _merge_constants,
)


def fold_expr(expr: Expr, sizes: Mapping[str, int]) -> Expr:
    """`expr` with every rule applied bottom-up until none applies. A size alone stays a size
    (`m1*M0 + m0` reads better than `m1*64 + m0`); it folds into the operators it feeds."""
    if not isinstance(expr, Call):
        return expr
    node: Expr = Call(expr.op, tuple(fold_expr(a, sizes) for a in expr.args))
    while isinstance(node, Call):
        call = node
        rewritten = _evaluate(call, sizes)
        if rewritten is None:
            rewritten = next((r for rule in _CALL_RULES if (r := rule(call)) is not None), None)
        if rewritten is None:
            break
        node = rewritten
    return node
