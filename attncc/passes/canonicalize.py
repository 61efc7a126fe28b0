"""Canonicalize: the clean-up a kernel writer does by hand, as five small rewrites.

    fold    rsqrt(E) * X[m] * 2    ->  X[m] * 0.25               (rank E = 64)
    exp2    exp(QK[m,p] - GM[p])   ->  exp2(QK[m,p] - GM[p])     QK, GM computed in log2 units
    scale   QK[m,p] = Q[e,p] * K[e,m] * c   ->   QS[e,p] = Q[e,p] * c
                                                 QK[m,p] = QS[e,p] * K[e,m]
    cse     B[p] = X[m,p] where A[p] = X[m,p] came first   ->   readers of B read A
    dce     Einsums no output depends on are dropped

`exp2` is FlashAttention-2's (and Triton's tutorial's) trick: exp(x) = 2^(x*log2(e)), and when
the exponent is a difference of scores and of their running max, multiplying the scores by
log2(e) where they are computed (max commutes with a positive scale) puts the whole softmax in
base 2; `scale` then moves that constant, with the 1/sqrt(E) softmax scale, onto Q, read once:
E*P multiplies instead of M*P. Each rewrite is exact in real arithmetic; in floating point they
reassociate products (`(q*k)*c` becomes `(q*c)*k`) and round log2(e), so results agree to a few
ulps, not bit for bit. Folding is IEEE-exact: `x + 0` is kept (-0 + 0 is +0, not -0), and so are
`x - x` and `x * 0` (NaN when x is infinite); constants fold only to a nonzero real value (so the
sign of a zero never depends on the folding). The rewrites repeat until nothing changes, so the
pass is idempotent. Run it after the pipelines that match `exp` (running-reduce does).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace

import sympy

from attncc.ir import (
    Access,
    Call,
    Cascade,
    Const,
    Coord,
    Einsum,
    Expr,
    ReduceOp,
    Size,
    evaluate_size,
    format_expr,
    index_symbol,
    map_expressions,
    product_factors,
    rename_tensors,
    walk,
)
from attncc.passes.base import CascadePass, PassResult
from attncc.passes.dce import live_tensors
from attncc.passes.names import fresh_name, taken_names
from attncc.passes.registry import register

LOG2_E = 1.4426950408889634
"""log2(e) = 1/ln(2), correctly rounded to float64: exp(x) = exp2(x * LOG2_E)."""

# Past this magnitude exp and exp2 leave the float64 range; sympy would build huge exact powers.
_LARGEST_EXPONENT = 2048.0


@register
@dataclass(frozen=True)
class Canonicalize(CascadePass):
    """Each option switches one rewrite of the module docstring on or off."""

    name = "canonicalize"
    fold: bool = True
    scale: bool = True
    exp2: bool = True
    cse: bool = True
    dce: bool = True

    def apply(self, cascade: Cascade) -> PassResult:
        remarks: list[str] = []
        # A round that changes the cascade removes an exp, or an Einsum, or moves the constant
        # factors of a contraction onto an input (one Einsum more, one such contraction fewer;
        # nothing puts them back), so the loop ends: usually the second round finds nothing.
        while True:
            rewritten = self._round(cascade, remarks)
            if rewritten == cascade:
                return PassResult(cascade, tuple(dict.fromkeys(remarks)))
            cascade = rewritten

    def _round(self, cascade: Cascade, remarks: list[str]) -> Cascade:
        # cse and dce come before scale: the reads they remove would make it refuse an input.
        sizes = _concrete_sizes(cascade)
        if self.fold:
            cascade = _map_cascade(cascade, lambda e: _fold(e, sizes))
        if self.cse:
            cascade = _eliminate_common(cascade, remarks)
        if self.dce:
            cascade = _eliminate_dead(cascade, remarks)
        if self.exp2:
            cascade = _to_exp2(cascade, self.scale, remarks)
            if self.fold:
                cascade = _map_cascade(cascade, lambda e: _fold(e, sizes))
        if self.scale:
            cascade = _fold_scales(cascade, remarks)
        return cascade


# ----------------------------------------------------------------------------- helpers


def _concrete_sizes(cascade: Cascade) -> dict[str, int]:
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


def _parts(einsum: Einsum) -> list[Expr]:
    """The expression, then the filter's predicate and the initial value where there are."""
    filter_ = [einsum.filter.predicate] if einsum.filter is not None else []
    return [einsum.expr, *filter_, *([einsum.init] if einsum.init is not None else [])]


