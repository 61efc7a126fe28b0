"""The text form round-trips, and random valid cascades verify, run and have a sane graph.

Library cascades are checked over a grid of their options; random cascades come from
`strategies.cascades()`. The float32 / float64 comparison is loose on purpose: it is there to
catch an interpreter that computes something else in one precision, not rounding.
"""

from __future__ import annotations

import inspect
import itertools
from typing import Any

import networkx as nx
import numpy as np
import pytest
from hypothesis import given, note, settings
from hypothesis import strategies as st
from strategies import cascades, random_inputs, size_bindings

from attncc.backends.numpy.reference import interpret
from attncc.frontends.library import LIBRARY
from attncc.ir import Cascade, dependency_graph, execution_order, parse, print_cascade, verify

SETTINGS = settings(max_examples=100)

OPTION_GRID: dict[str, tuple[Any, ...]] = {
    "causal": (False, True),
    "batched": (False, True),
    "gqa_group": (None, 2),
    "head_dim": (None, 64),
    "tile": (None, 16),
    "scale": (None, 0.125, 1.0),
    "size": (None, 8),
}


def _library_cases() -> list[tuple[str, dict[str, Any]]]:
    """Every library cascade with every combination of the grid options it accepts."""
    cases = []
    for name, function in LIBRARY.items():
        accepted = [p for p in inspect.signature(function).parameters if p in OPTION_GRID]
        for values in itertools.product(*(OPTION_GRID[p] for p in accepted)):
            cases.append((name, dict(zip(accepted, values, strict=True))))
    return cases


def _case_id(case: tuple[str, dict[str, Any]]) -> str:
    name, options = case
    return "-".join([name, *(f"{k}={v}" for k, v in options.items())])


def assert_round_trips(cascade: Cascade) -> None:
    text = print_cascade(cascade)
    parsed = parse(text)
    assert parsed == cascade, f"parse(print_cascade(c)) != c for\n{text}"
    assert print_cascade(parsed) == text, "printing is not idempotent"


@pytest.mark.parametrize("case", _library_cases(), ids=_case_id)
def test_library_round_trip(case: tuple[str, dict[str, Any]]) -> None:
    name, options = case
    assert_round_trips(LIBRARY[name](**options))


@SETTINGS
@given(cascades(extreme_constants=True))
def test_generated_round_trip(cascade: Cascade) -> None:
    assert_round_trips(cascade)


def _scale(tensors: dict[str, np.ndarray]) -> float:
    """The largest finite magnitude anywhere in a run: cancellation errors scale with it."""
    finite = [np.abs(a[np.isfinite(a)]).max() for a in tensors.values() if np.isfinite(a).any()]
    return float(max(finite, default=1.0))


def assert_close_where_finite(low: np.ndarray, high: np.ndarray, scale: float) -> None:
    assert low.shape == high.shape
    both = np.isfinite(low) & np.isfinite(high)
    error = np.abs(low[both].astype(np.float64) - high[both])
    tolerance = 1e-3 * np.abs(high[both]) + 1e-3 * max(scale, 1.0)
    assert (error <= tolerance).all(), f"float32 {low[both]} vs float64 {high[both]}"


# More examples here: the corners the interpreter can trip on (a filter-only output index of a
# sum, say) come up in about one cascade in fifty.
@settings(SETTINGS, max_examples=300)
@given(st.data())
def test_generated_cascades_run(data: st.DataObject) -> None:
    # Data-dependent filters are left out: a comparison near its threshold may go either way
    # in float32 and float64, and the results would then differ for no fault of attncc.
    cascade = data.draw(cascades(data_filters=False), label="cascade")
    note(print_cascade(cascade))
    verify(cascade)
    sizes = data.draw(size_bindings(cascade), label="sizes")
    inputs = random_inputs(cascade, sizes, data.draw(st.integers(0, 2**32 - 1), label="seed"))
    single = {k: v.astype(np.float32) for k, v in inputs.items()}
    with np.errstate(all="ignore"):
        high = interpret(cascade, inputs, sizes, keep_temporaries=True)
        low = interpret(cascade, single, sizes, keep_temporaries=True)
    scale = _scale(high)
    # Temporaries too: a difference is easier to read where it starts than at the output.
    for einsum in cascade.einsums:
        name = einsum.tensor
        if high[name].dtype.kind in "iub":
            # Integer and boolean temporaries (coordinates, predicates) are exact in both.
            np.testing.assert_array_equal(low[name], high[name])
            continue
        assert high[name].dtype == np.float64 and low[name].dtype == np.float32
        assert_close_where_finite(low[name], high[name], scale)


@SETTINGS
@given(cascades())
def test_generated_dependency_graph(cascade: Cascade) -> None:
    note(print_cascade(cascade))
    graph = dependency_graph(cascade)
    position = {e.tensor: i for i, e in enumerate(cascade.einsums)}
    assert set(graph.nodes) == set(position) | set(cascade.input_names())
    assert nx.is_directed_acyclic_graph(
        nx.subgraph_view(graph, filter_edge=lambda u, v: not graph.edges[u, v]["carried"])
    )
    for u, v, carried in graph.edges(data="carried"):
        # The strategy writes each tensor after what it reads, except a running tensor read at
        # the previous iteration by an Einsum of its own loop.
        if u in position and not carried:
            assert position[u] < position[v], f"{u} -> {v} goes backwards and is not carried"

    steps = execution_order(cascade)
    ordered = [e.tensor for step in steps for e in step.einsums]
    assert sorted(ordered) == sorted(position), "execution_order must list each Einsum once"
    step_of = {e.tensor: k for k, step in enumerate(steps) for e in step.einsums}
    within = {name: k for k, name in enumerate(ordered)}
    for u, v, carried in graph.edges(data="carried"):
        if u not in position:
            continue
        # A step runs after every step it reads; inside one loop step, an uncarried read
        # still comes after its writer.
        assert step_of[u] <= step_of[v]
        if step_of[u] == step_of[v] and not carried:
            assert within[u] < within[v]


def test_sum_with_an_output_index_only_in_the_filter() -> None:
    # Found by test_generated_cascades_run (about one cascade in fifty draws it): `j` is on the
    # left and in the filter, nowhere in the summand.
    cascade = parse(
        "rank I = 2, J = 2\ninput X[i]\noutput T[j]\n\nT[j] = X[i] where j >= 1\n", name="c"
    )
    result = interpret(cascade, {"X": np.array([1.0, 2.0])})
    np.testing.assert_array_equal(result["T"], [0.0, 3.0])
