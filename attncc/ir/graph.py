"""The dependency graph of a cascade and the order in which its Einsums can run.

Nodes are the cascade's inputs and Einsums (named by the tensor they write); an edge u -> v
says v reads u. An edge is *carried* when v reads an iterative tensor u at coordinate r while
iterating r: it reads the value of the previous iteration, as RD[m1+1] = SLD[m1] + RD[m1]*PRM[m1]
does. Cycles made only through carried edges are running reductions that step together, one
iteration at a time; any other cycle is an error.
"""

from __future__ import annotations

from dataclasses import dataclass

import networkx as nx

from attncc.ir.cascade import Cascade
from attncc.ir.einsum import Einsum
from attncc.ir.expr import Access
from attncc.ir.indexing import index_symbol, index_vars


@dataclass(frozen=True)
class Step:
    """Einsums that run together: one alone (`loop` None), or a loop over index `loop` in which
    each iteration evaluates every member at that coordinate, in order."""

    loop: str | None
    einsums: tuple[Einsum, ...]


def is_carried_read(access: Access, producer: Einsum, consumer: Einsum) -> bool:
    """True when `consumer` reads the previous iteration's value of running tensor `producer`."""
    var = producer.iterative_index
    if var is None or access.tensor != producer.tensor or var not in consumer.space:
        return False
    position = next(i for i, index in enumerate(producer.indices) if var in index_vars(index))
    return position < len(access.indices) and access.indices[position] == index_symbol(var)


def dependency_graph(cascade: Cascade) -> nx.DiGraph:
    """Inputs and Einsums as nodes (attribute `kind`: input or einsum, `einsum` on Einsum nodes),
    read-after-write edges with the accesses that create them and whether they are carried."""
    graph = nx.DiGraph()
    for decl in cascade.inputs:
        graph.add_node(decl.name, kind="input")
    for einsum in cascade.einsums:
        graph.add_node(einsum.tensor, kind="einsum", einsum=einsum)
    for consumer in cascade.einsums:
        for access in consumer.read_accesses():
            if access.tensor not in graph:
                continue
            producer = cascade.writer(access.tensor)
            carried = producer is not None and is_carried_read(access, producer, consumer)
            key = (access.tensor, consumer.tensor)
            if key in graph.edges:
                graph.edges[key]["accesses"] += (access,)
                graph.edges[key]["carried"] &= carried
            else:
                graph.add_edge(*key, accesses=(access,), carried=carried)
    return graph


def uncarried(graph: nx.DiGraph) -> nx.DiGraph:
    """The graph without carried edges: the dependencies within one iteration."""
    return nx.subgraph_view(graph, filter_edge=lambda u, v: not graph.edges[u, v]["carried"])


def execution_order(cascade: Cascade) -> tuple[Step, ...]:
    """Steps in an order that respects every dependency, staying close to the text order.

    Requires a verified cascade: cycles only through carried edges, each over one loop index.
    """
    graph = dependency_graph(cascade).subgraph(e.tensor for e in cascade.einsums)
    position = {e.tensor: i for i, e in enumerate(cascade.einsums)}
    components = nx.condensation(graph)
    steps = []
    for component in nx.lexicographical_topological_sort(
        components, key=lambda c: min(position[n] for n in components.nodes[c]["members"])
    ):
        members = components.nodes[component]["members"]
        inner = uncarried(graph.subgraph(members))
        order = nx.lexicographical_topological_sort(inner, key=position.__getitem__)
        einsums = tuple(cascade.einsums[position[name]] for name in order)
        loop = next((e.iterative_index for e in einsums if e.iterative_index), None)
        steps.append(Step(loop, einsums))
    return tuple(steps)
