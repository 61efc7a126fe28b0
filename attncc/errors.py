"""The one error hierarchy of attncc.

Every error a user can provoke derives from `AttnccError` and says what is wrong, where (file,
line, column, Einsum, tensor, rank) and, where it can, how to fix it. Python's own exceptions
(`AssertionError`, `KeyError`, ...) escaping attncc are bugs in attncc, never a way of reporting
bad input.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class SourceSpan:
    """A place in a text file: 1-based line and column, and the file name when there is one."""

    line: int
    column: int
    file: str | None = None

    def __str__(self) -> str:
        where = f"{self.line}:{self.column}"
        return f"{self.file}:{where}" if self.file else f"line {where}"


@dataclass(frozen=True)
class Diagnostic:
    """One located problem. `einsum`, `tensor` and `rank` name the IR objects involved."""

    message: str
    span: SourceSpan | None = None
    einsum: str | None = None
    tensor: str | None = None
    rank: str | None = None

    def __str__(self) -> str:
        where = [str(self.span)] if self.span else []
        if self.einsum:
            where.append(f"Einsum {self.einsum}")
        prefix = ", ".join(where)
        return f"{prefix}: {self.message}" if prefix else self.message


class AttnccError(Exception):
    """Base of every error attncc reports to its users."""


class ParseError(AttnccError):
    """Text IR that does not follow the grammar; carries the span of the offending token."""

    def __init__(self, message: str, span: SourceSpan | None = None) -> None:
        self.message = message
        self.span = span
        super().__init__(f"{span}: {message}" if span else message)


class VerifyError(AttnccError):
    """A cascade that breaks an IR rule; carries every diagnostic the verifier found."""

    def __init__(self, diagnostics: list[Diagnostic]) -> None:
        self.diagnostics = tuple(diagnostics)
        lines = "\n".join(f"  {d}" for d in self.diagnostics)
        count = len(self.diagnostics)
        super().__init__(f"invalid cascade ({count} error{'s' if count != 1 else ''}):\n{lines}")


class ShapeError(AttnccError):
    """Sizes or input arrays that do not fit the cascade (missing size, wrong rank extent)."""


class ExecutionError(AttnccError):
    """A verified cascade that cannot be executed on the given data (e.g. an out-of-range read)."""


class PassError(AttnccError):
    """A rewrite whose preconditions do not hold; says which and why."""


class LoweringError(AttnccError):
    """A cascade a backend cannot lower; says what stands in the way."""


class AnalysisError(AttnccError):
    """A malformed analysis request: a rank the cascade lacks, a size that is not given."""
