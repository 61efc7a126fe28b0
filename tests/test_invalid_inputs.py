"""Every malformed cascade in tests/ir_invalid/ yields a located, specific AttnccError.

Each `.ein` file holds a small realistic cascade with exactly one mistake, and states what a user
must be told in its leading comment lines:

    # error: ParseError | VerifyError   which error class
    # at: LINE[:COLUMN]                 ParseError: line and column; VerifyError: line
    # message: TEXT                     a substring of the message (the line may repeat)
    # einsum: / tensor: / rank: NAME    the diagnostic's fields, where it must name them
    # diagnostics: N                    VerifyError only: how many diagnostics the mistake earns

A ParseError comes from `parse_file`; a VerifyError from `verify` on what parsed. Anything that is
not an AttnccError (an AttributeError, KeyError, ...) escaping attncc is a bug, and fails here.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from attncc.errors import AttnccError, Diagnostic, ParseError, VerifyError
from attncc.ir import parse, parse_file, verify

CORPUS = Path(__file__).parent / "ir_invalid"
FILES = sorted(CORPUS.glob("*.ein"))
# The brief promises a corpus of at least this many mistakes; an empty glob must not pass.
MIN_FILES = 24

_KEY = re.compile(r"#\s*(error|at|message|einsum|tensor|rank|diagnostics):\s*(.*?)\s*$")
_FIELDS = ("einsum", "tensor", "rank")


@dataclass(frozen=True)
class Expectation:
    """What the leading comments of one corpus file promise."""

    error: str
    line: int
    column: int | None
    messages: tuple[str, ...]
    fields: dict[str, str] = field(default_factory=dict)
    diagnostics: int | None = None


def read_expectation(path: Path) -> Expectation:
    """Read the `# key: value` lines of the comment block that opens `path`."""
    values: dict[str, list[str]] = {}
    for text in path.read_text().splitlines():
        if not text.startswith("#"):
            break
        match = _KEY.match(text)
        if match:
            values.setdefault(match[1], []).append(match[2])
    missing = {"error", "at", "message"} - values.keys()
    assert not missing, f"{path.name}: header lacks {', '.join(sorted(missing))}"
    line, _, column = values["at"][0].partition(":")
    count = values.get("diagnostics")
    return Expectation(
        error=values["error"][0],
        line=int(line),
        column=int(column) if column else None,
        messages=tuple(values["message"]),
        fields={key: values[key][0] for key in _FIELDS if key in values},
        diagnostics=int(count[0]) if count else None,
    )


def error_of(path: Path) -> AttnccError:
    """Parse and verify `path`, returning the AttnccError it raises.

    Other exceptions are turned into a failure that says so, rather than a bare traceback, because
    an escaping Python exception is itself the bug being reported.
    """
    try:
        verify(parse_file(path))
    except AttnccError as error:
        return error
    except Exception as error:
        pytest.fail(f"{path.name}: unhandled {type(error).__name__}: {error}")
    pytest.fail(f"{path.name}: accepted, but it holds a mistake")


def matching_diagnostic(error: VerifyError, expect: Expectation) -> Diagnostic:
    """The diagnostic whose message has every expected substring; the mistake must be among them."""
    found = [d for d in error.diagnostics if all(m in d.message for m in expect.messages)]
    assert found, f"no diagnostic says {expect.messages!r}; got:\n{error}"
    return found[0]


def check_parse_error(path: Path, error: ParseError, expect: Expectation) -> None:
    assert error.span is not None, f"unlocated: {error}"
    assert expect.column is not None, f"{path.name}: a ParseError expectation needs LINE:COLUMN"
    assert error.span.file == str(path)
    assert (error.span.line, error.span.column) == (expect.line, expect.column), str(error)
    for text in expect.messages:
        assert text in error.message, f"{text!r} not in:\n{error.message}"


def check_verify_error(path: Path, error: VerifyError, expect: Expectation) -> None:
    # Every diagnostic, not only the expected one, must point into the file.
    for diagnostic in error.diagnostics:
        assert diagnostic.span is not None, f"unlocated diagnostic: {diagnostic}"
        assert diagnostic.span.file == str(path), str(diagnostic)
    diagnostic = matching_diagnostic(error, expect)
    assert diagnostic.span is not None
    assert diagnostic.span.line == expect.line, str(diagnostic)
    for key, value in expect.fields.items():
        assert getattr(diagnostic, key) == value, f"{key} of: {diagnostic!r}"
    if expect.diagnostics is not None:
        assert len(error.diagnostics) == expect.diagnostics, str(error)


def test_corpus_is_not_empty() -> None:
    assert len(FILES) >= MIN_FILES, f"only {len(FILES)} files in {CORPUS}"


@pytest.mark.parametrize("path", FILES, ids=[p.stem for p in FILES])
def test_error_is_located_and_specific(path: Path) -> None:
    expect = read_expectation(path)
    error = error_of(path)
    assert type(error).__name__ == expect.error, f"expected {expect.error}, got:\n{error}"
    if isinstance(error, ParseError):
        check_parse_error(path, error, expect)
    else:
        assert isinstance(error, VerifyError)
        check_verify_error(path, error, expect)


@pytest.mark.parametrize("path", FILES, ids=[p.stem for p in FILES])
def test_error_prints_file_and_line(path: Path) -> None:
    """What a user reads in a terminal names the file and line, as `name.ein:LINE:`."""
    expect = read_expectation(path)
    error = error_of(path)
    where = f"{path.name}:{expect.line}:"
    assert where in str(error), str(error)
    if isinstance(error, VerifyError):
        assert where in str(matching_diagnostic(error, expect))


def test_comment_lines_are_ignored() -> None:
    """Every corpus file opens with several comment lines, so the parser must skip them (and
    comment lines between statements) exactly as it skips a comment at the end of a line."""
    plain = "rank M, P\ninput X[m,p] : f32\noutput Y[p] : f32\nY[p] = X[m,p]\n"
    commented = "# one\n# two\n\nrank M, P\n# three\ninput X[m,p] : f32\noutput Y[p] : f32\n"
    commented += "# four\n\n# five\nY[p] = X[m,p]  # six\n# seven\n"
    assert parse(commented, name="c") == parse(plain, name="c")
