"""`attncc.explain(model, *inputs)`: which attention sites of a model attncc runs, and why not
the others.

It compiles the model with a backend that records every site it sees (all the graphs Dynamo
captures, across graph breaks), runs it once without gradients, and returns the records.
"""

from __future__ import annotations

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


def explain(model: torch.nn.Module, *inputs: Any, **options: Any) -> Explanation:
    """Run `model(*inputs)` compiled with attncc (backend `options` as in attncc.backend,
    plus `kwargs`, a dict of keyword inputs) and report every attention site."""
    kwargs = options.pop("kwargs", {})
    recorder = AttnccBackend(BackendOptions.parse(options))
    # A fresh compile: cached graphs from an earlier torch.compile would bypass the recorder.
    torch._dynamo.reset()
    with torch.no_grad():
        torch.compile(model, backend=recorder)(*inputs, **kwargs)
    torch._dynamo.reset()
    return Explanation(tuple(recorder.reports))
