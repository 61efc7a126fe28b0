"""The dependency graph as Graphviz DOT, with Einsums grouped and colored by pass.

Built with the `graphviz` package (it writes DOT and, when Graphviz's `dot` program is
installed, renders it). Inputs are grey ellipses; each pass over the chosen rank is a cluster
of its own color; Einsums that run between passes sit outside the clusters; dashed edges read
the previous iteration of a running update; red edges are the witness links that force a pass.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import graphviz

from attncc.analysis.passes import RankPasses
from attncc.errors import AnalysisError
from attncc.ir import Cascade, dependency_graph, format_einsum

_PALETTE = ("#cfe2f3", "#d9ead3", "#fff2cc", "#f4cccc", "#d9d2e9", "#fce5cd", "#d0e0e3")


def to_dot(cascade: Cascade, passes: RankPasses | None = None) -> graphviz.Digraph:
    """The graph of `cascade`; with `passes`, Einsums clustered and colored by pass."""
    graph = dependency_graph(cascade)
    title = cascade.name + (f": {passes.passes} pass(es) over {passes.rank}" if passes else "")
    dot = graphviz.Digraph(cascade.name, graph_attr={"label": title, "rankdir": "TB"})
    for decl in cascade.inputs:
        dot.node(decl.name, shape="ellipse", style="filled", fillcolor="#eeeeee")
    clusters: dict[int, graphviz.Digraph] = {}
    for einsum in cascade.einsums:
        attributes = {"shape": "box", "style": "filled", "tooltip": format_einsum(einsum)}
        placement = passes.placement(einsum.tensor) if passes else None
        number = placement.pass_number if placement else None
        if number is None:
            label = f"{einsum.tensor}\n{placement}" if placement else einsum.tensor
            dot.node(einsum.tensor, label=label, fillcolor="white", **attributes)
            continue
        if number not in clusters:
            clusters[number] = graphviz.Digraph(
                f"cluster_pass{number}", graph_attr={"label": f"pass {number}", "style": "dashed"}
            )
        color = _PALETTE[(number - 1) % len(_PALETTE)]
        clusters[number].node(einsum.tensor, fillcolor=color, **attributes)
    for cluster in clusters.values():
        dot.subgraph(cluster)
    witness = passes.witness if passes else ()
    forcing = {(link.producer, link.consumer) for link in witness if link.new_pass}
    for producer, consumer, carried in graph.edges(data="carried"):
        attributes = {}
        if carried:
            attributes["style"] = "dashed"
        if (producer, consumer) in forcing:
            attributes.update(color="red", penwidth="2")
        dot.edge(producer, consumer, **attributes)
    return dot


def write_dot(dot: graphviz.Digraph, path: Path) -> Path:
    """Write DOT to `path`; a .svg or .png path is rendered with Graphviz's `dot` program."""
    if path.suffix in (".svg", ".png"):
        if shutil.which("dot") is None:
            raise AnalysisError(
                f"cannot render {path}: Graphviz's 'dot' program is not installed (e.g. "
                "'apt install graphviz'); write a .dot file and render it with "
                "'dot -Tsvg graph.dot -o graph.svg'"
            )
        rendered = dot.render(outfile=path, format=path.suffix[1:], cleanup=True)
        return Path(rendered)
    path.write_text(dot.source)
    return path
