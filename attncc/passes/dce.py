"""Dead-code elimination: drop Einsums no output depends on."""

from __future__ import annotations

from dataclasses import dataclass, replace

import networkx as nx

from attncc.ir import Cascade, dependency_graph
from attncc.passes.base import CascadePass, PassResult
from attncc.passes.registry import register


def live_tensors(cascade: Cascade) -> frozenset[str]:
    """Tensors some output depends on, the outputs included."""
    graph = dependency_graph(cascade)
    live: set[str] = set()
    for output in cascade.output_names():
        if output in graph:
            live |= nx.ancestors(graph, output) | {output}
    return frozenset(live)


@register
@dataclass(frozen=True)
class DeadCodeElimination(CascadePass):
    name = "dce"

    def apply(self, cascade: Cascade) -> PassResult:
        live = live_tensors(cascade)
        dead = [e.tensor for e in cascade.einsums if e.tensor not in live]
        kept = tuple(e for e in cascade.einsums if e.tensor in live)
        remarks = (f"removed {', '.join(dead)}: no output depends on them",) if dead else ()
        return PassResult(replace(cascade, einsums=kept), remarks)
