"""Running a pipeline: each pass in turn, the verifier after each, timings and remarks kept,
and the IR printed after the passes the user asks to see."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from attncc.errors import PassError, VerifyError
from attncc.ir import Cascade, verify
from attncc.passes.base import CascadePass
from attncc.passes.registry import parse_pipeline

log = logging.getLogger("attncc")


@dataclass(frozen=True)
class PassRecord:
    name: str
    seconds: float
    changed: bool
    remarks: tuple[str, ...]


@dataclass(frozen=True)
class PassManager:
    """`print_after`: names of passes after which `printer` gets the IR (`*` for all)."""

    passes: tuple[CascadePass, ...]
    print_after: frozenset[str] = frozenset()
    printer: Callable[[str, Cascade], None] | None = None

    def run(self, cascade: Cascade) -> tuple[Cascade, tuple[PassRecord, ...]]:
        verify(cascade)
        records = []
        for step in self.passes:
            start = time.perf_counter()
            result = step.apply(cascade)
            seconds = time.perf_counter() - start
            try:
                verify(result.cascade)
            except VerifyError as error:
                raise PassError(f"pass {step.name} produced invalid IR:\n{error}") from error
            changed = result.cascade != cascade
            for remark in result.remarks:
                log.info("%s: %s", step.name, remark)
            records.append(PassRecord(step.name, seconds, changed, result.remarks))
            cascade = result.cascade
            if self.printer and (step.name in self.print_after or "*" in self.print_after):
                self.printer(step.name, cascade)
        return cascade, tuple(records)


def run_pipeline(
    cascade: Cascade, pipeline: str | Sequence[CascadePass]
) -> tuple[Cascade, tuple[PassRecord, ...]]:
    passes = parse_pipeline(pipeline) if isinstance(pipeline, str) else tuple(pipeline)
    return PassManager(passes).run(cascade)
