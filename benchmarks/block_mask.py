"""How long attncc's tile classification takes, next to FlexAttention's `create_block_mask`.

Both turn a mask into block lists for 128x128 tiles (FlexAttention's default BLOCK_SIZE): per
query tile, the key tiles that are PARTIAL (apply the mask) and FULL (no mask work). attncc
decides each tile from the predicate's symbolic form (`classify_tiles(...).block_mask()`, block
lists included); `create_block_mask` evaluates the mask at all N^2 (query, key) points, eagerly
(`_compile=False`) or under `torch.compile(create_block_mask)`. Masks: causal, causal sliding
window (256 keys) and NATTEN 2-D neighborhood attention (7x7 kernel on a side x side grid, N =
side^2), at N = 4096, 16384, 65536 and 262144 (torch stops at 65536), on the CPU with torch's
default thread count.

Columns: attncc's first call with its caches cleared (cold: includes lowering the predicate) and
its steady-state median; torch eager's median; torch compiled's first call (compile included, in
seconds, from empty dynamo and inductor caches) and steady-state median; the torch/attncc ratios
of the medians; the density (non-empty tiles / all tiles). One-time process costs (imports, the
C++ toolchain probe) are paid by a warm-up before the first row.

Medians are over `--repeat` runs, fewer where the runs would overrun the per-measurement
`--time-budget` (at least one); attncc's go on for at least half a second. A torch measurement
whose estimate (from the previous size, scaled by N^2) exceeds the time budget, or whose dense
mask would not fit the memory budget, is skipped and says why; N <= 16384 is always measured.
Every configuration both measure is checked: the PARTIAL and FULL key tiles of every query tile
must agree, or the benchmark reports the mismatch and exits with status 1. Timings on a shared
machine move with its load, torch's (multithreaded) more than attncc's (one thread): compare
ratios from one run.

Run: `.venv/bin/python benchmarks/block_mask.py` (about 4 minutes on 2 cores; `--quick` for
4096 and 16384 only; `--help` for the rest). Progress goes to stderr, the table to stdout.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import _common
import numpy as np
import sympy
import torch
from _common import available_memory, format_table, progress, timed
from torch._inductor.utils import fresh_cache
from torch.nn.attention.flex_attention import BlockMask as FlexBlockMask
from torch.nn.attention.flex_attention import create_block_mask

from attncc.analysis.sparsity import classify_tiles
from attncc.analysis.tile_map import BlockLists, BlockMask, TileMap
from attncc.frontends import masks
from attncc.ir import Expr

TILE = 128
WINDOW = 256
KERNEL = 7
DEFAULT_SIZES = (4096, 16384, 65536, 262144)
QUICK_SIZES = (4096, 16384)
TORCH_MAX_N = 65536
ALWAYS_MEASURED_N = 16384
# Bytes per (query, key) point while the eager path holds its dense masks: the boolean mask and
# a few boolean temporaries of the mask_mod (an estimate, generous for the NATTEN mask).
EAGER_BYTES_PER_POINT = 4
# Seconds per (query, key) point when no smaller size of a mask was measured (this CPU, 2 cores).
DEFAULT_SECONDS_PER_POINT = {"eager": 8e-9, "compiled": 3e-9}

MaskMod = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


# -- The masks, once as attncc predicates and once as FlexAttention mask_mods. ---------------


def causal_mod(b: torch.Tensor, h: torch.Tensor, q: torch.Tensor, kv: torch.Tensor) -> torch.Tensor:
    return q >= kv


def sliding_window_mod(
    b: torch.Tensor, h: torch.Tensor, q: torch.Tensor, kv: torch.Tensor
) -> torch.Tensor:
    return (q >= kv) & (q - kv < WINDOW)


def _neighborhood_axis(i: torch.Tensor, j: torch.Tensor, length: int) -> torch.Tensor:
    """NATTEN's non-dilated, non-causal window on one axis: start = clamp(i - K//2, 0, L - K),
    key j visible iff start <= j < start + K."""
    start = (i - KERNEL // 2).clamp(0, length - KERNEL)
    return (start <= j) & (j < start + KERNEL)


def neighborhood_2d_mod(side: int) -> MaskMod:
    def mod(b: torch.Tensor, h: torch.Tensor, q: torch.Tensor, kv: torch.Tensor) -> torch.Tensor:
        rows = _neighborhood_axis(q // side, kv // side, side)
        return rows & _neighborhood_axis(q % side, kv % side, side)

    return mod


def grid_side(n: int) -> int:
    side = math.isqrt(n)
    if side * side != n:
        raise SystemExit(f"neighborhood_2d needs a square number of tokens, got N = {n}")
    return side


@dataclass(frozen=True)
class Mask:
    predicate: Callable[[int], Expr]
    mask_mod: Callable[[int], MaskMod]


MASKS: dict[str, Mask] = {
    "causal": Mask(lambda n: masks.causal(), lambda n: causal_mod),
    "sliding_window": Mask(
        lambda n: masks.sliding_window(WINDOW, causal=True), lambda n: sliding_window_mod
    ),
    "neighborhood_2d": Mask(
        lambda n: masks.neighborhood_2d((grid_side(n),) * 2, KERNEL),
        lambda n: neighborhood_2d_mod(grid_side(n)),
    ),
}


# -- Timing. ----------------------------------------------------------------------------------


def median_time(
    run: Callable[[], object], repeat: int, budget_s: float, min_total_s: float = 0.0
) -> float:
    """`_common.median_time` without the count of runs."""
    return _common.median_time(run, repeat, budget_s, min_total_s)[0]


def clear_attncc_caches() -> None:
    """Forget what the analyses' functools caches hold (lowered predicates, plans), whichever
    attncc.analysis modules define them, and sympy's cache, as a fresh process would."""
    for name, module in list(sys.modules.items()):
        if name.startswith("attncc.analysis."):
            for value in vars(module).values():
                if callable(getattr(value, "cache_clear", None)):
                    value.cache_clear()
    sympy.core.cache.clear_cache()


