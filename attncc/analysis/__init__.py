"""Analyses: pure functions from a cascade to facts about it (pass lower bound, symbolic cost,
live footprint, the dependency graph as DOT, tile classification of masks, the query and
softmax's keys). Nothing here changes a cascade."""

from attncc.analysis.block_sparse import (
    density_symbol,
    sparse_mask,
    tile_count_formula,
    tile_map,
)
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
from attncc.analysis.roles import key_ranks, query_index, reduced_ranks, softmax_keys
from attncc.analysis.sparsity import classify_tiles
from attncc.analysis.tile_map import BlockLists, BlockMask, TileClass, TileMap

__all__ = [
    "Analysis",
    "BlockLists",
    "BlockMask",
    "CascadeCost",
    "EinsumCost",
    "Footprint",
    "Link",
    "LiveKind",
    "LiveTensor",
    "Placement",
    "RankPasses",
    "TileClass",
    "TileMap",
    "analyze",
    "analyze_passes",
    "cascade_cost",
    "classify_tiles",
    "count_passes",
    "default_ranks",
    "density_symbol",
    "einsum_cost",
    "evaluate",
    "footprint",
    "format_report",
    "key_ranks",
    "max_passes",
    "query_index",
    "reduced_ranks",
    "report_json",
    "softmax_keys",
    "sparse_mask",
    "tile_count_formula",
    "tile_map",
    "to_dot",
    "write_dot",
]
