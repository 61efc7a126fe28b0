"""Plots of the FuseMax study against sequence length: speedup, utilization of each array,
energy and DRAM traffic, one line per model (and design), drawn with matplotlib's Agg backend
(no display needed) into PNG files."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # the backend must be chosen first
from matplotlib.ticker import FuncFormatter

from attncc.accel.model import Result
from attncc.accel.studies import LENGTHS, MODELS, Point

STYLES = {"BERT": "-", "TrXL": "--", "T5": ":", "XLM": "-."}
COLORS = {
    "unfused": "tab:gray",
    "flat": "tab:blue",
    "fusemax": "tab:red",
    "flat-causal": "tab:cyan",
    "fusemax-causal": "tab:orange",
}


def write_plots(points: Iterable[Point], out: Path) -> list[Path]:
    """speedup.png, utilization.png, energy.png, traffic.png (and causal.png) under `out`."""
    by = {(p.design, p.model, p.length): p.result for p in points}
    designs = list(dict.fromkeys(d for d, _, _ in by))
    written = [
        _speedup(by, out / "speedup.png"),
        _utilization(by, designs, out / "utilization.png"),
        _energy(by, designs, out / "energy.png"),
        _per_design(
            by, designs, out / "traffic.png", "DRAM traffic (bytes)", lambda r: r.dram_bytes
        ),
    ]
    if "fusemax-causal" in designs:
        written.append(_causal(by, out / "causal.png"))
    return written


Table = dict[tuple[str, str, int], Result]


def _axes_setup(axis: plt.Axes, ylabel: str, log: bool = False) -> None:
    axis.set_xscale("log", base=2)
    axis.set_xticks(LENGTHS, [_length(n) for n in LENGTHS])
    axis.set_xlabel("sequence length")
    axis.set_ylabel(ylabel)
    if log:
        axis.set_yscale("log")
        # Plain labels: mathtext powers of ten take longer to lay out than the study runs.
        axis.yaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:.0e}"))
    axis.minorticks_off()
    axis.grid(True, alpha=0.3)


def _length(n: int) -> str:
    return f"{n >> 20}M" if n >= 2**20 else f"{n >> 10}K"


def _save(figure: plt.Figure, path: Path) -> Path:
    # Fixed margins: a layout engine measures every label, which costs seconds.
    figure.subplots_adjust(left=0.08, right=0.98, bottom=0.14, top=0.92, wspace=0.3)
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


def _speedup(by: Table, path: Path) -> Path:
    figure, axes = plt.subplots(1, 2, figsize=(10, 4))
    for axis, baseline in zip(axes, ("flat", "unfused"), strict=True):
        for model in MODELS:
            ratio = [
                by[(baseline, model.name, n)].latency / by[("fusemax", model.name, n)].latency
                for n in LENGTHS
            ]
            axis.plot(LENGTHS, ratio, STYLES[model.name], marker="o", label=model.name)
        _axes_setup(axis, f"FuseMax speedup over {baseline}")
        axis.legend()
    return _save(figure, path)


def _utilization(by: Table, designs: list[str], path: Path) -> Path:
    figure, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    for axis, array in zip(axes, ("2d", "1d"), strict=True):
        for design in designs:
            for model in MODELS:
                values = [by[(design, model.name, n)].util(array) for n in LENGTHS]
                label = f"{design} {model.name}"
                axis.plot(LENGTHS, values, STYLES[model.name], color=COLORS[design], label=label)
        _axes_setup(axis, f"{array.upper()} array utilization")
        axis.set_ylim(0, 1.05)
    axes[1].legend(fontsize=6, ncol=2)
    return _save(figure, path)


def _per_design(
    by: Table, designs: list[str], path: Path, ylabel: str, value: Callable[[Result], float]
) -> Path:
    figure, axes = plt.subplots(1, len(MODELS), figsize=(4 * len(MODELS), 4))
    for axis, model in zip(axes, MODELS, strict=True):
        for design in designs:
            values = [value(by[(design, model.name, n)]) for n in LENGTHS]
            axis.plot(LENGTHS, values, marker="o", color=COLORS[design], label=design)
        _axes_setup(axis, ylabel, log=True)
        axis.set_title(model.name)
    axes[0].legend(fontsize=7)
    return _save(figure, path)


def _energy(by: Table, designs: list[str], path: Path) -> Path:
    """Energy of each design over FLAT's at the same point (FLAT's causal run for causal)."""
    figure, axis = plt.subplots(figsize=(7, 4.5))
    for design in designs:
        baseline = "flat-causal" if design.endswith("-causal") else "flat"
        if design == baseline:
            continue
        for model in MODELS:
            values = [
                by[(design, model.name, n)].energy_pj / by[(baseline, model.name, n)].energy_pj
                for n in LENGTHS
            ]
            label = f"{design} {model.name}"
            axis.plot(LENGTHS, values, STYLES[model.name], color=COLORS[design], label=label)
    _axes_setup(axis, "energy / FLAT's energy")
    axis.axhline(1.0, color=COLORS["flat"], linewidth=0.8)
    axis.legend(fontsize=6, ncol=3)
    return _save(figure, path)


def _causal(by: Table, path: Path) -> Path:
    figure, axis = plt.subplots(figsize=(6, 4))
    for model in MODELS:
        flat = [by[("flat-causal", model.name, n)].latency for n in LENGTHS]
        fast = [by[("fusemax-causal", model.name, n)].latency for n in LENGTHS]
        axis.plot(
            LENGTHS,
            [a / b for a, b in zip(flat, fast, strict=True)],
            STYLES[model.name],
            marker="o",
            label=model.name,
        )
    _axes_setup(axis, "causal prefill: FuseMax speedup over FLAT")
    axis.legend()
    return _save(figure, path)