def classify(predicate: Expr, n: int) -> tuple[TileMap, BlockMask]:
    tiles = classify_tiles(predicate, key_len=n, query_len=n, key_tile=TILE, query_tile=TILE)
    return tiles, tiles.block_mask()


# -- Torch measurements, each guarded by the budgets. ---------------------------------------


@dataclass(frozen=True)
class TorchResult:
    median_s: float | None = None
    first_s: float | None = None
    block_mask: FlexBlockMask | None = None
    skipped: str = ""


class TorchBench:
    """Measures create_block_mask eagerly and compiled, skipping what would overrun a budget;
    remembers each (mask, variant)'s seconds per point to estimate the next size."""

    def __init__(self, repeat: int, time_budget_s: float, memory_budget: int) -> None:
        self.repeat = repeat
        self.time_budget_s = time_budget_s
        self.memory_budget = memory_budget
        self.seconds_per_point: dict[tuple[str, str], float] = {}

    def skip_reason(self, mask: str, variant: str, n: int) -> str:
        if n > TORCH_MAX_N:
            return f"skipped (N > {TORCH_MAX_N})"
        if variant == "eager" and n * n * EAGER_BYTES_PER_POINT > self.memory_budget:
            need, have = n * n * EAGER_BYTES_PER_POINT / 1e9, self.memory_budget / 1e9
            return f"skipped (est. {need:.0f} GB > {have:.0f} GB)"
        rate = self.seconds_per_point.get((mask, variant), DEFAULT_SECONDS_PER_POINT[variant])
        estimate = rate * n * n
        if n > ALWAYS_MEASURED_N and estimate > self.time_budget_s:
            return f"skipped (est. {estimate:.0f} s > {self.time_budget_s:.0f} s)"
        return ""

    def measure(self, mask: str, variant: str, n: int, mask_mod: MaskMod) -> TorchResult:
        reason = self.skip_reason(mask, variant, n)
        if reason:
            progress(f"  torch {variant}: {reason}")
            return TorchResult(skipped=reason)
        if variant == "compiled":
            # Each configuration compiles from nothing: no dynamo state (so sizes stay static)
            # and empty inductor caches (fresh_cache, what PyTorch's compile-time benchmarks
            # use), as in a fresh process with a fresh cache directory.
            torch.compiler.reset()
            with fresh_cache():
                build = torch.compile(create_block_mask)
                first, median, block_mask = self.first_and_median(build, mask_mod, n)
        else:
            first, median, block_mask = self.first_and_median(create_block_mask, mask_mod, n)
        self.seconds_per_point[mask, variant] = median / (n * n)
        progress(f"  torch {variant}: first {first:.2f} s, median {median * 1e3:.1f} ms")
        return TorchResult(median, first, block_mask)

    def first_and_median(
        self, build: Callable[..., FlexBlockMask], mask_mod: MaskMod, n: int
    ) -> tuple[float, float, FlexBlockMask]:
        def run() -> FlexBlockMask:
            return build(mask_mod, None, None, n, n, device="cpu", BLOCK_SIZE=TILE)

        start = time.perf_counter()
        block_mask = run()
        first = time.perf_counter() - start
        return first, median_time(run, self.repeat, self.time_budget_s), block_mask


