"""Everything `attncc analyze` says about a cascade, as one value, a table and JSON.

The analyses stay symbolic; sizes, when given, only evaluate the expressions for display.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import sympy

from attncc.analysis.block_sparse import densities, is_density
from attncc.analysis.cost import CascadeCost, cascade_cost, evaluate
from attncc.analysis.footprint import Footprint, footprint
from attncc.analysis.passes import RankPasses, analyze_passes
from attncc.errors import AnalysisError
from attncc.ir import Cascade, bind_sizes


@dataclass(frozen=True)
class Analysis:
    cascade: Cascade
    passes: tuple[RankPasses, ...]
    footprints: tuple[Footprint, ...]
    cost: CascadeCost


def analyze(cascade: Cascade, ranks: tuple[str, ...] | None = None) -> Analysis:
    """Pass lower bound and footprint over `ranks` (default: every traversed rank), and cost."""
    passes = analyze_passes(cascade, ranks)
    return Analysis(
        cascade, passes, tuple(footprint(cascade, p) for p in passes), cascade_cost(cascade)
    )


def max_passes(analysis: Analysis) -> int:
    return max((p.passes for p in analysis.passes), default=0)


def bound_sizes(cascade: Cascade, given: Mapping[str, int]) -> dict[str, float]:
    """Every rank's size: `given` completed with what the cascade fixes or derives, and the
    density of each block-sparse mask that reads no data, classified at those sizes."""
    for name in given:
        if cascade.rank(name) is None:
            known = ", ".join(r.name for r in cascade.all_ranks())
            raise AnalysisError(
                f"--shapes names {name}, which is not a rank of {cascade.name}; its ranks: {known}"
            )
    free = [
        r.name
        for r in cascade.ranks
        if r.size.is_Symbol and r.size.name == r.name and r.name not in given
    ]
    if free:
        hint = ",".join(f"{name}=..." for name in free)
        raise AnalysisError(f"no size for {', '.join(free)}; give them with --shapes {hint}")
    sizes = bind_sizes(cascade, given)
    return {**sizes, **densities(cascade, sizes)}


class _Formatter:
    """Expressions as text, followed by their value when sizes are given."""

    def __init__(self, sizes: Mapping[str, float] | None) -> None:
        self.sizes = sizes

    def __call__(self, expr: sympy.Expr) -> str:
        text = str(expr)
        if self.sizes is None:
            return text
        value = self.value(expr)
        if isinstance(value, str):
            return f"{text} = {value}"
        shown = f"{value:,}" if isinstance(value, int) else f"{value:,.6g}"
        return shown if text == str(value) else f"{text} = {shown}"

    def value(self, expr: sympy.Expr) -> str | int | float:
        """The value at the sizes; a mask density that depends on data (document ids) stays
        a symbol, with everything else evaluated."""
        if self.sizes is None:
            return str(expr)
        unknown = [s for s in expr.free_symbols if s.name not in self.sizes]
        if unknown and all(is_density(s) for s in unknown):
            known = {s: self.sizes[s.name] for s in expr.free_symbols if s.name in self.sizes}
            return str(sympy.N(expr.subs(known), 6))
        return evaluate(expr, self.sizes)


def format_report(analysis: Analysis, sizes: Mapping[str, int] | None = None) -> str:
    cascade = analysis.cascade
    show = _Formatter(bound_sizes(cascade, sizes) if sizes is not None else None)
    lines = [f"cascade {cascade.name}"]
    for passes, foot in zip(analysis.passes, analysis.footprints, strict=True):
        lines += ["", *_pass_section(passes, foot, show)]
    lines += ["", *_cost_table(analysis, show)]
    return "\n".join(lines) + "\n"


def _rank_title(passes: RankPasses) -> str:
    if passes.parent is None:
        return passes.rank
    where = "tiles, the traversal to memory" if passes.level == "outer" else "within a tile"
    return f"{passes.rank} ({passes.parent} -> {where})"


def _pass_section(passes: RankPasses, foot: Footprint, show: _Formatter) -> list[str]:
    lines = [f"passes over {_rank_title(passes)}: {passes.passes}"]
    for number in range(1, passes.passes + 1):
        members = [p.einsum for p in passes.placements if p.pass_number == number]
        lines.append(f"  pass {number}: {', '.join(members)}")
    if passes.witness:
        chain = passes.witness[0].producer + "".join(
            f" {'=>' if link.new_pass else '->'} {link.consumer}" for link in passes.witness
        )
        legend = "   (=> starts a pass)" if any(link.new_pass for link in passes.witness) else ""
        lines.append(f"  witness: {chain}{legend}")
        lines += [
            f"    {link.producer} => {link.consumer}: {link.reason}"
            for link in passes.witness
            if link.new_pass
        ]
    for pass_footprint in foot.passes:
        if pass_footprint.live:
            held = ", ".join(
                f"{t.tensor} ({t.kind.value}, {show(t.elements)})" for t in pass_footprint.live
            )
            lines.append(f"  pass {pass_footprint.pass_number} holds: {held}")
    fibers = foot.fibers()
    if fibers:
        names = ", ".join(t.tensor for t in fibers)
        length = show(fibers[0].fiber_length or sympy.Integer(0))
        lines.append(
            f"  a kernel must keep fibers of length {length} of {names} on chip, or write them "
            f"out and read them back: {show(foot.spill_elements)} elements of traffic"
        )
    elif passes.passes:
        lines.append(f"  live footprint: {show(foot.peak_elements)} elements")
    return lines


def _cost_table(analysis: Analysis, show: _Formatter) -> list[str]:
    ranks = [p.rank for p in analysis.passes]
    header = f"{'Einsum':<8}" + "".join(f"{r:<14}" for r in ranks) + "operations"
    rows = [header]
    for cost in analysis.cost.einsums:
        where = "".join(f"{p.placement(cost.einsum)!s:<14}" for p in analysis.passes)
        ops = ", ".join(f"{kind} {show(value)}" for kind, value in cost.ops) or "(moves data)"
        rows.append(f"{cost.einsum:<8}{where}{ops}")
    rows.append("total operations:")
    rows += [f"  {kind:<8}{show(value)}" for kind, value in analysis.cost.totals()]
    rows.append(f"  {'flops':<8}{show(analysis.cost.flops)}")
    rows.append(
        f"compulsory bytes: in {show(analysis.cost.bytes_in)}, out {show(analysis.cost.bytes_out)}"
    )
    return rows


def report_json(analysis: Analysis, sizes: Mapping[str, int] | None = None) -> dict[str, Any]:
    """The report as JSON-ready data: expressions as strings, or numbers when sized."""
    show = _Formatter(bound_sizes(analysis.cascade, sizes) if sizes is not None else None)
    return {
        "cascade": analysis.cascade.name,
        "sizes": dict(show.sizes) if show.sizes is not None else None,
        "ranks": [
            {
                "rank": p.rank,
                "parent": p.parent,
                "level": p.level,
                "passes": p.passes,
                "placement": {pl.einsum: str(pl) for pl in p.placements},
                "witness": [link.__dict__ for link in p.witness],
                "footprint": [
                    {
                        "pass": pf.pass_number,
                        "live": [
                            {
                                "tensor": t.tensor,
                                "kind": t.kind.value,
                                "elements": show.value(t.elements),
                            }
                            for t in pf.live
                        ],
                    }
                    for pf in f.passes
                ],
                "fibers": [t.tensor for t in f.fibers()],
                "spill_elements": show.value(f.spill_elements),
            }
            for p, f in zip(analysis.passes, analysis.footprints, strict=True)
        ],
        "einsums": [
            {
                "einsum": c.einsum,
                "points": show.value(c.points),
                "ops": {kind: show.value(v) for kind, v in c.ops},
                "flops": show.value(c.flops),
            }
            for c in analysis.cost.einsums
        ],
        "totals": {kind: show.value(v) for kind, v in analysis.cost.totals()},
        "flops": show.value(analysis.cost.flops),
        "bytes_in": show.value(analysis.cost.bytes_in),
        "bytes_out": show.value(analysis.cost.bytes_out),
    }
