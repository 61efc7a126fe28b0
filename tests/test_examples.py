"""The shipped text IR: every `examples/*.ein` and every IR block of docs/ir.md.

The examples were written by the printer from library cascades; these tests hold them to that
origin (parse, verify, compare with the library cascade built with the stated options), so an
edit to the printer, the parser or the library that changes the text form shows up here. The
docs test keeps the IR reference honest: each ```ein block in docs/ir.md must parse.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from attncc.frontends.library import LIBRARY
from attncc.ir import OPS, parse, parse_file, print_cascade, verify

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
IR_DOC = ROOT / "docs" / "ir.md"
GRAMMAR = ROOT / "attncc" / "ir" / "grammar.lark"

# File stem -> (library cascade, keyword options it was printed with). A new example needs a row
# here; test_every_example_is_in_the_table enforces that.
EXAMPLE_SOURCES: dict[str, tuple[str, dict[str, Any]]] = {
    "attention_3pass": ("attention_3pass", {}),
    "attention_2pass": ("attention_2pass", {}),
    "attention_1pass": ("attention_1pass", {}),
    "attention_1pass_causal_gqa": (
        "attention_1pass",
        {
            "causal": True,
            "batched": True,
            "gqa_group": 4,
            "head_dim": 64,
            "value_dim": 64,
            "tile": 64,
        },
    ),
    "attention_3pass_causal": ("attention_3pass", {"causal": True}),
    "toy_cascade1": ("toy_cascade1", {}),
    "toy_cascade2": ("toy_cascade2", {}),
    "toy_cascade3": ("toy_cascade3", {}),
}

# Examples that docs/ir.md shows in full ("The reference cascades"); the causal 3-pass one differs
# from the plain one by a filter, which the docs show on its own.
DOCUMENTED_EXAMPLES = sorted(set(EXAMPLE_SOURCES) - {"attention_3pass_causal"})


def _fenced(tag: str) -> re.Pattern[str]:
    """A fenced block tagged `tag`: group 1 is its body, without the fences."""
    return re.compile(rf"^```{tag}[ \t]*\n(.*?)^```[ \t]*$", re.MULTILINE | re.DOTALL)


def _example_stems() -> set[str]:
    return {path.stem for path in EXAMPLES.glob("*.ein")}


def _ein_blocks() -> list[tuple[int, str]]:
    """(line of the opening fence, block text) for every ```ein block of docs/ir.md."""
    text = IR_DOC.read_text()
    return [(text.count("\n", 0, m.start()) + 1, m.group(1)) for m in _fenced("ein").finditer(text)]


def _example_body(stem: str) -> str:
    """The printer's text of an example: the file without its `#` header."""
    lines = (EXAMPLES / f"{stem}.ein").read_text().splitlines(keepends=True)
    return "".join(line for line in lines if not line.startswith("#"))


def test_every_example_is_in_the_table() -> None:
    assert EXAMPLE_SOURCES, "the example table is empty"
    stems = _example_stems()
    assert stems, f"no examples found under {EXAMPLES}"
    untested = sorted(stems - EXAMPLE_SOURCES.keys())
    assert not untested, f"examples without a row in EXAMPLE_SOURCES: {untested}"
    missing = sorted(EXAMPLE_SOURCES.keys() - stems)
    assert not missing, f"EXAMPLE_SOURCES rows without an examples/*.ein file: {missing}"


@pytest.mark.parametrize("stem", sorted(EXAMPLE_SOURCES))
def test_example_is_the_library_cascade(stem: str) -> None:
    name, options = EXAMPLE_SOURCES[stem]
    parsed = parse_file(EXAMPLES / f"{stem}.ein")
    verify(parsed)
    assert parsed == LIBRARY[name](**options)


@pytest.mark.parametrize("stem", sorted(EXAMPLE_SOURCES))
def test_example_is_printer_output(stem: str) -> None:
    # The files are generated, not hand-written: apart from the `#` header they are exactly
    # what the printer writes today, so a printer change means regenerating them.
    name, options = EXAMPLE_SOURCES[stem]
    assert _example_body(stem) == print_cascade(LIBRARY[name](**options))


def test_ir_doc_has_ein_blocks() -> None:
    # Guards the extraction below: a changed fence style would otherwise test nothing.
    assert len(_ein_blocks()) >= 5


@pytest.mark.parametrize(
    "block", [pytest.param(text, id=f"ir.md:{line}") for line, text in _ein_blocks()]
)
def test_ir_doc_block_parses(block: str) -> None:
    parse(block)


@pytest.mark.parametrize("stem", DOCUMENTED_EXAMPLES)
def test_ir_doc_shows_example(stem: str) -> None:
    blocks = [body for _, body in _ein_blocks()]
    assert _example_body(stem) in blocks, f"docs/ir.md does not show examples/{stem}.ein as is"


def test_ir_doc_grammar_is_grammar_lark() -> None:
    blocks = _fenced("lark").findall(IR_DOC.read_text())
    assert blocks == [GRAMMAR.read_text()], "docs/ir.md's grammar differs from grammar.lark"


def test_ir_doc_lists_every_operator() -> None:
    # The operator table has one row per map operator, starting with its name in backticks.
    rows = {
        line.split("|")[1].strip()
        for line in IR_DOC.read_text().splitlines()
        if line.startswith("| `")
    }
    assert {f"`{name}`" for name in OPS} <= rows
