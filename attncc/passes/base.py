"""What a pass is: a frozen dataclass with a `name` and its options as fields, whose `apply`
returns the rewritten cascade and remarks that say what it did not rewrite and why.

A pass whose preconditions fail on part of a cascade leaves that part unchanged and says so.
It raises `PassError` for options that make no sense for the cascade (an unknown rank), and
where a partial rewrite would be wrong or only defer a less clear failure: `reorder` cannot
permute some reads and not others, and `partition` names the way to run an input copied in
another token order rather than leave the backends to refuse an untiled key rank.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import ClassVar

from attncc.ir import Cascade


@dataclass(frozen=True)
class PassResult:
    cascade: Cascade
    remarks: tuple[str, ...] = ()


@dataclass(frozen=True)
class CascadePass(abc.ABC):
    """Subclasses set `name`, declare options as fields and implement `apply`."""

    name: ClassVar[str] = ""

    @abc.abstractmethod
    def apply(self, cascade: Cascade) -> PassResult: ...
