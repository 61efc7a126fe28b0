"""`attncc.explain(model, *inputs)`: which attention sites of a model attncc runs, and why not
the others.

It compiles the model with a backend that records every site it sees (all the graphs Dynamo
captures, across graph breaks), runs it once without gradients, and returns the records.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from attncc.frontends.torch.backend import AttnccBackend, BackendOptions, SiteReport


@dataclass(frozen=True)
class Explanation:
    """Every attention site found in a run of the model, in the order Dynamo compiled them."""

    sites: tuple[SiteReport, ...]

    @property
    def compiled(self) -> tuple[SiteReport, ...]:
        return tuple(s for s in self.sites if s.compiled)

    @property
    def fallbacks(self) -> tuple[SiteReport, ...]:
        return tuple(s for s in self.sites if not s.compiled)

    def __str__(self) -> str:
        head = (
            f"{len(self.sites)} attention site(s): {len(self.compiled)} compiled by attncc, "
            f"{len(self.fallbacks)} left to PyTorch"
        )
        return "\n".join([head, *(f"  {s.line()}" for s in self.sites)])


def explain(
    model: torch.nn.Module,
    *args: Any,
    options: Mapping[str, Any] | None = None,
    **kwargs: Any,
) -> Explanation:
    """Run `model(*args, **kwargs)` compiled with attncc (backend `options` as in
    attncc.backend) and report every attention site. A new backend object is a new compile
    for Dynamo, so graphs the user compiled before are neither reused nor discarded."""
    recorder = AttnccBackend(BackendOptions.parse(options or {}))
    with torch.no_grad():
        torch.compile(model, backend=recorder)(*args, **kwargs)
    return Explanation(tuple(recorder.reports))
