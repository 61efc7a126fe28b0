"""Analyses: pure functions from a cascade to facts about it (pass lower bound, symbolic cost,
live footprint, the dependency graph as DOT). Nothing here changes a cascade."""

from attncc.analysis.cost import CascadeCost, EinsumCost, cascade_cost, einsum_cost, evaluate
from attncc.analysis.dot import to_dot, write_dot
from attncc.analysis.footprint import Footprint, LiveKind, LiveTensor, footprint
from attncc.analysis.passes import (
    Link,
    Placement,
    RankPasses,
    analyze_passes,
    count_passes,
    default_ranks,
)
from attncc.analysis.report import Analysis, analyze, format_report, max_passes, report_json

__all__ = [
    "Analysis",
    "CascadeCost",
    "EinsumCost",
    "Footprint",
    "Link",
    "LiveKind",
    "LiveTensor",
    "Placement",
    "RankPasses",
    "analyze",
    "analyze_passes",
    "cascade_cost",
    "count_passes",
    "default_ranks",
    "einsum_cost",
    "evaluate",
    "footprint",
    "format_report",
    "max_passes",
    "report_json",
    "to_dot",
    "write_dot",
]