def _map_cascade(cascade: Cascade, fn: Callable[[Expr], Expr]) -> Cascade:
    return replace(cascade, einsums=tuple(map_expressions(e, fn) for e in cascade.einsums))


def _is_constant(expr: Expr) -> bool:
    """Reads no tensor and no coordinate: the same value at every point of every Einsum."""
    return not any(isinstance(n, Access | Coord) for n in walk(expr))


def _is(expr: Expr, value: float) -> bool:
    """`expr` is the constant `value`, zeros told apart by sign."""
    return (
        isinstance(expr, Const)
        and expr.value == value
        and math.copysign(1.0, expr.value) == math.copysign(1.0, value)
    )


def _product(factors: list[Expr]) -> Expr:
    result = factors[0]
    for factor in factors[1:]:
        result = Call("mul", (result, factor))
    return result


def _times(expr: Expr, constant: float) -> Expr:
    """`expr * constant`, merged into a trailing numeric factor (where fold leaves one)."""
    # a * k -> a * (k*constant)
    if isinstance(expr, Call) and expr.op == "mul" and isinstance(expr.args[1], Const):
        merged = expr.args[1].value * constant
        if not math.isnan(merged):
            return Call("mul", (expr.args[0], Const(merged)))
    # a -> a * constant
    return Call("mul", (expr, Const(constant)))


# ----------------------------------------------------------------------------- fold

_EXACT: dict[str, Callable[..., sympy.Expr]] = {
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
}
"""Map operators folded by exact evaluation; comparisons, select and // % are left alone."""


def _exact(expr: Expr, sizes: Mapping[str, int]) -> sympy.Expr | None:
    """A constant or a known rank size as an exact number; None for anything else."""
    if isinstance(expr, Size):
        return sympy.Integer(sizes[expr.rank]) if expr.rank in sizes else None
    if not isinstance(expr, Const):
        return None
    if math.isinf(expr.value):
        return sympy.oo if expr.value > 0 else -sympy.oo
    return sympy.Rational(expr.value)  # the binary value itself, not its decimal text


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
    if call.op not in _EXACT or len(operands) < len(call.args):
        return None
    if call.op in ("exp", "exp2", "sigmoid", "tanh") and abs(operands[0]) > _LARGEST_EXPONENT:
        return None
    folded = _rounded(_EXACT[call.op](*operands))
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
    return _product(rest if merged == 1.0 else [*rest, Const(merged)])


_CALL_RULES: tuple[Callable[[Call], Expr | None], ...] = (
    _drop_identity,
    _double_negation,
    _trivial_extremum,
    _constant_select,
    _merge_constants,
)


def _fold(expr: Expr, sizes: Mapping[str, int]) -> Expr:
    """`expr` with every rule applied bottom-up until none applies. A size alone stays a size
    (`m1*M0 + m0` reads better than `m1*64 + m0`); it folds into the operators it feeds."""
    if not isinstance(expr, Call):
        return expr
    node: Expr = Call(expr.op, tuple(_fold(a, sizes) for a in expr.args))
    while isinstance(node, Call):
        call = node
        rewritten = _evaluate(call, sizes)
        if rewritten is None:
            rewritten = next((r for rule in _CALL_RULES if (r := rule(call)) is not None), None)
        if rewritten is None:
            break
        node = rewritten
    return node


# ----------------------------------------------------------------------------- exp2


