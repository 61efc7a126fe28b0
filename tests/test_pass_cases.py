"""Passes as text: each tests/pass_cases/*.ein holds an input cascade, the pipeline to run
(`# RUN:`) and the expected output (after `# EXPECT:`, commented out so the file parses).
The output must print exactly as expected and compute what the input computes."""

from __future__ import annotations

from pathlib import Path

import pytest

from attncc.differential import check_equivalent
from attncc.ir import parse_file, print_cascade
from attncc.passes import run_pipeline

CASES = sorted((Path(__file__).parent / "pass_cases").glob("*.ein"))


def test_there_are_cases() -> None:
    assert len(CASES) >= 4


def expectation(path: Path) -> tuple[str, str]:
    text = path.read_text()
    (pipeline,) = [line.split(":", 1)[1].strip() for line in text.splitlines() if "# RUN:" in line]
    expected = text.split("# EXPECT:\n", 1)[1]
    return pipeline, "".join(line[2:] + "\n" for line in expected.splitlines())


@pytest.mark.parametrize("path", CASES, ids=lambda p: p.stem)
def test_pass_case(path: Path) -> None:
    pipeline, expected = expectation(path)
    cascade = parse_file(path)

    result, _ = run_pipeline(cascade, pipeline)

    assert print_cascade(result) == expected
    check_equivalent(cascade, result)