def warm_up() -> None:
    """Pay the process's one-time costs (imports, the C++ toolchain probe) before the first row,
    so that no configuration is charged for them."""
    classify(masks.prefix_lm(1), 4 * TILE)
    with fresh_cache():
        torch.compile(lambda x: x + 1)(torch.ones(2))
    torch.compiler.reset()


# -- Correctness: both block masks as dense (query tiles, key tiles) class matrices. --------


def dense_classes(
    partial: tuple[np.ndarray, np.ndarray], full: tuple[np.ndarray, np.ndarray], key_tiles: int
) -> np.ndarray:
    """EMPTY 0, PARTIAL 1, FULL 2 from per-row counts and indices; a tile in both lists is -1."""
    classes = np.zeros((partial[0].shape[0], key_tiles), dtype=np.int8)
    for value, (counts, indices) in ((1, partial), (2, full)):
        rows, slots = np.nonzero(np.arange(indices.shape[1]) < counts[:, None])
        cols = indices[rows, slots]
        taken = classes[rows, cols] != 0
        classes[rows, cols] = np.where(taken, -1, value)
    return classes


def lists(block_lists: BlockLists) -> tuple[np.ndarray, np.ndarray]:
    return np.asarray(block_lists.counts), np.asarray(block_lists.indices)


def flex_classes(block_mask: FlexBlockMask, key_tiles: int) -> np.ndarray:
    def first_head(t: torch.Tensor | None) -> np.ndarray:
        assert t is not None, "create_block_mask separates full blocks by default"
        return t[0, 0].cpu().numpy()

    partial = first_head(block_mask.kv_num_blocks), first_head(block_mask.kv_indices)
    full = first_head(block_mask.full_kv_num_blocks), first_head(block_mask.full_kv_indices)
    return dense_classes(partial, full, key_tiles)


def mismatches(
    label: str, tiles: TileMap, attncc: BlockMask, torch_masks: dict[str, FlexBlockMask]
) -> list[str]:
    """Disagreements of attncc's classes, its forward and transposed lists, and torch's."""
    key_tiles = tiles.classes.shape[1]
    candidates = {
        "attncc kv lists": dense_classes(lists(attncc.kv), lists(attncc.full_kv), key_tiles),
        "attncc q lists (transposed)": dense_classes(
            lists(attncc.q), lists(attncc.full_q), tiles.classes.shape[0]
        ).T,
    }
    candidates |= {
        f"torch {variant}": flex_classes(bm, key_tiles) for variant, bm in torch_masks.items()
    }
    problems = []
    for name, classes in candidates.items():
        if classes.shape != tiles.classes.shape:
            problems.append(f"{label}: {name} has shape {classes.shape}, not {tiles.classes.shape}")
            continue
        differ = np.argwhere(classes != tiles.classes)
        if differ.size:
            i, j = differ[0]
            problems.append(
                f"{label}: {name} differs from attncc's classes in {len(differ)} tiles, first "
                f"query tile {i} key tile {j}: {name} {classes[i, j]}, attncc {tiles.classes[i, j]}"
            )
    return problems


# -- The table. ---------------------------------------------------------------------------


COLUMNS = (
    "mask",
    "N",
    "attncc cold ms",
    "attncc median ms",
    "torch eager ms",
    "torch compiled first s",
    "torch compiled median ms",
    "compiled/attncc",
    "eager/attncc",
    "density",
)


@dataclass(frozen=True)
class Measured:
    mask: str
    n: int
    cold_s: float
    median_s: float
    density: float
    eager: TorchResult
    compiled: TorchResult


def cells(m: Measured) -> list[str]:
    def ms(result: TorchResult) -> str:
        return result.skipped or f"{(result.median_s or 0.0) * 1e3:.1f}"

    def ratio(result: TorchResult) -> str:
        if result.median_s is None:
            return "-"
        times = result.median_s / m.median_s
        return f"{times:.0f}x" if times >= 10 else f"{times:.2g}x"

    compiled_first = m.compiled.skipped or f"{m.compiled.first_s or 0.0:.2f}"
    return [
        m.mask,
        str(m.n),
        f"{m.cold_s * 1e3:.2f}",
        f"{m.median_s * 1e3:.2f}",
        ms(m.eager),
        compiled_first,
        ms(m.compiled),
        ratio(m.compiled),
        ratio(m.eager),
        f"{m.density:.4f}",
    ]


