"""The pass lower bound (`attncc.analysis.passes`) against answers derived by hand.

Every expected value here was worked out from the definition (FuseMax, Section IV; DESIGN.md,
"Passes over data"), not by running the analysis: an Einsum that iterates rank R and reads a
value complete only after a whole traversal of R (a full reduction over R, or a running value's
final entry) starts a new pass; the passes are the longest chain of such reads plus one.

The library cascades are checked here in Python; the corpus `tests/analysis_cascades/*.ein`
states its answers in header comments:

    # passes: M1=1 M0=2                      pass count per analysed rank (result name)
    # ranks: M                               ranks passed to analyze_passes (default: as above)
    # placements: M0: BX=1 RM=after1 ...     pass N, "afterN" between passes, "before" = after0
    # new-pass links: M0: RM->LS             witness links that start a new pass ("-": none)
    # why: ...                               the hand derivation, for the reader
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path
from typing import Any

import pytest

from attncc.analysis.passes import Placement, RankPasses, analyze_passes
from attncc.errors import AnalysisError
from attncc.frontends.library import (
    attention_1pass,
    attention_2pass,
    attention_3pass,
    toy_cascade1,
    toy_cascade2,
    toy_cascade3,
)
from attncc.ir import Cascade, parse_file, verify

CORPUS = Path(__file__).resolve().parent / "analysis_cascades"
CORPUS_FILES = sorted(CORPUS.glob("*.ein"))


@dataclass
class Expected:
    """The hand-derived answers for one cascade, keyed by the result's rank name."""

    ranks: tuple[str, ...]
    passes: dict[str, int]
    placements: dict[str, dict[str, str]] = field(default_factory=dict)
    new_links: dict[str, set[tuple[str, str]]] = field(default_factory=dict)


def _placement_text(placement: Placement) -> str:
    """A placement in the header notation: "2" for pass 2, "after1", "before" (after 0)."""
    if placement.pass_number is not None:
        return str(placement.pass_number)
    return "before" if placement.after == 0 else f"after{placement.after}"


def _new_links(result: RankPasses) -> set[tuple[str, str]]:
    return {(link.producer, link.consumer) for link in result.witness if link.new_pass}


def _by_rank(results: tuple[RankPasses, ...]) -> dict[str, RankPasses]:
    return {r.rank: r for r in results}


def _check(results: tuple[RankPasses, ...], expected: Expected) -> None:
    """Compare every stated answer; the failure message names the rank and what differs."""
    got = _by_rank(results)
    assert set(got) == set(expected.passes), "analysed ranks"
    for rank, passes in expected.passes.items():
        assert got[rank].passes == passes, f"passes over {rank}"
    for rank, places in expected.placements.items():
        actual = {p.einsum: _placement_text(p) for p in got[rank].placements}
        assert actual == places, f"placements over {rank}"
    for rank, links in expected.new_links.items():
        assert _new_links(got[rank]) == links, f"new-pass witness links over {rank}"


def _pairs(text: str) -> dict[str, str]:
    return dict(item.split("=", 1) for item in text.split())


def _links(text: str) -> set[tuple[str, str]]:
    if text.strip() == "-":
        return set()
    return {tuple(item.split("->", 1)) for item in text.split()}  # type: ignore[misc]


def parse_header(path: Path) -> Expected:
    """The expected results stated in the leading `# key: value` comments of a corpus file."""
    passes: dict[str, int] = {}
    ranks: tuple[str, ...] | None = None
    placements: dict[str, dict[str, str]] = {}
    new_links: dict[str, set[tuple[str, str]]] = {}
    for line in path.read_text().splitlines():
        if not line.startswith("#"):
            break
        key, _, value = line[1:].partition(":")
        key = key.strip()
        if key == "passes":
            passes = {rank: int(n) for rank, n in _pairs(value).items()}
        elif key == "ranks":
            ranks = tuple(value.split())
        elif key == "placements":
            rank, _, rest = value.partition(":")
            placements[rank.strip()] = _pairs(rest)
        elif key == "new-pass links":
            rank, _, rest = value.partition(":")
            new_links[rank.strip()] = _links(rest)
    assert passes, f"{path.name}: no '# passes:' header"
    return Expected(ranks or tuple(passes), passes, placements, new_links)


# -- (a) the library cascades -----------------------------------------------------------------

