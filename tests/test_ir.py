"""IR structure: dependency graph, execution order, size binding, index expressions."""

from __future__ import annotations

import pytest
import sympy

from attncc.errors import ShapeError, VerifyError
from attncc.frontends.builder import CascadeBuilder
from attncc.frontends.library import LIBRARY, attention_1pass, attention_3pass
from attncc.ir import (
    Const,
    Filter,
    bind_sizes,
    dependency_graph,
    execution_order,
    format_index,
    index_symbol,
    is_quasi_affine,
    parse,
    size_symbol,
    verify,
)


@pytest.mark.parametrize("name", list(LIBRARY))
def test_library_cascades_verify(name: str) -> None:
    cascade = LIBRARY[name]()
    assert cascade.einsums and cascade.outputs


def test_dependency_graph_of_3pass() -> None:
    graph = dependency_graph(attention_3pass())

    assert set(graph.predecessors("SN")) == {"QK", "GM"}
    assert set(graph.predecessors("AV")) == {"A", "V"}
    assert graph.nodes["Q"]["kind"] == "input"
    assert not any(carried for _, _, carried in graph.edges(data="carried"))


def test_running_updates_have_carried_edges_and_loop_together() -> None:
    cascade = attention_1pass()
    graph = dependency_graph(cascade)

    assert graph.edges["RM", "RM"]["carried"]
    assert graph.edges["RD", "SPD"]["carried"]  # SPD reads RD[m1]: the previous iteration
    assert not graph.edges["RM", "SLN"]["carried"]  # SLN reads RM[m1+1]: this iteration
    steps = {tuple(e.tensor for e in s.einsums): s.loop for s in execution_order(cascade)}
    assert steps[("SPD", "RD")] == "m1"
    assert steps[("RM",)] == "m1"
    assert steps[("AV",)] is None
    order = [e.tensor for s in execution_order(cascade) for e in s.einsums]
    assert sorted(order) == sorted(e.tensor for e in cascade.einsums)


def test_reading_the_current_iteration_of_itself_is_a_cycle() -> None:
    text = """
    rank K
    input A[k]
    output R[k]
    R[0] = 0
    R[k+1] = R[k+1] + A[k]
    """
    with pytest.raises(VerifyError, match="dependency cycle R -> R"):
        verify(parse(text))


def test_sizes_bind_from_inputs_and_derive_partitions() -> None:
    cascade = attention_1pass(tile=16, batched=True, gqa_group=3)

    sizes = bind_sizes(cascade, {"P": 5}, {"K": (2, 4, 8, 50), "V": (2, 4, 8, 50)})

    assert sizes["M1"] == 4  # ceil(50 / 16)
    assert sizes["H"] == 12
    assert sizes["G"] == 4


def test_missing_sizes_name_every_missing_rank() -> None:
    with pytest.raises(ShapeError, match=r"ranks E, F, M, P unknown.*give E=\.\.\., F=\.\.\."):
        bind_sizes(attention_3pass())
    with pytest.raises(ShapeError, match="unknown rank X in sizes"):
        bind_sizes(attention_3pass(), {"X": 3})
    with pytest.raises(ShapeError, match="positive integer size"):
        bind_sizes(attention_3pass(), {"M": 0})


@pytest.mark.parametrize(
    "text",
    ["m1*M0+m0", "m1+1", "M1", "h//4", "(h+1)%R", "2*m-p", "ceil(M/M0)", "-m", "m-1"],
)
def test_index_text_round_trips(text: str) -> None:
    parsed = parse(f"rank H, M, M0, M1, P, R\ninput X[m]\noutput Y[m]\nY[m] = X[{text}]")
    (index,) = parsed.einsums[0].expr.indices
    assert format_index(index) == text
    assert parse(f"rank M\ninput X[m]\noutput Y[m]\nY[m] = X[{format_index(index)}]")


def test_quasi_affine() -> None:
    m, p = index_symbol("m"), index_symbol("p")
    big_m = size_symbol("M0")
    assert is_quasi_affine(m * big_m + p)
    assert is_quasi_affine(sympy.floor(m / 4) + 1)
    assert not is_quasi_affine(m * p)
    assert not is_quasi_affine(sympy.floor(m / p))


def test_builder_rejects_lower_case_rank() -> None:
    with pytest.raises(ValueError, match="upper case"):
        CascadeBuilder("x").rank("m")


def test_keywords_cannot_name_tensors_or_indices() -> None:
    b = CascadeBuilder("reserved")
    ceil = b.rank("CEIL")
    X = b.input("X", [ceil])
    b.output("inf", [ceil])
    b.let("inf", [ceil], X[ceil])

    with pytest.raises(VerifyError) as error:
        b.build()

    messages = [d.message for d in error.value.diagnostics]
    assert any("index variable 'ceil', a keyword" in m for m in messages)
    assert any("tensor name 'inf' is a keyword" in m for m in messages)


def test_running_update_over_an_inner_rank_is_rejected() -> None:
    text = """
    rank M, M0 = 4
    partition M -> M1, M0
    input X[m]
    output T[m1]
    BX[m1,m0] = X[m1*M0+m0]
    R[m1,0] = 0
    R[m1,m0+1] = R[m1,m0] + BX[m1,m0]
    T[m1] = R[m1,M0]
    """
    with pytest.raises(VerifyError, match="running update over m0, the inner rank"):
        verify(parse(text))


def test_division_by_zero_in_an_index_is_rejected() -> None:
    b = CascadeBuilder("bad_index")
    m = b.rank("M")
    X = b.input("X", [m])
    b.output("Y", [m])
    b.let("Y", [m], X[m // 0])

    with pytest.raises(VerifyError, match="not affine"):
        b.build()


def test_nan_fill_is_rejected() -> None:
    with pytest.raises(ValueError, match="NaN is not a valid fill"):
        Filter(Const(1.0), float("nan"))
