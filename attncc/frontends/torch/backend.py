"""The torch.compile backend `attncc`: attention inside a model is found, compiled and run;
everything else is left to PyTorch.

`torch.compile(model, backend="attncc")` finds it through the `torch_dynamo_backends` entry
point. For each FX graph Dynamo captures, the backend finds the attention sites
(recognize.py), builds each one's cascade, checks that the tiled backends can lower it, and
replaces the site with a call to the custom op `attncc::attention` (ops.py). A site it cannot
handle stays as PyTorch code, with the reason on the `attncc` logger. The rewritten graph then
goes to the inner compiler: run as is (eager), or through AOTAutograd and Inductor, which see
the custom op through its fake implementation.

Options, as keywords of `attncc.backend(...)` or `torch.compile(..., options={...})`:
`target` (auto | numpy | triton | reference: auto runs CPU tensors with NumPy and CUDA tensors
with Triton), `passes` (a pipeline run on each cascade before lowering, e.g. "flash"), and
`inner` (eager | aot_eager | inductor).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

import torch
from torch import fx

from attncc.analysis import count_passes
from attncc.backends.execute import lower_for_tiles
from attncc.backends.schedule import schedule
from attncc.backends.tile_program import tile_program
from attncc.errors import AttnccError
from attncc.frontends.torch.ops import Target, register_site
from attncc.frontends.torch.recognize import Rejected, Site, find_sites
from attncc.frontends.torch.spec import attention_cascade
from attncc.ir import Cascade, print_cascade
from attncc.passes import run_pipeline

log = logging.getLogger("attncc")

_INNER = ("eager", "aot_eager", "inductor")


@dataclass(frozen=True)
class BackendOptions:
    target: Target = Target.AUTO
    passes: str | None = None
    inner: str = "eager"

    @staticmethod
    def parse(options: Mapping[str, Any]) -> BackendOptions:
        """Options given by name, checked: a typo is an error, not a silent default."""
        known = {f.name for f in fields(BackendOptions)}
        unknown = sorted(set(options) - known)
        if unknown:
            raise AttnccError(
                f"unknown attncc backend option(s) {', '.join(unknown)}; "
                f"options: {', '.join(sorted(known))}"
            )
        target = options.get("target", Target.AUTO.value)
        try:
            target = Target(target.value if isinstance(target, Target) else target)
        except ValueError:
            choices = ", ".join(t.value for t in Target)
            raise AttnccError(f"attncc backend target {target!r}: choose {choices}") from None
        inner = options.get("inner", "eager")
        if inner not in _INNER:
            raise AttnccError(f"attncc backend inner {inner!r}: choose {', '.join(_INNER)}")
        return BackendOptions(target, options.get("passes"), inner)

    def overlaid(self, options: Mapping[str, Any]) -> BackendOptions:
        """These options with those in `options` (torch.compile's options=) replacing them."""
        mine = {"target": self.target, "passes": self.passes, "inner": self.inner}
        return BackendOptions.parse({**mine, **options})


@dataclass(frozen=True)
class SiteReport:
    """One attention site: where it is, whether attncc runs it, and what it computes."""

    where: str
    compiled: bool
    reason: str = ""
    spec: str = ""
    passes: tuple[int, int] | None = None
    """The cascade's pass count over the key sequence as recognized and as compiled."""
    cascade: str = ""
    """The compiled cascade, as text IR."""

    def line(self) -> str:
        if not self.compiled:
            return f"PyTorch  {self.where}: {self.reason}"
        written, compiled = self.passes or (0, 0)
        return f"attncc   {self.where}: {self.spec}; {written} -> {compiled} pass(es)"


@dataclass(eq=False)
class AttnccBackend:
    """A torch.compile backend; `reports` collects every site of every graph it compiled."""

    options: BackendOptions = BackendOptions()
    reports: list[SiteReport] = field(default_factory=list)

    def __call__(
        self,
        gm: fx.GraphModule,
        example_inputs: Sequence[Any],
        options: Mapping[str, Any] | None = None,
    ) -> Callable[..., Any]:
        chosen = self.options.overlaid(options) if options else self.options
        self.reports.extend(compile_sites(gm, chosen))
        if chosen.inner == "eager":
            return gm.forward
        inner: Callable[..., Any] = torch._dynamo.lookup_backend(chosen.inner)
        return inner(gm, example_inputs)


def backend(**options: Any) -> AttnccBackend:
    """A configured attncc backend: `torch.compile(model, backend=attncc.backend(...))`."""
    return AttnccBackend(BackendOptions.parse(options))


attncc = AttnccBackend()
"""The backend the `torch_dynamo_backends` entry point names: `backend="attncc"`."""


def compile_sites(gm: fx.GraphModule, options: BackendOptions) -> list[SiteReport]:
    """Replace every attention site of `gm` attncc can run with the custom op, in place."""
    reports = []
    for found in find_sites(gm.graph):
        if isinstance(found, Rejected):
            report = SiteReport(found.where, compiled=False, reason=found.reason)
        else:
            report = _guarded(gm.graph, found, options)
        if report.compiled:
            log.info("attncc: compiled the attention at %s (%s)", report.where, report.spec)
        else:
            log.warning(
                "attncc: left the attention at %s to PyTorch: %s", report.where, report.reason
            )
        reports.append(report)
    if any(r.compiled for r in reports):
        gm.graph.eliminate_dead_code()
        gm.recompile()
    return reports


def _guarded(graph: fx.Graph, site: Site, options: BackendOptions) -> SiteReport:
    """`_compile_site`, with an internal error turned into a fallback: a bug in attncc must
    not stop the user's model, which runs this attention as PyTorch code instead."""
    try:
        return _compile_site(graph, site, options)
    except Exception as error:
        log.exception("attncc: internal error compiling the attention at %s", site.where)
        reason = f"internal error in attncc: {type(error).__name__}: {error}"
        return SiteReport(site.where, compiled=False, reason=reason, spec=site.spec.describe())


def _compile_site(graph: fx.Graph, site: Site, options: BackendOptions) -> SiteReport:
    """Build and check everything first, then rewrite the graph: a refusal leaves it as is."""
    written = attention_cascade(site.spec, head_dim=site.head_dim, value_dim=site.value_dim)
    try:
        cascade = run_pipeline(written, options.passes)[0] if options.passes else written
        compiled = cascade
        if options.target is not Target.REFERENCE:
            compiled = lower_for_tiles(cascade)
            tile_program(schedule(compiled))
    except AttnccError as error:
        return SiteReport(site.where, compiled=False, reason=str(error), spec=site.spec.describe())
    report = SiteReport(
        site.where,
        compiled=True,
        spec=site.spec.describe(),
        passes=(_passes(written), _passes(compiled)),
        cascade=print_cascade(compiled),
    )
    key = register_site(site.spec, cascade, options.target)
    with graph.inserting_before(site.output):
        call = graph.call_function(
            torch.ops.attncc.attention.default,
            (site.query, site.key, site.value, site.mask, key),
        )
    call.meta.update(site.output.meta)
    site.output.replace_all_uses_with(call)
    return report


def _passes(cascade: Cascade) -> int:
    """Passes over the key sequence: over M, or over its tiles once it is partitioned."""
    rank = next((p.outer for p in cascade.partitions if p.rank == "M"), "M")
    return count_passes(cascade, rank).passes
