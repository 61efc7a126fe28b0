"""What a pass is: a frozen dataclass with a `name` and its options as fields, whose `apply`
returns the rewritten cascade and remarks that say what it did not rewrite and why.

A pass whose preconditions fail on part of a cascade leaves that part unchanged and says so;
it raises `PassError` only for options that make no sense for the cascade (an unknown rank).
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