def _scales_with(expr: Expr) -> bool:
    """Multiplying every tensor `expr` reads by some c > 0 multiplies `expr` by c: accesses
    combined by + - max min, negated or times a constant; 0 and infinities are fixed points."""
    if isinstance(expr, Access):
        return True
    if isinstance(expr, Const):
        return expr.value == 0 or math.isinf(expr.value)
    if not isinstance(expr, Call):
        return False
    if expr.op in ("add", "sub", "max", "min", "neg"):
        return all(_scales_with(a) for a in expr.args)
    if expr.op == "mul":
        a, b = expr.args
        return (_scales_with(a) and _is_constant(b)) or (_is_constant(a) and _scales_with(b))
    return expr.op == "div" and _scales_with(expr.args[0]) and _is_constant(expr.args[1])


def _is_site(expr: Expr) -> bool:
    """exp(x), x reading tensors and scaling with them: where base-2 values can be read."""
    if not (isinstance(expr, Call) and expr.op == "exp" and _scales_with(expr.args[0])):
        return False
    return any(isinstance(n, Access) for n in walk(expr.args[0]))


def _tensors(expr: Expr) -> frozenset[str]:
    return frozenset(n.tensor for n in walk(expr) if isinstance(n, Access))


def _is_scale_free(expr: Expr) -> bool:
    """A comparison of a value that scales with its reads with 0 or an infinity: its truth
    does not depend on the scale (running-reduce's guard `RM[m1+1,p] == -inf`)."""
    if not (isinstance(expr, Call) and expr.op in ("lt", "le", "gt", "ge", "eq", "ne")):
        return False
    a, b = expr.args
    return _scales_with(a) and _scales_with(b) and (isinstance(a, Const) or isinstance(b, Const))


def _reads_outside_sites(expr: Expr, tensors: frozenset[str]) -> str | None:
    """A tensor of `tensors` that `expr` reads other than in an exp site or a scale-free
    comparison: a read that would see the change of units."""
    if isinstance(expr, Access):
        return expr.tensor if expr.tensor in tensors else None
    if not isinstance(expr, Call) or _is_site(expr):
        return None
    if _is_scale_free(expr):
        # S - Y > 0 keeps its truth only if Y changes units with S
        read = _tensors(expr)
        return None if read <= tensors else min(read & tensors, default=None)
    return next((t for a in expr.args if (t := _reads_outside_sites(a, tensors))), None)


def _closure(cascade: Cascade, roots: frozenset[str]) -> frozenset[str]:
    """`roots` and what they are computed from through writers that scale with their reads
    (maxima, differences, running maxima): all of it changes units together."""
    boundary = set(cascade.input_names()) | set(cascade.output_names())
    found: set[str] = set()
    todo = sorted(roots)
    while todo:
        tensor = todo.pop()
        if tensor in found:
            continue
        found.add(tensor)
        writer = cascade.writer(tensor)
        if tensor not in boundary and writer is not None and _scales_with(writer.expr):
            todo += sorted(_tensors(writer.expr))
    return frozenset(found)


def _sources(cascade: Cascade, domain: frozenset[str], scale: bool) -> frozenset[str] | str:
    """The tensors of `domain` that multiply their own expression by log2(e), or why the
    domain cannot change units."""
    sources = set()
    for tensor in sorted(domain):
        writer = cascade.writer(tensor)
        if tensor in cascade.input_names() or writer is None:
            return f"{tensor} is an input"
        if tensor in cascade.output_names():
            return f"{tensor} is an output"
        if not _scales_with(writer.expr):
            if not _prescalable(cascade, writer, scale):
                return f"{tensor} has no constant factor to take log2(e)"
            sources.add(tensor)
    for einsum in cascade.einsums:
        parts = _parts(einsum)
        if einsum.tensor in domain and einsum.tensor not in sources:
            parts = parts[1:]  # a maximum or a difference of the domain's values scales along
        read = next((t for part in parts if (t := _reads_outside_sites(part, domain))), None)
        if read is not None:
            return f"{einsum.tensor} reads {read} other than in exp or a comparison with 0 or inf"
        if einsum.tensor in domain and not isinstance(einsum.init, Const | None):
            return f"the initial value of {einsum.tensor} is not a constant"
    return frozenset(sources)


def _prescalable(cascade: Cascade, writer: Einsum, scale: bool) -> bool:
    """log2(e) costs nothing here: it joins a constant factor, or the scale rule takes it."""
    factors = product_factors(writer.expr)
    if any(_is_constant(f) for f in factors):
        return True
    return scale and _scaled_factor(cascade, writer, factors)[0] is not None