# Hand derivations (M: keys; over E every attention cascade is 1 pass: only the score Einsum
# iterates e, and everything after it runs between passes).
# 3-pass: SN needs GM (max over all m) -> pass 2; A needs SD (sum over all m) -> pass 3.
ATTENTION_3PASS = Expected(
    ranks=("M",),
    passes={"M": 3},
    placements={"M": {"QK": "1", "GM": "1", "SN": "2", "SD": "2", "A": "3", "AV": "3"}},
    new_links={"M": {("GM", "SN"), ("SD", "A")}},
)
# 2-pass: the division moves after the AV sum, out of the m loop; SNV streams SN in pass 2.
ATTENTION_2PASS = Expected(
    ranks=("M",),
    passes={"M": 2},
    placements={"M": {"QK": "1", "GM": "1", "SN": "2", "SD": "2", "SNV": "2", "AV": "after2"}},
    new_links={"M": {("GM", "SN")}},
)
# 1-pass over tiles M1: every running value is read at m1 or m1+1 (this iteration); AV alone
# reads RNV[M1], RD[M1] and does not iterate m1. Within a tile (M0), SLN needs RM[m1+1], which
# needs LM, a max over all of m0, so the tile is traversed twice: 2 passes over M0. RM and PRM
# do not iterate m0 and run between the passes; RD, RNV and their rescales after pass 2.
ATTENTION_1PASS = Expected(
    ranks=("M",),
    passes={"M1": 1, "M0": 2},
    placements={
        "M1": {
            **dict.fromkeys(
                ("BK", "BV", "BQK", "LM", "RM", "SLN", "SLD", "SLNV", "PRM", "SPD", "RD"), "1"
            ),
            **{"SPNV": "1", "RNV": "1", "AV": "after1"},
        },
        "M0": {
            **{"BK": "1", "BV": "1", "BQK": "1", "LM": "1", "RM": "after1", "PRM": "after1"},
            **{"SLN": "2", "SLD": "2", "SLNV": "2"},
            **dict.fromkeys(("SPD", "RD", "SPNV", "RNV", "AV"), "after2"),
        },
    },
    new_links={"M1": set(), "M0": {("RM", "SLN")}},
)
# Toy 1: Z iterates k and reads Y, a sum over all of k. Toy 2: X sums A in Y's pass, Z is
# after it. Toy 3: RZ reads RY[k] and RY[k+1], both this iteration; Z reads RZ[K] outside k.
TOY_CASCADE1 = Expected(
    ranks=("K",),
    passes={"K": 2},
    placements={"K": {"Y": "1", "Z": "2"}},
    new_links={"K": {("Y", "Z")}},
)
TOY_CASCADE2 = Expected(
    ranks=("K",),
    passes={"K": 1},
    placements={"K": {"Y": "1", "X": "1", "Z": "after1"}},
    new_links={"K": set()},
)
TOY_CASCADE3 = Expected(
    ranks=("K",),
    passes={"K": 1},
    placements={"K": {"RY": "1", "RZ": "1", "Z": "after1"}},
    new_links={"K": set()},
)

LIBRARY_CASES: list[tuple[str, Callable[..., Cascade], Expected]] = [
    ("attention_3pass", attention_3pass, ATTENTION_3PASS),
    ("attention_2pass", attention_2pass, ATTENTION_2PASS),
    ("attention_1pass", attention_1pass, ATTENTION_1PASS),
    ("toy_cascade1", toy_cascade1, TOY_CASCADE1),
    ("toy_cascade2", toy_cascade2, TOY_CASCADE2),
    ("toy_cascade3", toy_cascade3, TOY_CASCADE3),
]


@pytest.mark.parametrize(
    ("name", "build", "expected"), LIBRARY_CASES, ids=[c[0] for c in LIBRARY_CASES]
)
def test_library_cascade(name: str, build: Callable[..., Cascade], expected: Expected) -> None:
    _check(analyze_passes(build(), expected.ranks), expected)


def test_attention_1pass_tile_ranks_name_their_parent() -> None:
    outer, inner = analyze_passes(attention_1pass(), ("M",))
    assert (outer.rank, outer.parent, outer.level) == ("M1", "M", "outer")
    assert (inner.rank, inner.parent, inner.level) == ("M0", "M", "inner")


