"""Scores in log2 units and constant factors moved onto an input: the two canonicalize
rewrites that FlashAttention-2 and Triton's tutorial apply by hand.

exp(x) = 2^(x*log2(e)): when the exponent is a difference of scores and their (running) max,
multiplying the scores by log2(e) where they are computed puts the whole softmax in base 2, as
max commutes with a positive scale. The scale rule then moves that constant, with the 1/sqrt(E)
softmax scale, onto Q, read once: E*P multiplies instead of M*P. Both are exact in real
arithmetic; in floating point they reassociate products and round log2(e).
"""

from __future__ import annotations

import math
from dataclasses import replace

from attncc.ir import (
    Access,
    Call,
    Cascade,
    Const,
    Einsum,
    Expr,
    ReduceOp,
    format_expr,
    index_symbol,
    map_expressions,
    product,
    product_factors,
    tensors_read,
    walk,
)
from attncc.passes.folding import is_constant, times
from attncc.passes.names import fresh_name, taken_names

LOG2_E = 1.4426950408889634
"""log2(e) = 1/ln(2), correctly rounded to float64: exp(x) = exp2(x * LOG2_E)."""


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
        return (_scales_with(a) and is_constant(b)) or (is_constant(a) and _scales_with(b))
    return expr.op == "div" and _scales_with(expr.args[0]) and is_constant(expr.args[1])


def _is_site(expr: Expr) -> bool:
    """exp(x), x reading tensors and scaling with them: where base-2 values can be read."""
    if not (isinstance(expr, Call) and expr.op == "exp" and _scales_with(expr.args[0])):
        return False
    return any(isinstance(n, Access) for n in walk(expr.args[0]))


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
        read = tensors_read(expr)
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
            todo += sorted(tensors_read(writer.expr))
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
        parts = list(einsum.parts())
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
    if any(is_constant(f) for f in factors):
        return True
    return scale and _scaled_factor(cascade, writer, factors)[0] is not None


def to_exp2(cascade: Cascade, scale: bool, remarks: list[str]) -> Cascade:
    """Every exp(x) as exp2: x computed in log2 units where possible, else x * log2(e)."""
    # Sites that share a tensor must change units together: group their closures.
    domains: list[frozenset[str]] = []
    for einsum in cascade.einsums:
        for site in (n for part in einsum.parts() for n in walk(part) if _is_site(n)):
            closure = _closure(cascade, tensors_read(site))
            touching = [d for d in domains if d & closure]
            domains = [d for d in domains if not d & closure]
            domains.append(closure.union(*touching))
    for einsum in cascade.einsums:
        for node in (n for part in einsum.parts() for n in walk(part)):
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
        if _is_site(expr) and tensors_read(x) <= base2:
            return Call("exp2", (x,))
        # exp(x) -> exp2(x * log2e)
        return Call("exp2", (times(x, LOG2_E),))

    einsum = map_expressions(einsum, exponent)
    if einsum.tensor not in base2:
        return einsum
    # S = Q * K * c -> S = Q * K * (c * log2e); fills and initial values scale with the values
    filter_ = einsum.filter
    if filter_ is not None and filter_.fill is not None:
        filter_ = replace(filter_, fill=filter_.fill * LOG2_E)
    init = Const(einsum.init.value * LOG2_E) if isinstance(einsum.init, Const) else einsum.init
    expr = times(einsum.expr, LOG2_E) if source else einsum.expr
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


def fold_scales(cascade: Cascade, remarks: list[str]) -> Cascade:
    for name in [e.tensor for e in cascade.einsums]:
        position = next(k for k, e in enumerate(cascade.einsums) if e.tensor == name)
        einsum = cascade.einsums[position]
        factors = product_factors(einsum.expr)
        constants = [f for f in factors if is_constant(f)]
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
    scaled = Einsum(name, whole, product([Access(factor.tensor, whole), *constants]))
    rest = [
        Access(name, factor.indices) if f is factor else f
        for f in product_factors(einsum.expr)
        if not is_constant(f)
    ]
    einsums = list(cascade.einsums)
    einsums[position : position + 1] = [scaled, replace(einsum, expr=product(rest))]
    return replace(cascade, einsums=tuple(einsums))
