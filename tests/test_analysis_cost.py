"""Symbolic cost, footprint, reports and graphs of cascades (passes: test_analysis_passes)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import sympy

from attncc.analysis.cost import OP_KINDS, cascade_cost, evaluate
from attncc.analysis.dot import to_dot, write_dot
from attncc.analysis.footprint import LiveKind, footprint
from attncc.analysis.passes import analyze_passes
from attncc.analysis.report import analyze, format_report, report_json
from attncc.backends.numpy.ops import MAP_OPS
from attncc.cli import main
from attncc.errors import AnalysisError
from attncc.frontends.library import attention_1pass, attention_2pass, attention_3pass
from attncc.ir import OPS, size_symbol

M, P, F, E = (size_symbol(n) for n in "MPFE")


def rank(cascade, name: str):
    return next(p for p in analyze_passes(cascade) if p.rank == name)


def test_3pass_flops_are_the_hand_count() -> None:
    cost = cascade_cost(attention_3pass(head_dim=64, value_dim=64))

    # QK: E*M*P multiply-accumulates, then the 1/sqrt(E) scale once per score (M*P) and
    # rsqrt(E) once; GM: M*P max; SN: M*P subtractions and exps; SD: M*P adds; A: M*P
    # divisions; AV: F*M*P multiply-accumulates. A MAC is two flops.
    hand = 2 * 64 * M * P + M * P + 1 + M * P + 2 * M * P + M * P + M * P + 2 * 64 * M * P
    assert sympy.expand(cost.flops - hand) == 0
    totals = dict(cost.totals())
    assert totals["mac"] == 128 * M * P
    assert totals["exp"] == M * P
    assert totals["div"] == M * P
    assert totals["max"] == M * P


def test_deferred_division_divides_f_p_times() -> None:
    per_einsum = {c.einsum: c for c in cascade_cost(attention_2pass()).einsums}

    assert per_einsum["AV"].op("div") == F * P


def test_compulsory_bytes_follow_dtypes() -> None:
    cost = cascade_cost(attention_3pass())

    assert sympy.expand(cost.bytes_in - 4 * (E * P + E * M + F * M)) == 0
    assert cost.bytes_out == 4 * F * P


def test_3pass_must_hold_or_spill_an_m_fiber_twice() -> None:
    cascade = attention_3pass()
    result = footprint(cascade, rank(cascade, "M"))

    fibers = result.fibers()
    assert [f.tensor for f in fibers] == ["QK", "SN"]
    assert all(f.fiber_length == M for f in fibers)
    # Each fiber is written once and read back once, in passes 2 and 3.
    assert result.spill_elements == 4 * M * P
    assert {t.tensor: t.kind for t in result.passes[1].live} == {
        "QK": LiveKind.FIBER,
        "GM": LiveKind.REDUCED,
    }


def test_1pass_footprint_does_not_grow_with_m() -> None:
    cascade = attention_1pass(tile=64)
    outer = footprint(cascade, rank(cascade, "M1"))
    inner = footprint(cascade, rank(cascade, "M0"))

    assert outer.spill_elements == 0
    assert {t.kind for p in outer.passes for t in p.live} == {LiveKind.RUNNING}
    assert sympy.expand(outer.peak_elements - (F * P + 2 * P)) == 0
    for result in (outer, inner):
        assert not (result.peak_elements.free_symbols & {M, size_symbol("M1")})


def test_evaluate_names_every_missing_size() -> None:
    with pytest.raises(AnalysisError, match=r"no size for M, P; give them with --shapes M=\.\.\."):
        evaluate(M * P + 1, {"E": 64})
    assert evaluate(M * P + 1, {"M": 3, "P": 4}) == 13


def test_report_table_and_json() -> None:
    analysis = analyze(attention_3pass(), ("M",))

    table = format_report(analysis, {"E": 64, "F": 64, "M": 1024, "P": 1024})
    data = report_json(analysis, {"E": 64, "F": 64, "M": 1024, "P": 1024})

    assert "passes over M: 3" in table
    assert "witness: QK -> GM => SN -> SD => A -> AV" in table
    assert "fibers of length M = 1,024 of QK, SN" in table
    assert data["ranks"][0]["passes"] == 3
    assert data["ranks"][0]["fibers"] == ["QK", "SN"]
    assert data["flops"] == 2 * 64 * 1024 * 1024 * 2 + 6 * 1024 * 1024 + 1
    json.dumps(data)


def test_report_rejects_unknown_and_missing_sizes() -> None:
    analysis = analyze(attention_3pass())
    with pytest.raises(AnalysisError, match="Z, which is not a rank"):
        format_report(analysis, {"Z": 1})
    with pytest.raises(AnalysisError, match="no size for F, M, P"):
        format_report(analysis, {"E": 64})


def test_dot_clusters_passes_and_marks_forcing_edges(tmp_path: Path) -> None:
    cascade = attention_3pass()
    dot = to_dot(cascade, rank(cascade, "M")).source

    assert "subgraph cluster_pass3" in dot
    assert "GM -> SN [color=red penwidth=2]" in dot
    assert "QK -> SN\n" in dot
    written = write_dot(to_dot(cascade), tmp_path / "g.dot")
    assert written.read_text().startswith("digraph attention_3pass")


def test_analyze_command(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    dot = tmp_path / "graph.dot"
    status = main(["analyze", "attention_1pass", "--rank", "M", "--dot", str(dot)])
    out = capsys.readouterr().out

    assert status == 0
    assert "passes over M1 (M -> tiles, the traversal to memory): 1" in out
    assert "passes over M0 (M -> within a tile): 2" in out
    assert "cluster_pass1" in dot.read_text()

    assert main(["analyze", "attention_3pass", "--json", "--shapes", "E=8,F=8,M=16,P=16"]) == 0
    assert json.loads(capsys.readouterr().out)["ranks"][1]["passes"] == 3

    assert main(["analyze", "attention_3pass", "--rank", "X"]) == 1
    assert "rank X is not a rank of attention_3pass" in capsys.readouterr().err


def test_readme_shows_the_real_analyze_output() -> None:
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    command = "$ .venv/bin/attncc analyze attention_3pass\n"
    shown = readme.split(command, 1)[1].split("```", 1)[0]

    assert shown == format_report(analyze(attention_3pass()))


def test_every_operator_has_a_cost_kind_and_a_numpy_meaning() -> None:
    assert set(OP_KINDS) == set(OPS)
    assert set(MAP_OPS) == set(OPS)