ATTENTION: dict[str, Callable[..., Cascade]] = {
    "attention_3pass": attention_3pass,
    "attention_2pass": attention_2pass,
    "attention_1pass": attention_1pass,
}
VARIANTS: list[dict[str, Any]] = [
    {"causal": True},
    {"batched": True},
    {"batched": True, "gqa_group": 4},
    {"causal": True, "batched": True, "gqa_group": 4, "head_dim": 64, "value_dim": 64},
]
VARIANT_COUNTS: dict[str, dict[str, int]] = {
    "attention_3pass": {"M": 3, "E": 1},
    "attention_2pass": {"M": 2, "E": 1},
    "attention_1pass": {"M1": 1, "M0": 2, "E": 1},
}


@pytest.mark.parametrize("options", VARIANTS, ids=lambda o: ",".join(sorted(o)))
@pytest.mark.parametrize("name", sorted(VARIANT_COUNTS))
def test_attention_variants_keep_the_counts(name: str, options: dict[str, Any]) -> None:
    """A causal filter, batch and head ranks (and h//4 reads under GQA) change no traversal of
    M or E: the filter sits on the score Einsum, which iterates m anyway."""
    cascade = ATTENTION[name](**options)
    counts = {r.rank: r.passes for r in analyze_passes(cascade, ("M", "E"))}
    assert counts == VARIANT_COUNTS[name]


@pytest.mark.parametrize("name", sorted(VARIANT_COUNTS))
def test_attention_plain_counts_over_e(name: str) -> None:
    # The plain cascades too: E is reduced once, by the score Einsum.
    cascade = ATTENTION[name]()
    assert {r.rank: r.passes for r in analyze_passes(cascade, ("M", "E"))} == VARIANT_COUNTS[name]


# -- (b) the corpus ---------------------------------------------------------------------------


def test_corpus_is_large_enough() -> None:
    assert len(CORPUS_FILES) >= 8


@pytest.mark.parametrize("path", CORPUS_FILES, ids=lambda p: p.stem)
def test_corpus_cascade(path: Path) -> None:
    cascade = parse_file(path)
    verify(cascade)
    expected = parse_header(path)
    # A header must state placements and new-pass links for every rank it counts.
    assert set(expected.placements) == set(expected.passes), "placements header"
    assert set(expected.new_links) == set(expected.passes), "new-pass links header"
    assert all(
        set(places) == {e.tensor for e in cascade.einsums}
        for places in expected.placements.values()
    ), "placements header must list every Einsum"
    _check(analyze_passes(cascade, expected.ranks), expected)


def _all_results() -> list[Any]:
    cases = [pytest.param(build(), exp.ranks, id=name) for name, build, exp in LIBRARY_CASES]
    cases += [pytest.param(parse_file(p), parse_header(p).ranks, id=p.stem) for p in CORPUS_FILES]
    return cases


@pytest.mark.parametrize(("cascade", "ranks"), _all_results())
def test_witness_is_a_chain_that_proves_the_count(cascade: Cascade, ranks: tuple[str, ...]) -> None:
    """The witness is a path of dependencies, and it proves the bound: N new-pass links on a
    chain mean N + 1 passes."""
    for result in analyze_passes(cascade, ranks):
        links = result.witness
        for before, after in pairwise(links):
            assert before.consumer == after.producer, f"{cascade.name}/{result.rank}: broken chain"
        assert sum(link.new_pass for link in links) == max(result.passes - 1, 0), (
            f"{cascade.name}/{result.rank}: witness does not prove {result.passes} passes"
        )


def test_final_value_read_is_the_reason() -> None:
    # online_softmax's Y reads no reduction over m, only the final entries RM[M,p] and
    # RD[M,p]; that read, not a reduction, must be what the witness names.
    result = analyze_passes(parse_file(CORPUS / "online_softmax.ein"), ("M",))[0]
    link = next(link for link in result.witness if link.new_pass)
    assert "[M,p]" in link.reason


# -- (c) errors -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("cascade", "rank"),
    [
        (toy_cascade1(), "M"),
        (attention_3pass(), "K"),
        (parse_file(CORPUS / "rmsnorm.ein"), "M"),
    ],
    ids=["toy_cascade1-M", "attention_3pass-K", "rmsnorm-M"],
)
def test_unknown_rank_is_an_analysis_error(cascade: Cascade, rank: str) -> None:
    with pytest.raises(AnalysisError, match=rf"\b{rank}\b"):
        analyze_passes(cascade, (rank,))
