"""`attncc study`: the accelerator model from the command line.

attncc study fusemax --out DIR [--no-causal]     the paper's evaluation: CSV, plots, summary
attncc study sweep SPEC.yaml [--out FILE.csv] [--workers N] [--cluster ray|dask [--address A]]
attncc study model FILE|NAME --arch PRESET|FILE --shapes M=..,P=..,E=..,F=.. [--instances N]
                   [-O key=value] [--passes PIPELINE] [--mapping FILE.yaml]
                                                 one cascade on one array, Einsum by Einsum
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from attncc.accel.model import Result, Workload, evaluate
from attncc.accel.spec import PRESETS, SpecError, load_architecture, read_yaml
from attncc.accel.studies import format_summary, run_study, study_size, summarize, write_csv
from attncc.accel.sweep import BACKENDS, load_sweep, points, run_sweep
from attncc.errors import AttnccError
from attncc.frontends.loader import load
from attncc.frontends.options import key_values, option_value
from attncc.passes import run_pipeline


def register(commands: Any) -> None:
    """Add `study` and its subcommands to the `attncc` subparsers `commands`."""
    study = commands.add_parser("study", help="accelerator design studies (FuseMax, sweeps)")
    kinds = study.add_subparsers(dest="study", required=True)
    paper = kinds.add_parser("fusemax", help="reproduce the FuseMax paper's evaluation")
    paper.add_argument("--out", required=True, help="folder for fusemax.csv and the plots")
    paper.add_argument("--no-causal", action="store_true", help="leave out causal prefill")
    paper.add_argument("--no-plots", action="store_true", help="write the CSV only")
    paper.set_defaults(handler=_fusemax)
    sweep = kinds.add_parser("sweep", help="sweep parameters of a spec in parallel")
    sweep.add_argument("spec", help="sweep YAML (see attncc.accel.sweep)")
    sweep.add_argument("--out", help="CSV to write (default: SPEC's name with .csv)")
    sweep.add_argument("--workers", type=int, help="local processes (default: one per core)")
    sweep.add_argument("--cluster", choices=BACKENDS[1:], help="run on a Ray or Dask cluster")
    sweep.add_argument("--address", help="the cluster's address (default: start a local one)")
    sweep.set_defaults(handler=_sweep)
    one = kinds.add_parser("model", help="model one cascade on one architecture")
    one.add_argument("source", help="a .ein file or a library cascade name")
    one.add_argument("-O", "--option", action="append", default=[], help="library option")
    one.add_argument("--passes", help="a pipeline to run first, e.g. flash")
    one.add_argument("--arch", default="fusemax", help=f"{', '.join(PRESETS)} or a YAML file")
    one.add_argument("--shapes", required=True, help="rank sizes, e.g. M=4096,P=4096,E=64,F=64")
    one.add_argument("--instances", type=int, default=1, help="batch x heads (default 1)")
    one.add_argument("--mapping", help="YAML of mapping overrides (bind, tiles, phases, ...)")
    one.set_defaults(handler=_model)


def _progress(console: Console) -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=True,
    )


def _fusemax(args: argparse.Namespace) -> int:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    console = Console(stderr=True)
    start = time.perf_counter()
    with _progress(console) as progress:
        task = progress.add_task("FuseMax study", total=study_size(not args.no_causal))
        found = run_study(
            causal=not args.no_causal,
            on_point=lambda label: progress.update(task, advance=1, description=label),
        )
    write_csv([p.row() for p in found], out / "fusemax.csv")
    written = [out / "fusemax.csv"]
    if not args.no_plots:
        from attncc.accel.plots import write_plots

        written += write_plots(found, out)
    elapsed = time.perf_counter() - start
    print(f"FuseMax study: {len(found)} points in {elapsed:.1f} s")
    print(format_summary(summarize(found)))
    print("wrote " + ", ".join(str(p) for p in written))
    return 0


def _sweep(args: argparse.Namespace) -> int:
    spec = load_sweep(args.spec)
    out = Path(args.out) if args.out else Path(Path(args.spec).stem + ".csv")
    total = sum(1 for _ in points(spec))
    console = Console(stderr=True)
    with _progress(console) as progress:
        task = progress.add_task(f"sweep {spec.get('name', Path(args.spec).stem)}", total=total)
        rows = run_sweep(
            spec,
            backend=args.cluster or "processes",
            workers=args.workers,
            address=args.address,
            on_point=lambda: progress.update(task, advance=1),
        )
    write_csv(rows, out)
    failed = [r for r in rows if r.get("error")]
    print(f"sweep: {len(rows)} points, {len(failed)} failed; wrote {out}")
    if failed:
        print(
            f"error: {len(failed)} of {len(rows)} points failed (their rows in {out} hold the "
            f"error){'; the first 5:' if len(failed) > 5 else ':'}",
            file=sys.stderr,
        )
    for row in failed[:5]:
        print(f"  {row['error']}", file=sys.stderr)
    return 1 if failed else 0


def _model(args: argparse.Namespace) -> int:
    options = {k: option_value(v) for k, v in key_values(args.option, "-O").items()}
    cascade = load(args.source, options)
    if args.passes:
        cascade = run_pipeline(cascade, args.passes)[0]
    arch = load_architecture(args.arch)
    sizes = key_values([t for t in args.shapes.split(",") if t.strip()], "--shapes")
    try:
        given = tuple((k, float(v)) for k, v in sizes.items())
    except ValueError:
        raise AttnccError(f"--shapes {args.shapes}: sizes are numbers") from None
    mapping: dict[str, Any] | None = None
    if args.mapping:
        data = read_yaml(args.mapping)
        if not isinstance(data, dict):
            raise SpecError(f"{args.mapping}: expected a mapping of mapping options")
        mapping = data
    work = Workload(f"--shapes {args.shapes} --instances {args.instances}", given, args.instances)
    result = evaluate(cascade, arch, work, mapping)
    print(format_result(result))
    return 0


def format_result(result: Result) -> str:
    """Why the result is what it is: phases with what bounds them, then Einsum by Einsum."""
    lines = [
        f"{result.cascade} on {result.design}: {result.latency * 1e3:.4g} ms, "
        f"{result.dram_bytes / 2**20:.4g} MiB DRAM traffic, {result.energy_pj * 1e-9:.4g} mJ",
        "utilization: " + ", ".join(f"{a} {u:.3f}" for a, u in result.utilization),
        f"mapping: {result.mapping.describe()}",
    ]
    for k, phase in enumerate(result.phases, 1):
        residency = phase.residency
        arrays = ", ".join(f"{a} {s * 1e3:.4g} ms" for a, s in phase.compute_s)
        lines.append(
            f"phase {k} ({phase.bound}-bound): {phase.latency * 1e3:.4g} ms; compute {arrays}; "
            f"DRAM {phase.memory * 1e3:.4g} ms; buffer {phase.buffer * 1e3:.4g} ms; "
            f"{residency.rows}x{residency.query_tiles} query rows resident"
            + (f", {residency.spilled:.0%} of fibers spilled" if residency.spilled else "")
        )
    lines.append(f"{'Einsum':<8} {'array':<6} {'ms':>10} {'energy mJ':>10}  operations")
    for einsum in result.einsums:
        ops = ", ".join(f"{k} {v:.3g}" for k, v in einsum.ops) or "(moves data)"
        lines.append(
            f"{einsum.name:<8} {einsum.array or '-':<6} {einsum.seconds * 1e3:>10.4g} "
            f"{einsum.energy_pj * 1e-9:>10.4g}  {ops}"
        )
    lines.append("energy: " + ", ".join(f"{a} {e * 1e-9:.4g} mJ" for a, e in result.energy))
    return "\n".join(lines)