def _to_exp2(cascade: Cascade, scale: bool, remarks: list[str]) -> Cascade:
    """Every exp(x) as exp2: x computed in log2 units where possible, else x * log2(e)."""
    # Sites that share a tensor must change units together: group their closures.
    domains: list[frozenset[str]] = []
    for einsum in cascade.einsums:
        for site in (n for part in _parts(einsum) for n in walk(part) if _is_site(n)):
            closure = _closure(cascade, _tensors(site))
            touching = [d for d in domains if d & closure]
            domains = [d for d in domains if not d & closure]
            domains.append(closure.union(*touching))
    for einsum in cascade.einsums:
        for node in (n for part in _parts(einsum) for n in walk(part)):
            if isinstance(node, Call) and node.op == "exp" and not _is_site(node):
                remarks.append(
                    f"exp2: in {einsum.tensor}, {format_expr(node.args[0])} is no sum or max of "
                    "scores; exp(x) -> exp2(x * log2e)"
                )
    base2: set[str] = set()
    sources: set[str] = set()
    for domain in domains:
        found = _sources(cascade, domain, scale)
        if isinstance(found, str):
            names = ", ".join(sorted(domain))
            remarks.append(f"exp2: {names} keep base-e units ({found}); exp(x) -> exp2(x * log2e)")
        else:
            base2 |= domain
            sources |= found
    return replace(
        cascade,
        einsums=tuple(
            _base2_einsum(e, frozenset(base2), e.tensor in sources) for e in cascade.einsums
        ),
    )


def _base2_einsum(einsum: Einsum, base2: frozenset[str], source: bool) -> Einsum:
    def exponent(expr: Expr) -> Expr:
        if not isinstance(expr, Call):
            return expr
        args = tuple(exponent(a) for a in expr.args)
        if expr.op != "exp":
            return Call(expr.op, args)
        (x,) = args
        # exp(S - RM) -> exp2(S - RM)   where S and RM hold log2(e) times their values
        if _is_site(expr) and _tensors(x) <= base2:
            return Call("exp2", (x,))
        # exp(x) -> exp2(x * log2e)
        return Call("exp2", (_times(x, LOG2_E),))

    einsum = map_expressions(einsum, exponent)
    if einsum.tensor not in base2:
        return einsum
    # S = Q * K * c -> S = Q * K * (c * log2e); fills and initial values scale with the values
    filter_ = einsum.filter
    if filter_ is not None and filter_.fill is not None:
        filter_ = replace(filter_, fill=filter_.fill * LOG2_E)
    init = Const(einsum.init.value * LOG2_E) if isinstance(einsum.init, Const) else einsum.init
    expr = _times(einsum.expr, LOG2_E) if source else einsum.expr
    return replace(einsum, expr=expr, filter=filter_, init=init)


# ----------------------------------------------------------------------------- scale


def _read_counts(cascade: Cascade) -> dict[str, int]:
    counts: dict[str, int] = {}
    for einsum in cascade.einsums:
        for access in einsum.read_accesses():
            counts[access.tensor] = counts.get(access.tensor, 0) + 1
    return counts


def _is_contraction(einsum: Einsum) -> bool:
    """A sum over some index of a product: a constant factor can move into any factor."""
    return einsum.reduce is ReduceOp.SUM and bool(einsum.reduced) and einsum.init is None


def _scaled_factor(
    cascade: Cascade, einsum: Einsum, factors: list[Expr]
) -> tuple[Access | None, list[str]]:
    """The factor of a contraction that can take its constant factors, or why none can."""
    if not _is_contraction(einsum):
        return None, [f"{einsum.tensor} is not a contraction"]
    inputs, counts = set(cascade.input_names()), _read_counts(cascade)
    reasons = []
    for factor in factors:
        if not isinstance(factor, Access):
            continue
        name = factor.tensor
        spans = {s.name for i in factor.indices for s in i.free_symbols}
        if name not in inputs:
            reasons.append(f"{name} is not an input")
        elif counts[name] > 1:
            reasons.append(f"{name} is read {counts[name]} times")
        elif einsum.lhs_vars <= spans:
            reasons.append(f"{name} varies along every index of {einsum.tensor}")
        else:
            return factor, []
    return None, reasons or [f"no factor of {einsum.tensor} is a tensor"]