def targets(results: Sequence[Measured]) -> list[str]:
    """The acceptance targets: causal and sliding window at N=16384 at least 100x faster than
    compiled create_block_mask, and at N=262144 in under 1 s."""
    lines = []
    for m in results:
        if m.mask not in ("causal", "sliding_window"):
            continue
        if m.n == ALWAYS_MEASURED_N and m.compiled.median_s is not None:
            speedup = m.compiled.median_s / m.median_s
            verdict = "met" if speedup >= 100 else "MISSED"
            lines.append(f"{m.mask} N={m.n}: {speedup:.0f}x compiled (target 100x): {verdict}")
        if m.n == 262144:
            verdict = "met" if m.median_s < 1 else "MISSED"
            lines.append(f"{m.mask} N={m.n}: {m.median_s:.3f} s (target < 1 s): {verdict}")
    return lines


# -- Driver. --------------------------------------------------------------------------------


def measure(mask: str, n: int, bench: TorchBench, repeat: int) -> tuple[Measured, list[str]]:
    spec = MASKS[mask]
    progress(f"{mask} N={n}")
    predicate = spec.predicate(n)
    clear_attncc_caches()
    cold = timed(lambda: classify(predicate, n))
    median = median_time(lambda: classify(predicate, n), repeat, bench.time_budget_s, 0.5)
    tiles, block_mask = classify(predicate, n)
    progress(f"  attncc: cold {cold * 1e3:.2f} ms, median {median * 1e3:.2f} ms")
    mask_mod = spec.mask_mod(n)
    eager = bench.measure(mask, "eager", n, mask_mod)
    compiled = bench.measure(mask, "compiled", n, mask_mod)
    flex = {
        variant: result.block_mask
        for variant, result in (("eager", eager), ("compiled", compiled))
        if result.block_mask is not None
    }
    problems = mismatches(f"{mask} N={n}", tiles, block_mask, flex)
    result = Measured(mask, n, cold, median, tiles.density, eager, compiled)
    return result, problems


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--sizes",
        type=lambda text: [int(s) for s in text.split(",")],
        default=list(DEFAULT_SIZES),
        help="comma-separated token counts N (default: %(default)s)",
    )
    parser.add_argument(
        "--masks",
        type=lambda text: text.split(","),
        default=list(MASKS),
        help=f"comma-separated masks among {', '.join(MASKS)} (default: all)",
    )
    parser.add_argument("--repeat", type=int, default=5, help="runs per median (default: 5)")
    parser.add_argument("--quick", action="store_true", help=f"N in {QUICK_SIZES} only")
    parser.add_argument(
        "--time-budget",
        type=float,
        default=20.0,
        help="seconds one measurement may take (default: %(default)s)",
    )
    parser.add_argument(
        "--memory-budget",
        type=float,
        default=None,
        help="GB the eager create_block_mask may use (default: half the available memory)",
    )
    args = parser.parse_args(argv)
    unknown = [m for m in args.masks if m not in MASKS]
    if unknown:
        parser.error(f"unknown mask {', '.join(unknown)}; choose from {', '.join(MASKS)}")
    if args.quick:
        args.sizes = list(QUICK_SIZES)
    if args.repeat < 1 or any(n < 1 or n % TILE for n in args.sizes):
        parser.error(f"--repeat must be positive and every size a multiple of {TILE}")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    memory = available_memory() // 2
    if args.memory_budget is not None:
        memory = int(args.memory_budget * 1e9)
    bench = TorchBench(args.repeat, args.time_budget, memory)
    progress(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    warm_up()
    results, problems = [], []
    for mask in args.masks:
        for n in args.sizes:
            result, found = measure(mask, n, bench, args.repeat)
            results.append(result)
            problems += found
    print(
        f"Tile classification, {TILE}x{TILE} tiles, CPU, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads; medians: torch of up to {args.repeat} runs, "
        f"attncc of at least {args.repeat} runs and 0.5 s"
    )
    print(format_table(COLUMNS, [cells(m) for m in results]))
    for line in targets(results):
        print(line)
    for problem in problems:
        print(f"MISMATCH: {problem}", file=sys.stderr)
    if problems:
        print(f"{len(problems)} MISMATCHES between attncc and FlexAttention", file=sys.stderr)
        return 1
    print("attncc's block masks equal FlexAttention's in every configuration both measured")
    return 0


if __name__ == "__main__":
    sys.exit(main())
