"""attncc's NumPy CPU path (`run_tiled`) next to torch's CPU attention, for five masks.

Masks: dense, causal, causal sliding window (256 keys), NATTEN 2-D neighborhood attention (7x7
kernel on a side x side grid, N = side^2: 64x64 and 128x128) and document masking (8 packed
documents of random lengths, non-causal, the same ids for queries and keys), at B=1, H=8, D=64,
N = 4096 and 16384, float32. attncc runs `attention_3pass` through "flash-sparse,canonicalize"
("flash,canonicalize" when dense) and `run_tiled`; torch runs scaled_dot_product_attention
without a mask (dense) or with is_causal (causal), SDPA with a materialized [N, N] boolean
attn_mask, and FlexAttention (`torch.compile(flex_attention)` with a `create_block_mask`
BlockMask, 128x128 blocks, from the same mask definitions; all true when dense). Inputs are
[B,H,N,D] C-contiguous float32 arrays (torch gets them zero-copy through `torch.from_numpy`);
attncc gets `x.transpose(0, 1, 3, 2)` views of the same memory, its declared layout
Q[b,h,e,p], K[b,h,e,m], V[b,h,f,m], and returns AV[b,h,f,p].

Every (implementation, row) runs in its own subprocess (`--measure-one`), a fresh process with
an empty attncc kernel cache (ATTNCC_CACHE_DIR) and empty dynamo and inductor caches
(TORCHINDUCTOR_CACHE_DIR and `fresh_cache`). One-time process costs (imports, the C++ toolchain
probe) are paid by a warm-up on an unrelated small problem first. "First call" is then
attncc's whole cold path (building the cascade, the pass pipeline, and the first `run_tiled`:
tile classification, kernel emission, run) and FlexAttention's (`create_block_mask`, compile,
run). Steady-state times are medians of `--repeat` further runs (at least one, fewer when they
would overrun `--time-budget`, more until a second is spent); FlexAttention reuses its
BlockMask, attncc reclassifies its tiles on every call.

Memory: after the first call the subprocess frees its output and trims the heap (glibc
`malloc_trim`), reads VmRSS as the baseline (inputs plus whatever the first call kept, such as
compiled code), resets the kernel's peak-RSS mark (writing 5 to /proc/self/clear_refs), runs the
steady-state calls and reads VmHWM. "Working MB" is that peak minus the baseline minus the
output: what a call holds beyond its inputs and output (for SDPA with a mask, plus the [N,N]
boolean mask, built before the baseline). attncc's "peak/io" is (inputs + output + working)
/ (inputs + output). Where the peak mark cannot be reset, memory reads "n/a".

GFLOP/s counts 4 * D flops per visible (query, key) pair and head (the two matmuls), the pairs
counted exactly from the boolean mask. The reference is a NumPy float32 GEMM measured in the
same run with the same thread settings, in attncc's tile shapes (H x [Qtile, D] @ [D, Ktile]
and H x [Qtile, Ktile] @ [Ktile, D]); a 2048 x 64 @ 64 x 2048 GEMM is printed beside it.

Correctness: every output (attncc's and torch's) is compared with float32 SDPA computed with
the boolean mask in query chunks; a difference over 1e-4 of the reference's largest magnitude
is reported and the benchmark exits with status 1. A measurement whose estimate of one call
(the same mask's smaller size, scaled by visible pairs, or a default rate) exceeds the time
budget, or whose dense mask would not fit the memory budget, is skipped and says why.

Threads: library defaults (torch's intra-op threads, OpenBLAS's for NumPy) unless `--threads` is
given, which sets both. Timings on a
shared machine move with its load (printed at the start and end); `--threads 1` gives the
stable per-core comparison.

Run: `.venv/bin/python benchmarks/cpu_attention.py --threads 1` (about 15 minutes on 2 cores;
`--quick` for N=4096 only; `--sweep-tiles --sweep-row causal:16384` times attncc's tile sizes
on one row instead; `--help` for the rest). Progress goes to stderr, the table to stdout.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import gc
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import _common
import numpy as np
from _common import available_memory, format_table, progress

from attncc.backends.numpy.tiled import DEFAULT_KEY_TILE, DEFAULT_QUERY_TILE

# torch is imported where it is used, so that attncc's subprocesses run without it, as attncc
# does.
if TYPE_CHECKING:
    import torch

    from attncc.ir import Cascade

B, H, D = 1, 8, 64
WINDOW = 256
KERNEL = 7
DOCUMENTS = 8
SEED = 0
TOLERANCE = 1e-4
REFERENCE_CHUNK = 2048
DEFAULT_SIZES = (4096, 16384)
QUICK_SIZES = (4096,)
MASK_NAMES = ("dense", "causal", "sliding_window", "neighborhood_2d", "document")
PATHS = ("attncc", "sdpa", "sdpa_mask", "flex")
SWEEP_TILES = ((128, 256), (256, 256), (256, 512), (512, 512), (256, 1024))
# Seconds per unit of work (visible pair and head; every pair for sdpa_mask) before a smaller
# size of the same mask and path was measured: generous rates for this 2-core machine.
DEFAULT_SECONDS_PER_UNIT = {"attncc": 2e-8, "sdpa": 5e-9, "sdpa_mask": 5e-9, "flex": 1e-8}
# Bytes per (query, key) point a dense mask costs: SDPA's boolean mask and the float mask it
# converts it to; create_block_mask's eager evaluation of the mask_mod.
BYTES_PER_POINT = {"sdpa_mask": 5, "flex": 4}

MaskMod = Callable[["torch.Tensor", "torch.Tensor", "torch.Tensor", "torch.Tensor"], "torch.Tensor"]


# -- Problems: inputs, and each mask as a FlexAttention mask_mod (block_mask.py's forms). ----


@dataclass(frozen=True)
class Problem:
    mask: str
    n: int
    q: np.ndarray  # [B, H, N, D] float32, C-contiguous; k and v alike
    k: np.ndarray
    v: np.ndarray
    ids: np.ndarray | None  # [N] int32 document ids (document mask only)

    @property
    def io_bytes(self) -> int:
        """Inputs and output: Q, K, V, the ids (once: passed as both KDOC and QDOC), AV."""
        return 4 * self.q.nbytes + (0 if self.ids is None else self.ids.nbytes)


def make_problem(mask: str, n: int) -> Problem:
    rng = np.random.default_rng([SEED, n])
    q, k, v = (rng.standard_normal((B, H, n, D), dtype=np.float32) for _ in range(3))
    ids = None
    if mask == "document":
        cuts = np.sort(rng.choice(np.arange(1, n), DOCUMENTS - 1, replace=False))
        lengths = np.diff(np.concatenate([[0], cuts, [n]]))
        ids = np.repeat(np.arange(DOCUMENTS, dtype=np.int32), lengths)
    return Problem(mask, n, q, k, v, ids)


def grid_side(n: int) -> int:
    side = math.isqrt(n)
    if side * side != n:
        raise SystemExit(f"neighborhood_2d needs a square number of tokens, got N = {n}")
    return side


def mask_mod(problem: Problem) -> MaskMod | None:
    """The row's mask as a FlexAttention mask_mod over query q and key kv; None when dense."""
    import torch

    if problem.mask == "dense":
        return None
    if problem.mask == "causal":
        return lambda b, h, q, kv: q >= kv
    if problem.mask == "sliding_window":
        return lambda b, h, q, kv: (q >= kv) & (q - kv < WINDOW)
    if problem.mask == "document":
        assert problem.ids is not None
        ids = torch.from_numpy(problem.ids)
        return lambda b, h, q, kv: ids[q] == ids[kv]
    side = grid_side(problem.n)

    def axis(i: torch.Tensor, j: torch.Tensor) -> torch.Tensor:
        # NATTEN's non-dilated window: start = clamp(i - K//2, 0, L - K), start <= j < start + K.
        start = (i - KERNEL // 2).clamp(0, side - KERNEL)
        return (start <= j) & (j < start + KERNEL)

    return lambda b, h, q, kv: axis(q // side, kv // side) & axis(q % side, kv % side)


def bool_mask_rows(problem: Problem, rows: slice) -> torch.Tensor:
    """The boolean mask (True: attend) of queries `rows` against every key."""
    import torch

    mod = mask_mod(problem)
    q = torch.arange(problem.n)[rows, None]
    kv = torch.arange(problem.n)[None, :]
    if mod is None:
        return torch.ones(q.shape[0], problem.n, dtype=torch.bool)
    return mod(torch.tensor(0), torch.tensor(0), q, kv)


def reference(problem: Problem) -> tuple[np.ndarray, int]:
    """Float32 SDPA with the boolean mask, by query chunks ([B,H,N,D]), and the number of
    visible (query, key) pairs per head."""
    import torch
    import torch.nn.functional as F

    q, k, v = (torch.from_numpy(x) for x in (problem.q, problem.k, problem.v))
    out = torch.empty_like(q)
    pairs = 0
    for start in range(0, problem.n, REFERENCE_CHUNK):
        rows = slice(start, start + REFERENCE_CHUNK)
        mask = bool_mask_rows(problem, rows)
        pairs += int(mask.sum())
        out[:, :, rows] = F.scaled_dot_product_attention(q[:, :, rows], k, v, attn_mask=mask)
    return out.numpy(), pairs


# -- The implementations, as the subprocess runs them. -----------------------------------------


class Implementation(Protocol):
    held_bytes: int  # what the path holds besides inputs and output (SDPA's boolean mask)

    def warm_up(self) -> None: ...
    def first(self) -> object: ...
    def call(self) -> object: ...
    def as_bhnd(self, out: object) -> np.ndarray: ...


class AttnccPath:
    def __init__(self, problem: Problem, tiles: tuple[int, int]) -> None:
        self.problem, self.tiles, self.held_bytes = problem, tiles, 0
        p = problem
        self.inputs = {"Q": p.q, "K": p.k, "V": p.v}
        self.inputs = {name: x.transpose(0, 1, 3, 2) for name, x in self.inputs.items()}
        if p.ids is not None:
            self.inputs |= {"KDOC": p.ids, "QDOC": p.ids}
        self.cascade: Cascade | None = None

    @staticmethod
    def build(mask: str, n: int) -> Cascade:
        from attncc.frontends import masks
        from attncc.frontends.library import attention_3pass
        from attncc.passes import run_pipeline

        predicates = {
            "sliding_window": lambda: masks.sliding_window(WINDOW, causal=True),
            "neighborhood_2d": lambda: masks.neighborhood_2d((grid_side(n),) * 2, KERNEL),
            "document": lambda: masks.document(causal=False),
            "prefix_lm": lambda: masks.prefix_lm(64),
        }
        if mask == "dense":
            return run_pipeline(attention_3pass(batched=True), "flash,canonicalize")[0]
        if mask == "causal":
            cascade = attention_3pass(batched=True, causal=True)
        else:
            cascade = attention_3pass(batched=True, mask=predicates[mask]())
        return run_pipeline(cascade, "flash-sparse,canonicalize")[0]

    def run(self, cascade: Cascade, inputs: dict[str, np.ndarray]) -> np.ndarray:
        from attncc.backends.numpy.tiled import run_tiled

        query_tile, key_tile = self.tiles
        outputs = run_tiled(cascade, inputs, query_tile=query_tile, key_tile=key_tile)
        return outputs["AV"]

    def warm_up(self) -> None:
        """Imports and first-use costs, on a small prefix-LM problem (another kernel), then
        the analyses' caches cleared as block_mask.py does."""
        import sympy

        x = np.ones((B, H, D, 512), dtype=np.float32)
        self.run(self.build("prefix_lm", 512), {"Q": x, "K": x, "V": x})
        for name, module in list(sys.modules.items()):
            if name.startswith("attncc.analysis."):
                for value in vars(module).values():
                    if callable(getattr(value, "cache_clear", None)):
                        value.cache_clear()
        sympy.core.cache.clear_cache()

    def first(self) -> object:
        self.cascade = self.build(self.problem.mask, self.problem.n)
        return self.call()

    def call(self) -> object:
        assert self.cascade is not None, "first() builds the cascade"
        return self.run(self.cascade, self.inputs)

    def as_bhnd(self, out: object) -> np.ndarray:
        assert isinstance(out, np.ndarray)
        return out.transpose(0, 1, 3, 2)


class TorchPath:
    """SDPA (no mask, or is_causal), SDPA with the boolean mask, or compiled FlexAttention."""

    def __init__(self, kind: str, problem: Problem, threads: int | None) -> None:
        import torch

        if threads:
            torch.set_num_threads(threads)
        self.kind, self.problem, self.held_bytes = kind, problem, 0
        self.q, self.k, self.v = (torch.from_numpy(x) for x in (problem.q, problem.k, problem.v))
        self.mask: torch.Tensor | None = None
        if kind == "sdpa_mask":
            self.mask = bool_mask_rows(problem, slice(None))
            self.held_bytes = self.mask.numel()
        self.block_mask: object = None
        self.compiled: Callable[..., torch.Tensor] | None = None

    def warm_up(self) -> None:
        import torch
        from torch._inductor.utils import fresh_cache

        if self.kind == "flex":
            with fresh_cache():
                torch.compile(lambda x: x + 1)(torch.ones(2))
            torch.compiler.reset()

    def first(self) -> object:
        import torch
        from torch.nn.attention.flex_attention import create_block_mask, flex_attention

        if self.kind == "flex":
            # Dense: an all-true mask_mod, whose BlockMask marks every block FULL; no BlockMask
            # at all is slower here (1.0 s against 0.67 s at N=4096) and holds 84 MB more.
            mod, n = mask_mod(self.problem) or (lambda b, h, q, kv: q >= 0), self.problem.n
            self.block_mask = create_block_mask(mod, None, None, n, n, device="cpu")
            self.compiled = torch.compile(flex_attention)
        return self.call()

    def call(self) -> object:
        import torch.nn.functional as F

        if self.kind == "flex":
            assert self.compiled is not None, "first() compiles"
            return self.compiled(self.q, self.k, self.v, block_mask=self.block_mask)
        if self.kind == "sdpa_mask":
            return F.scaled_dot_product_attention(self.q, self.k, self.v, attn_mask=self.mask)
        causal = self.problem.mask == "causal"
        return F.scaled_dot_product_attention(self.q, self.k, self.v, is_causal=causal)

    def as_bhnd(self, out: object) -> np.ndarray:
        import torch

        assert isinstance(out, torch.Tensor)
        return out.numpy()


def applicable(path: str, mask: str) -> bool:
    return path != "sdpa" or mask in ("dense", "causal")


# -- Measuring one (implementation, row) in this process. -------------------------------------


@dataclass(frozen=True)
class Measurement:
    first_s: float | None = None
    median_s: float | None = None
    runs: int = 0
    working_bytes: int | None = None
    kept_bytes: int = 0  # RSS the first call left behind (compiled code, caches)
    skipped: str = ""


def median_time(run: Callable[[], object], repeat: int, budget_s: float) -> tuple[float, int]:
    """`_common.median_time`, running on past `repeat` until a second is spent."""
    return _common.median_time(run, repeat, budget_s, min_total_s=1.0)


def status_kib(field: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise OSError(f"no {field} in /proc/self/status")


def settled_rss() -> int:
    """VmRSS after a garbage collection and glibc's malloc_trim (free heap pages given back)."""
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None).malloc_trim(0)
    return status_kib("VmRSS")


def reset_peak_rss() -> bool:
    """Resets VmHWM to the current RSS; False where the kernel does not let us."""
    try:
        with open("/proc/self/clear_refs", "w") as clear_refs:
            clear_refs.write("5")
    except OSError:
        return False
    return True


def measure_here(path: Implementation, problem: Problem, args: argparse.Namespace) -> Measurement:
    path.warm_up()
    before = settled_rss()
    start = time.perf_counter()
    out = path.first()
    first = time.perf_counter() - start
    np.save(args.out, path.as_bhnd(out))
    del out
    baseline = settled_rss()
    can_reset = reset_peak_rss()
    median, runs = median_time(path.call, args.repeat, args.time_budget)
    working = None
    if can_reset:
        working = status_kib("VmHWM") - baseline - problem.q.nbytes + path.held_bytes
    return Measurement(first, median, runs, working, baseline - before)


def measure_child(args: argparse.Namespace) -> int:
    """`--measure-one`: one measurement, printed as a JSON line."""
    mask, n = args.row
    problem = make_problem(mask, n)
    if args.measure_one == "gemm":
        print(json.dumps(gemm_rates(args.tiles)))
        return 0
    path: Implementation
    if args.measure_one == "attncc":
        path = AttnccPath(problem, args.tiles)
    else:
        path = TorchPath(args.measure_one, problem, args.threads)
    if args.measure_one == "flex":
        from torch._inductor.utils import fresh_cache

        with fresh_cache():
            measurement = measure_here(path, problem, args)
    else:
        measurement = measure_here(path, problem, args)
    print(json.dumps(asdict(measurement)))
    return 0


def gemm_rates(tiles: tuple[int, int]) -> dict[str, float]:
    """GFLOP/s of NumPy float32 GEMMs: attncc's two per-tile matmuls, and 2048x64 @ 64x2048."""
    rng = np.random.default_rng(SEED)
    qt, kt = tiles
    shapes = ((H, qt, D), (H, D, kt), (H, qt, kt), (H, kt, D), (2048, D), (D, 2048))
    q, k, scores, v, a, b = (rng.standard_normal(s, dtype=np.float32) for s in shapes)
    tile, _ = median_time(lambda: (np.matmul(q, k), np.matmul(scores, v)), 20, 5.0)
    square, _ = median_time(lambda: a @ b, 20, 5.0)
    return {"tile": 4 * H * qt * kt * D / tile / 1e9, "square": 2 * 2048 * 2048 * D / square / 1e9}


# -- Driving the subprocesses, within the budgets. --------------------------------------------


class Runner:
    """Runs `--measure-one` subprocesses, each with empty caches, skipping what would overrun
    a budget; remembers each (mask, path)'s seconds per unit of work to estimate the next size."""

    def __init__(self, args: argparse.Namespace, workdir: Path) -> None:
        self.args = args
        self.workdir = workdir
        self.memory_budget = available_memory() // 2
        if args.memory_budget is not None:
            self.memory_budget = int(args.memory_budget * 1e9)
        self.seconds_per_unit: dict[tuple[str, str], float] = {}
        self.count = 0

    @staticmethod
    def work(path: str, n: int, pairs: int) -> int:
        """Units a call's time scales with: visible pairs and heads (every pair for SDPA with a
        mask, which does not skip masked blocks)."""
        return B * H * (n * n if path == "sdpa_mask" else pairs)

    def skip_reason(self, path: str, problem: Problem, pairs: int) -> str:
        need = problem.io_bytes + BYTES_PER_POINT.get(path, 0) * problem.n**2
        if need > self.memory_budget:
            return f"est. {need / 1e9:.1f} GB > {self.memory_budget / 1e9:.1f} GB"
        default = DEFAULT_SECONDS_PER_UNIT[path]
        rate = self.seconds_per_unit.get((problem.mask, path), default)
        estimate = rate * self.work(path, problem.n, pairs)
        if estimate > self.args.time_budget:
            return f"est. {estimate:.0f} s a call > {self.args.time_budget:.0f} s"
        return ""

    def measure(
        self, path: str, problem: Problem, pairs: int, tiles: tuple[int, int]
    ) -> tuple[Measurement, np.ndarray | None]:
        """The measurement and the output ([B,H,N,D]), or a skip and None."""
        reason = self.skip_reason(path, problem, pairs)
        if reason:
            progress(f"  {path}: skipped ({reason})")
            return Measurement(skipped=reason), None
        measurement, out = self.spawn(path, problem, tiles)
        if measurement.median_s is not None:
            rate = measurement.median_s / self.work(path, problem.n, pairs)
            self.seconds_per_unit[problem.mask, path] = rate
            progress(
                f"  {path}: first {measurement.first_s or 0.0:.3f} s, median "
                f"{measurement.median_s:.3f} s of {measurement.runs}, working "
                f"{megabytes(measurement.working_bytes)} MB, kept by the first call "
                f"{megabytes(measurement.kept_bytes)} MB"
            )
        return measurement, out

    def spawn(
        self, path: str, problem: Problem, tiles: tuple[int, int]
    ) -> tuple[Measurement, np.ndarray | None]:
        self.count += 1
        scratch = self.workdir / f"{self.count}-{path}"
        out = scratch.with_suffix(".npy")
        command = [
            sys.executable,
            os.path.abspath(__file__),
            f"--measure-one={path}",
            f"--row={problem.mask}:{problem.n}",
            f"--tiles={tiles[0]}x{tiles[1]}",
            f"--repeat={self.args.repeat}",
            f"--time-budget={self.args.time_budget}",
            f"--out={out}",
        ]
        if self.args.threads:
            command.append(f"--threads={self.args.threads}")
        try:
            done = subprocess.run(
                command,
                env=child_environment(scratch, self.args.threads),
                stdout=subprocess.PIPE,
                text=True,
                timeout=600 + 20 * self.args.time_budget,
                check=False,
            )
        except subprocess.TimeoutExpired:
            return Measurement(skipped="FAILED (timed out)"), None
        if done.returncode != 0:
            return Measurement(skipped=f"FAILED (exit status {done.returncode})"), None
        measurement = Measurement(**json.loads(done.stdout.strip().splitlines()[-1]))
        result = np.load(out) if out.exists() else None
        out.unlink(missing_ok=True)
        return measurement, result

    def gemm(self, tiles: tuple[int, int]) -> dict[str, float]:
        command = [sys.executable, os.path.abspath(__file__), "--measure-one=gemm"]
        command += [f"--tiles={tiles[0]}x{tiles[1]}"]
        if self.args.threads:
            command.append(f"--threads={self.args.threads}")
        env = child_environment(self.workdir / "gemm", self.args.threads)
        done = subprocess.run(command, env=env, stdout=subprocess.PIPE, text=True, check=True)
        rates: dict[str, float] = json.loads(done.stdout.strip().splitlines()[-1])
        return rates


def child_environment(scratch: Path, threads: int | None) -> dict[str, str]:
    """The parent's environment with empty attncc and inductor caches, and the thread counts."""
    env = dict(os.environ)
    env["ATTNCC_CACHE_DIR"] = str(scratch / "attncc")
    env["TORCHINDUCTOR_CACHE_DIR"] = str(scratch / "inductor")
    if threads:
        for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
            env[name] = str(threads)
    return env


def mismatch(label: str, out: np.ndarray | None, expected: np.ndarray) -> str:
    if out is None:
        return ""
    if out.shape != expected.shape:
        return f"{label}: shape {out.shape}, expected {expected.shape}"
    scale = float(np.abs(expected).max())
    error = float(np.abs(out - expected).max())
    if not error <= TOLERANCE * scale:  # also catches NaN
        return f"{label}: max |difference| {error:.3g} > {TOLERANCE} * max |reference| {scale:.3g}"
    return ""


# -- The table. -----------------------------------------------------------------------------


COLUMNS = (
    "mask",
    "N",
    "density",
    "attncc first s",
    "attncc s",
    "GFLOP/s",
    "of GEMM",
    "SDPA s",
    "SDPA+mask s",
    "flex first s",
    "flex s",
    "flex/attncc first",
    "attncc/flex",
    "attncc/SDPA",
    "attncc MB",
    "peak/io",
    "SDPA MB",
    "SDPA+mask MB",
    "flex MB",
)


@dataclass(frozen=True)
class Row:
    mask: str
    n: int
    pairs: int
    io_bytes: int
    results: dict[str, Measurement]


def megabytes(value: int | None) -> str:
    # round() rather than a format, so that less than half a megabyte below zero reads "0".
    return "n/a" if value is None else str(round(value / 1e6))


def seconds(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.3f}" if value < 10 else f"{value:.1f}"


def ratio(numerator: float | None, denominator: float | None) -> str:
    if numerator is None or denominator is None:
        return "-"
    return f"{numerator / denominator:.2f}x"


def cells(row: Row, gemm: float) -> list[str]:
    def result(path: str) -> Measurement:
        return row.results.get(path, Measurement(skipped="n/a"))

    def time_cell(path: str, first: bool = False) -> str:
        m = result(path)
        if m.skipped:
            return "-" if m.skipped == "n/a" else "skipped"
        return seconds(m.first_s if first else m.median_s)

    def memory_cell(path: str) -> str:
        m = result(path)
        return "-" if m.skipped else megabytes(m.working_bytes)

    attncc, flex, sdpa = result("attncc"), result("flex"), result("sdpa")
    rate = peak = "-"
    if attncc.median_s is not None:
        rate_value = 4 * D * B * H * row.pairs / attncc.median_s / 1e9
        rate = f"{rate_value:.1f}"
        gemm_share = f"{rate_value / gemm:.0%}"
    else:
        gemm_share = "-"
    if attncc.working_bytes is not None:
        peak = f"{(row.io_bytes + attncc.working_bytes) / row.io_bytes:.3f}x"
    return [
        row.mask,
        str(row.n),
        f"{row.pairs / row.n**2:.4f}",
        time_cell("attncc", first=True),
        time_cell("attncc"),
        rate,
        gemm_share,
        time_cell("sdpa"),
        time_cell("sdpa_mask"),
        time_cell("flex", first=True),
        time_cell("flex"),
        ratio(flex.first_s, attncc.first_s),
        ratio(attncc.median_s, flex.median_s),
        ratio(attncc.median_s, sdpa.median_s),
        memory_cell("attncc"),
        peak,
        memory_cell("sdpa"),
        memory_cell("sdpa_mask"),
        memory_cell("flex"),
    ]


# -- Driver. --------------------------------------------------------------------------------


def measure_row(
    runner: Runner, mask: str, n: int, paths: Sequence[str], tiles: tuple[int, int]
) -> tuple[Row, list[str]]:
    progress(f"{mask} N={n}")
    problem = make_problem(mask, n)
    start = time.perf_counter()
    expected, pairs = reference(problem)
    progress(f"  reference: {time.perf_counter() - start:.1f} s, density {pairs / n**2:.4f}")
    results, problems = {}, []
    for path in paths:
        if not applicable(path, mask):
            continue
        measurement, out = runner.measure(path, problem, pairs, tiles)
        results[path] = measurement
        if measurement.skipped.startswith("FAILED"):
            problems.append(f"{mask} N={n} {path}: {measurement.skipped}")
        found = mismatch(f"{mask} N={n} {path}", out, expected)
        if found:
            problems.append(found)
    return Row(mask, n, pairs, problem.io_bytes, results), problems


def header(args: argparse.Namespace, gemm: dict[str, float], load: float) -> str:
    import torch

    threads = args.threads or f"defaults (torch {torch.get_num_threads()})"
    return (
        f"CPU attention, B={B} H={H} D={D} float32, torch {torch.__version__}, numpy "
        f"{np.__version__}, threads: {threads}, attncc tiles {args.tiles[0]}x{args.tiles[1]}, "
        f"load average at start {load:.2f}\n"
        f"NumPy float32 GEMM: {gemm['tile']:.1f} GFLOP/s in attncc's tile shapes (the "
        f"'of GEMM' reference), {gemm['square']:.1f} GFLOP/s at 2048x64 @ 64x2048\n"
        f"Seconds are medians of up to {args.repeat} runs; MB is a call's working memory beyond "
        "inputs and output; SDPA is unmasked on dense rows and is_causal on causal rows"
    )


def run_table(args: argparse.Namespace, runner: Runner) -> tuple[str, list[str]]:
    load = os.getloadavg()[0]
    gemm = runner.gemm(args.tiles)
    progress(f"GEMM: {gemm['tile']:.1f} GFLOP/s (tiles), {gemm['square']:.1f} GFLOP/s (2048)")
    rows, problems = [], []
    for n in args.sizes:
        for mask in args.masks:
            row, found = measure_row(runner, mask, n, args.paths, args.tiles)
            rows.append(row)
            problems += found
    lines = [
        header(args, gemm, load),
        format_table(COLUMNS, [cells(r, gemm["tile"]) for r in rows]),
    ]
    for row in rows:
        for path, m in row.results.items():
            if m.skipped and m.skipped != "n/a":
                lines.append(f"{row.mask} N={row.n} {path}: {m.skipped}")
    return "\n".join(lines), problems


def run_sweep(args: argparse.Namespace, runner: Runner) -> tuple[str, list[str]]:
    mask, n = args.sweep_row
    load = os.getloadavg()[0]
    problem = make_problem(mask, n)
    expected, pairs = reference(problem)
    rows, problems = [], []
    for tiles in SWEEP_TILES:
        progress(f"{mask} N={n} tiles {tiles[0]}x{tiles[1]}")
        m, out = runner.measure("attncc", problem, pairs, tiles)
        label = f"{mask} N={n} tiles {tiles[0]}x{tiles[1]}"
        failed = m.skipped if m.skipped.startswith("FAILED") else ""
        problems += [p for p in (mismatch(label, out, expected), failed) if p]
        rate = "-" if m.median_s is None else f"{4 * D * B * H * pairs / m.median_s / 1e9:.1f}"
        first, median, memory = seconds(m.first_s), seconds(m.median_s), megabytes(m.working_bytes)
        rows.append([f"{tiles[0]}x{tiles[1]}", first, median, rate, memory, str(m.runs)])
    title = (
        f"attncc tile sweep, {mask} N={n}, B={B} H={H} D={D} float32, threads: "
        f"{args.threads or 'defaults'}, load average at start {load:.2f}"
    )
    columns = ("QxK tiles", "first s", "median s", "GFLOP/s", "working MB", "runs")
    return f"{title}\n{format_table(columns, rows)}", problems


def parse_row(text: str) -> tuple[str, int]:
    mask, _, n = text.partition(":")
    if mask not in (*MASK_NAMES, "gemm") or not n.isdigit():
        raise argparse.ArgumentTypeError(f"expected MASK:N with MASK among {MASK_NAMES}")
    return mask, int(n)


def parse_tiles(text: str) -> tuple[int, int]:
    query, _, key = text.partition("x")
    if not (query.isdigit() and key.isdigit() and int(query) > 0 and int(key) > 0):
        raise argparse.ArgumentTypeError(f"expected QxK tile sizes such as 256x512, got {text!r}")
    return int(query), int(key)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])

    def add_list(name: str, default: Sequence[str | int], convert: Callable[[str], object]) -> None:
        parser.add_argument(
            f"--{name}",
            type=lambda text: [convert(s) for s in text.split(",")],
            default=list(default),
            help="comma-separated (default: %(default)s)",
        )

    add_list("sizes", DEFAULT_SIZES, int)
    add_list("masks", MASK_NAMES, str)
    add_list("paths", PATHS, str)
    parser.add_argument("--quick", action="store_true", help=f"N in {QUICK_SIZES} only")
    parser.add_argument("--repeat", type=int, default=5, help="runs per median (default: 5)")
    parser.add_argument(
        "--time-budget",
        type=float,
        default=60.0,
        help="seconds the steady-state runs of one measurement may take (default: %(default)s)",
    )
    parser.add_argument(
        "--memory-budget",
        type=float,
        default=None,
        help="GB one measurement may use (default: half the available memory)",
    )
    parser.add_argument(
        "--tiles",
        type=parse_tiles,
        default=(DEFAULT_QUERY_TILE, DEFAULT_KEY_TILE),
        help=f"attncc's query x key tiles (default: {DEFAULT_QUERY_TILE}x{DEFAULT_KEY_TILE})",
    )
    parser.add_argument("--threads", type=int, default=None, help="torch and OpenBLAS threads")
    parser.add_argument(
        "--sweep-tiles",
        action="store_true",
        help=f"time attncc at tiles {', '.join(f'{q}x{k}' for q, k in SWEEP_TILES)} instead",
    )
    parser.add_argument(
        "--sweep-row",
        type=parse_row,
        default=None,
        help="MASK:N the sweep runs (default: causal at the largest size)",
    )
    parser.add_argument("--measure-one", choices=(*PATHS, "gemm"), help=argparse.SUPPRESS)
    parser.add_argument("--row", type=parse_row, default=("dense", 0), help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    for name, known in (("masks", MASK_NAMES), ("paths", PATHS)):
        unknown = [x for x in getattr(args, name) if x not in known]
        if unknown:
            parser.error(f"unknown {name} {', '.join(unknown)}; choose from {', '.join(known)}")
    if args.quick:
        args.sizes = list(QUICK_SIZES)
    if args.sweep_row is None:
        args.sweep_row = ("causal", max(args.sizes))
    if args.repeat < 1 or any(n < 1 for n in args.sizes):
        parser.error("--repeat and every size must be positive")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.measure_one:
        return measure_child(args)
    with tempfile.TemporaryDirectory(prefix="cpu_attention-") as workdir:
        runner = Runner(args, Path(workdir))
        if args.sweep_tiles:
            table, problems = run_sweep(args, runner)
        else:
            table, problems = run_table(args, runner)
    print(table)
    print(f"load average at end {os.getloadavg()[0]:.2f}")
    for problem in problems:
        print(f"MISMATCH: {problem}", file=sys.stderr)
    if problems:
        print(f"{len(problems)} problems (mismatches or failures)", file=sys.stderr)
        return 1
    print("every output matches float32 SDPA with the same boolean mask")
    return 0


if __name__ == "__main__":
    sys.exit(main())
