"""Plumbing the benchmark scripts share: progress lines on stderr, medians of timed runs, the
available memory, and the plain-text tables they print. It imports neither torch nor attncc, so
that cpu_attention.py's measuring subprocesses stay free of torch.

The scripts run as `python benchmarks/<name>.py`, which puts this folder on sys.path: they
import it as `_common`.
"""

from __future__ import annotations

import statistics
import sys
import time
from collections.abc import Callable, Sequence


def progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def timed(run: Callable[[], object]) -> float:
    start = time.perf_counter()
    run()
    return time.perf_counter() - start


def median_seconds(run: Callable[[], object], repeat: int) -> float:
    """The median of exactly `repeat` runs (warm-up, if any, is the caller's)."""
    return statistics.median([timed(run) for _ in range(repeat)])


def median_time(
    run: Callable[[], object], repeat: int, budget_s: float, min_total_s: float = 0.0
) -> tuple[float, int]:
    """The median of `repeat` runs, or of as many as fit in `budget_s` (at least one), and how
    many ran; runs on past `repeat` until `min_total_s` is spent, so that short medians are
    stable."""
    times: list[float] = []
    start = time.perf_counter()
    while not times or time.perf_counter() - start < budget_s:
        if len(times) >= repeat and time.perf_counter() - start >= min_total_s:
            break
        times.append(timed(run))
    return statistics.median(times), len(times)


def meminfo_bytes(field: str) -> int:
    with open("/proc/meminfo") as meminfo:
        for line in meminfo:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise OSError(f"no {field} in /proc/meminfo")


def available_memory() -> int:
    """MemAvailable, or 8 GiB where /proc/meminfo cannot tell."""
    try:
        return meminfo_bytes("MemAvailable")
    except OSError:
        return 8 << 30


def format_table(columns: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Columns padded to their widest cell: the first left-aligned, the rest right-aligned."""
    table = [list(columns), *rows]
    widths = [max(len(r[c]) for r in table) for c in range(len(columns))]
    lines = []
    for r in table:
        rest = [v.rjust(w) for v, w in zip(r[1:], widths[1:], strict=True)]
        lines.append("  ".join([r[0].ljust(widths[0]), *rest]).rstrip())
    return "\n".join(lines)