def _fold_scales(cascade: Cascade, remarks: list[str]) -> Cascade:
    for name in [e.tensor for e in cascade.einsums]:
        position = next(k for k, e in enumerate(cascade.einsums) if e.tensor == name)
        einsum = cascade.einsums[position]
        factors = product_factors(einsum.expr)
        constants = [f for f in factors if _is_constant(f)]
        if not _is_contraction(einsum) or not constants or len(constants) == len(factors):
            continue
        factor, reasons = _scaled_factor(cascade, einsum, factors)
        if factor is None:
            text = " * ".join(format_expr(c) for c in constants)
            remarks.append(f"scale: {name} keeps {text}: {'; '.join(reasons)}")
        else:
            cascade = _scale_input(cascade, position, factor, constants)
    return cascade


def _scale_input(cascade: Cascade, position: int, factor: Access, constants: list[Expr]) -> Cascade:
    # S = Q[..] * K[..] * c   ->   QS = Q * c;  S = QS[..] * K[..]
    einsum = cascade.einsums[position]
    decl = next(d for d in cascade.inputs if d.name == factor.tensor)
    whole = tuple(index_symbol(rank.lower()) for rank in decl.ranks)
    name = fresh_name(f"{factor.tensor}S", taken_names(cascade))
    scaled = Einsum(name, whole, _product([Access(factor.tensor, whole), *constants]))
    rest = [
        Access(name, factor.indices) if f is factor else f
        for f in product_factors(einsum.expr)
        if not _is_constant(f)
    ]
    einsums = list(cascade.einsums)
    einsums[position : position + 1] = [scaled, replace(einsum, expr=_product(rest))]
    return replace(cascade, einsums=tuple(einsums))


# ----------------------------------------------------------------------------- cse


def _signature(einsum: Einsum) -> Einsum:
    """`einsum` with its own name blanked, so that running updates compare by structure."""

    def blank(expr: Expr) -> Expr:
        if isinstance(expr, Access) and expr.tensor == einsum.tensor:
            return Access("", expr.indices)
        if isinstance(expr, Call):
            return Call(expr.op, tuple(blank(a) for a in expr.args))
        return expr

    return replace(map_expressions(einsum, blank), tensor="")


def _eliminate_common(cascade: Cascade, remarks: list[str]) -> Cascade:
    # A[p] = X[m,p];  B[p] = X[m,p];  Y = B[p]   ->   A[p] = X[m,p];  Y = A[p]
    outputs = set(cascade.output_names())
    while True:
        first: dict[Einsum, str] = {}
        pair = None
        for einsum in cascade.einsums:
            key = _signature(einsum)
            earlier = first.setdefault(key, einsum.tensor)
            if earlier == einsum.tensor:
                continue
            if earlier in outputs and einsum.tensor in outputs:
                remarks.append(f"cse: outputs {earlier} and {einsum.tensor} are equal; both kept")
                continue
            # an output keeps its name: the temporary equal to it goes, whichever came first
            pair = (
                (einsum.tensor, earlier) if einsum.tensor in outputs else (earlier, einsum.tensor)
            )
            break
        if pair is None:
            return cascade
        kept, dropped = pair
        remarks.append(f"cse: {dropped} computes what {kept} does; its readers read {kept}")
        remaining = tuple(e for e in cascade.einsums if e.tensor != dropped)
        cascade = rename_tensors(replace(cascade, einsums=remaining), {dropped: kept})


def _eliminate_dead(cascade: Cascade, remarks: list[str]) -> Cascade:
    live = live_tensors(cascade)
    dead = [e.tensor for e in cascade.einsums if e.tensor not in live]
    if dead:
        remarks.append(f"dce: removed {', '.join(dead)}: no output depends on them")
    return replace(cascade, einsums=tuple(e for e in cascade.einsums if e.tensor in live))
