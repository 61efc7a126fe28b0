"""The `attncc` command: thin wrappers over the public API, one function per subcommand.

attncc dump FILE|NAME [-O key=value ...]        the cascade as text IR
attncc check FILE|NAME ...                        verify; located errors, exit status 1
attncc run FILE|NAME --shapes E=64,M=512,... [--seed N] [--dtype f64|f32]
           [--backend reference|numpy|triton]
attncc lower FILE|NAME --target numpy|triton [-o out.py] [--report] [--shapes ...]
           [--dtype f16|bf16|f32] [--tiles QxK] [--passes PIPELINE]
                                                  the cascade as NumPy or Triton source
attncc analyze FILE|NAME [--rank M] [--shapes ...] [--json] [--dot graph.dot]
attncc opt FILE|NAME --passes PIPELINE [--print-ir-after-all] [--check] [-o out.ein]
attncc masks NAME [--shape 64x64] [--tile 64|QxK] [-O key=value ...] [--png out.png]
                                                  a mask's tile classes, as text or a picture
attncc demo                                       the built-in end-to-end example
attncc study fusemax|sweep|model ...              accelerator studies (attncc.accel.cli)
attncc import FILE.py:FACTORY --shapes ... [--emit mlir] [--check]  a PyTorch module's attention
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import textwrap
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np

from attncc.accel.cli import register as register_study
from attncc.analysis import (
    analyze,
    count_passes,
    format_report,
    max_passes,
    report_json,
    to_dot,
    write_dot,
)
from attncc.analysis.sparsity import classify_tiles
from attncc.analysis.tile_picture import write_png
from attncc.backends.execute import LOWERING_PIPELINE, Backend, execute
from attncc.config import config, use_triton_interpreter
from attncc.differential import check_equivalent, random_inputs
from attncc.errors import AttnccError, VerifyError
from attncc.frontends.library import attention_3pass
from attncc.frontends.loader import load
from attncc.frontends.mask_options import (
    DEFAULT_MASK_LENGTH,
    build_mask,
    parse_mask_options,
    positive_ints,
)
from attncc.frontends.masks import MASKS
from attncc.frontends.options import key_values, option_value
from attncc.frontends.sdpa import match_sdpa, sdpa_reference
from attncc.frontends.torch.import_cli import register as register_import
from attncc.frontends.zoo import STAGED
from attncc.frontends.zoo.stages import Staged
from attncc.ir import Cascade, DType, bind_sizes, parse, print_cascade
from attncc.passes import PIPELINES, PassManager, parse_pipeline, run_pipeline


def parse_options(items: Sequence[str]) -> dict[str, object]:
    """`-O causal=true -O tile=128` as keyword options for a library cascade."""
    return {key: option_value(text) for key, text in key_values(items, "-O").items()}


def parse_shapes(text: str | None) -> dict[str, int]:
    """`E=64,M=512` as rank sizes."""
    sizes = {}
    for key, value in key_values(
        [t for t in (text or "").split(",") if t.strip()], "--shapes"
    ).items():
        if not (value.isascii() and value.isdigit()) or int(value) < 1:
            raise AttnccError(f"--shapes {key}={value}: a size is a positive integer")
        sizes[key] = int(value)
    return sizes


def _statistics(name: str, array: np.ndarray) -> str:
    finite = array[np.isfinite(array)]
    bad = array.size - finite.size
    if finite.size == 0:
        return f"  {name:<8} shape {array.shape}: no finite values"
    return (
        f"  {name:<8} shape {array.shape}  mean {finite.mean():+.6g}  std {finite.std():.6g}  "
        f"min {finite.min():+.6g}  max {finite.max():+.6g}  non-finite {bad}"
    )


def run_and_report(
    cascade: Cascade,
    sizes: Mapping[str, int],
    seed: int,
    dtype: str,
    backend: Backend = Backend.REFERENCE,
    staged: Staged | None = None,
) -> float:
    """Run `cascade` on random inputs with `backend` (as its `staged` form when given), print
    output statistics and, for attention, the error against PyTorch's scaled_dot_product_
    attention. Returns that relative error (or NaN)."""
    bound = bind_sizes(cascade, sizes)
    numpy_dtype = np.dtype(np.float64 if dtype == "f64" else np.float32)
    inputs = random_inputs(cascade, bound, np.random.default_rng(seed), numpy_dtype)
    if staged is None:
        outputs = execute(cascade, inputs, bound, backend)
    else:
        outputs = staged.run(inputs, backend, bound)
    shown = ", ".join(f"{k}={v}" for k, v in bound.items())
    how = f" ({len(staged.stages)} stages)" if staged is not None else ""
    print(f"{cascade.name}: {shown}, {dtype}, backend {backend.value}{how}")
    for name, array in outputs.items():
        print(_statistics(name, array))
    call = match_sdpa(cascade)
    if call is None:
        print("  not softmax attention in Q[..,e,p], K[..,e,m], V[..,f,m] layout: no SDPA check")
        return float("nan")
    reference = sdpa_reference(call, inputs, bound)
    error = float(np.abs(outputs[call.output] - reference).max())
    relative = error / float(np.abs(reference).max())
    print(
        f"  max |{call.output} - scaled_dot_product_attention| = {error:.3g} "
        f"(relative {relative:.3g}; is_causal={call.causal}, enable_gqa={call.gqa})"
    )
    return relative


def _dump(args: argparse.Namespace) -> int:
    print(print_cascade(load(args.source, parse_options(args.option))), end="")
    return 0


def _check(args: argparse.Namespace) -> int:
    status = 0
    for source in args.sources:
        try:
            cascade = load(source)
        except VerifyError as error:
            print(f"{source}: {len(error.diagnostics)} error(s)", file=sys.stderr)
            for diagnostic in error.diagnostics:
                print(f"  {diagnostic}", file=sys.stderr)
            status = 1
            continue
        except AttnccError as error:
            print(f"{source}: {error}", file=sys.stderr)
            status = 1
            continue
        print(f"{source}: ok ({cascade.name}, {len(cascade.einsums)} Einsums)")
    return status


def _run(args: argparse.Namespace) -> int:
    options = parse_options(args.option)
    cascade = load(args.source, options)
    backend = Backend(args.backend)
    # The tiled backends take a staged variant stage by stage (its kernels, and what they read).
    tiled = backend is not Backend.REFERENCE and args.source in STAGED
    staged = STAGED[args.source](**options) if tiled else None
    if backend is Backend.TRITON and not _cuda_available():
        if not use_triton_interpreter():
            raise AttnccError("Triton is already loaded for a GPU; set TRITON_INTERPRET=1")
        print("no CUDA device: Triton runs the kernel in its interpreter", file=sys.stderr)
    # Triton kernels compute in float32 at most; the other backends default to float64.
    dtype = args.dtype or ("f32" if backend is Backend.TRITON else "f64")
    if backend is Backend.TRITON and dtype == "f64":
        raise AttnccError("--backend triton computes in float32 at most: use --dtype f32")
    run_and_report(cascade, parse_shapes(args.shapes), args.seed, dtype, backend, staged)
    return 0


def _cuda_available() -> bool:
    import torch

    return bool(torch.cuda.is_available())


_TRITON_TYPES = {"f16": DType.F16, "bf16": DType.BF16, "f32": DType.F32}


def _lower(args: argparse.Namespace) -> int:
    cascade = load(args.source, parse_options(args.option))
    lowered, _ = run_pipeline(cascade, args.passes)
    tiles = positive_ints(args.tiles, "--tiles", "128x64") if args.tiles else None
    if tiles is not None and len(tiles) != 2:
        raise AttnccError(f"--tiles {args.tiles}: give QUERYxKEY, e.g. 128x64")
    if tiles is None and (args.warps or args.stages):
        raise AttnccError("--warps and --stages go with --tiles (a whole tile configuration)")
    if args.target == "numpy":
        triton_only = [f"--{o}" for o in ("report", "dtype", "warps", "stages") if getattr(args, o)]
        if triton_only:
            raise AttnccError(f"{', '.join(triton_only)}: options of --target triton")
        from attncc.backends.numpy.tiled import lower_tiled, numpy_source

        query, key = tiles or (None, None)
        source = numpy_source(lower_tiled(lowered, query_tile=query, key_tile=key))
    else:
        source = _lower_triton(lowered, args, tiles)
    if args.output:
        Path(args.output).write_text(source)
        print(f"{args.target} source written to {args.output}", file=sys.stderr)
    else:
        print(source, end="")
    return 0


def _lower_triton(lowered: Cascade, args: argparse.Namespace, tiles: Sequence[int] | None) -> str:
    from attncc.backends.schedule import schedule
    from attncc.backends.tile_program import tile_program
    from attncc.backends.triton.launch import TileConfig, lower_triton

    shapes = parse_shapes(args.shapes)
    features = {}
    for var in tile_program(schedule(lowered)).features:
        rank = lowered.rank_of_index(var)
        assert rank is not None, "tile axes are index variables of ranks"
        fixed = rank.size if rank.size.is_number else None
        features[var] = shapes.get(rank.name, int(fixed) if fixed is not None else 64)
    element = _TRITON_TYPES[args.dtype or "f16"]
    dtypes = {
        d.name: element if d.dtype is None or d.dtype.is_float else d.dtype
        for d in (*lowered.inputs, *lowered.outputs)
    }
    config = None
    if tiles is not None:
        config = TileConfig(tiles[0], tiles[1], args.warps or 8, args.stages or 2)
    kernel = lower_triton(lowered, features=features, dtypes=dtypes, config=config)
    if args.report:
        from attncc.backends.triton.cubin import resource_table
        from attncc.backends.triton.report import compile_report

        rows = compile_report(kernel, name=lowered.name)
        shown = ", ".join(f"{v}={n}" for v, n in features.items())
        tile = f"{kernel.config.query_tile}x{kernel.config.key_tile}"
        print(
            f"compiled for CUDA without a GPU; {shown}, {element.value}, tiles {tile}",
            file=sys.stderr,
        )
        print(resource_table(rows), file=sys.stderr)
    return kernel.source


def _analyze(args: argparse.Namespace) -> int:
    cascade = load(args.source, parse_options(args.option))
    ranks = tuple(args.rank) if args.rank else None
    analysis = analyze(cascade, ranks)
    sizes = parse_shapes(args.shapes) if args.shapes else None
    if args.json:
        print(json.dumps(report_json(analysis, sizes), indent=2))
    else:
        print(format_report(analysis, sizes), end="")
    if args.dot:
        chosen = next((p for p in analysis.passes if p.passes == max_passes(analysis)), None)
        written = write_dot(to_dot(cascade, chosen), Path(args.dot))
        print(f"graph written to {written}", file=sys.stderr)
    return 0


def _opt(args: argparse.Namespace) -> int:
    cascade = load(args.source, parse_options(args.option))
    after = frozenset(["*"] if args.print_ir_after_all else args.print_ir_after or [])

    def show(name: str, current: Cascade) -> None:
        print(f"// IR after {name}\n{print_cascade(current)}", file=sys.stderr)

    manager = PassManager(parse_pipeline(args.passes), after, show)
    result, records = manager.run(cascade)
    for record in records:
        state = "changed" if record.changed else "unchanged"
        print(f"{record.name}: {state} ({record.seconds * 1e3:.1f} ms)", file=sys.stderr)
        for remark in record.remarks:
            print(f"  {remark}", file=sys.stderr)
    if args.check:
        check_equivalent(cascade, result)
        print("differential check: outputs agree on random inputs", file=sys.stderr)
    text = print_cascade(result)
    if args.output:
        Path(args.output).write_text(text)
    else:
        print(text, end="")
    return 0


def _demo(args: argparse.Namespace) -> int:
    plain = attention_3pass(head_dim=64, value_dim=64, causal=True)
    print("Causal softmax attention as written (FuseMax Cascade 4):\n")
    print(print_cascade(plain))
    print(_passes_line(plain, "M"))
    derived, _ = run_pipeline(plain, "flash")
    fused = replace(derived, name="attention_flash")
    print("\nattncc opt --passes flash (defer-div, partition, running-reduce, dce) derives:\n")
    print(print_cascade(fused))
    print(_passes_line(fused, "M1"))
    assert parse(print_cascade(fused)) == fused
    print("\nBoth, run by the reference interpreter on random inputs (M = 200 is not a multiple")
    print("of the 64-key tile), against PyTorch:")
    worst = max(
        run_and_report(cascade, {"M": 200, "P": 200}, seed=0, dtype="f64")
        for cascade in (plain, fused)
    )
    if not worst < 1e-10:
        print("demo FAILED: the interpreter disagrees with PyTorch", file=sys.stderr)
        return 1
    return 0


def _passes_line(cascade: Cascade, rank: str) -> str:
    result = count_passes(cascade, rank)
    chain = " ".join(
        f"{link.producer} => {link.consumer}" for link in result.witness if link.new_pass
    )
    why = f" (forced by {chain})" if chain else ""
    return f"passes over {rank}: {result.passes}{why}"


# -- attncc masks: a mask's tile classes. -------------------------------------------------------

MAX_TILES = 1 << 24
"""The most tiles `attncc masks` classifies (a 16M-entry map; a larger --tile lowers it)."""

MASKS_EPILOG = f"""\
{textwrap.fill("masks: " + ", ".join(MASKS), 88, subsequent_indent="  ")}

-O values: 7 or true; 7x7 or 3,3 or true,false (one per axis); 0:1,2:2 (a list of
(query block, key block) pairs, for pairs and random_pairs). --shape gives the grid of
shape masks (64x64, 8x32x32) and the length of length masks; other masks use the product
(default {DEFAULT_MASK_LENGTH}).

data masks read made-up tensors:
  document     -O docs=4: docs equal-length documents, ids 0..docs-1 in order, the same
               array for the key and the query ids
  block_table  -O seed=0 -O keep=0.3: a random table, each block pair kept with
               probability keep

examples:
  attncc masks causal --shape 256 --tile 64
  attncc masks neighborhood_2d --shape 64x64 -O kernel=7x7 --png na2d.png
  attncc masks bigbird --shape 4096 -O block=64 -O window_blocks=3 -O global_blocks=1
"""


def _masks(args: argparse.Namespace) -> int:
    shape = positive_ints(args.shape, "--shape", "4096 or 64x64") if args.shape else None
    tiles = positive_ints(args.tile, "--tile", "64 or 128x64")
    if len(tiles) > 2:
        raise AttnccError(f"--tile {args.tile}: give one tile size or QUERYxKEY, e.g. 128x64")
    query_tile, key_tile = tiles if len(tiles) == 2 else tiles * 2
    if args.max_tiles < 1:
        raise AttnccError(f"--max-tiles {args.max_tiles}: must be positive")
    predicate, data, shape = build_mask(args.name, parse_mask_options(args.option), shape)
    n = math.prod(shape)
    if (-(-n // query_tile)) * (-(-n // key_tile)) > MAX_TILES:
        raise AttnccError(
            f"{n} positions in tiles of {query_tile}x{key_tile} make too many "
            "tiles; use a larger --tile"
        )
    tile_map = classify_tiles(
        predicate, key_len=n, query_len=n, key_tile=key_tile, query_tile=query_tile, data=data
    )
    print(tile_map.to_string(args.max_tiles))
    if not tile_map.exact:
        print("note: the data only bounds some tiles; they are shown PARTIAL", file=sys.stderr)
    if args.png:
        title = (
            f"{args.name}, shape {'x'.join(map(str, shape))}, tile {query_tile}x{key_tile}, "
            f"density {tile_map.density:.4f}"
        )
        print(f"picture written to {write_png(tile_map, args.png, title)}", file=sys.stderr)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="attncc", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)

    def source_command(name: str, help_text: str) -> argparse.ArgumentParser:
        command = commands.add_parser(name, help=help_text)
        command.add_argument("source", help="a .ein file or a library cascade name")
        command.add_argument(
            "-O", "--option", action="append", default=[], help="library option, e.g. causal=true"
        )
        return command

    source_command("dump", "print a cascade as text IR").set_defaults(handler=_dump)
    check = commands.add_parser("check", help="verify cascades; exit status 1 on errors")
    check.add_argument("sources", nargs="+")
    check.set_defaults(handler=_check)
    run = source_command("run", "run a cascade on random inputs with the reference interpreter")
    run.add_argument("--shapes", help="rank sizes, e.g. E=64,M=512,P=512")
    run.add_argument("--seed", type=int, default=0)
    run.add_argument(
        "--dtype", choices=("f64", "f32"), help="inputs (default f64; f32 for --backend triton)"
    )
    run.add_argument(
        "--backend",
        choices=[b.value for b in Backend],
        default="reference",
        help="reference interpreter (default), tiled NumPy, or Triton (interpreted without a GPU)",
    )
    run.set_defaults(handler=_run)
    lower = source_command("lower", "emit the cascade as a NumPy or Triton kernel")
    lower.add_argument("--target", choices=("numpy", "triton"), required=True)
    lower.add_argument("-o", "--output", help="write the source here instead of stdout")
    lower.add_argument(
        "--report",
        action="store_true",
        help="compile for sm_80 and sm_90 and print registers, shared memory, spills, mma (stderr)",
    )
    lower.add_argument(
        "--passes", default=LOWERING_PIPELINE, help=f"pipeline first (default {LOWERING_PIPELINE})"
    )
    lower.add_argument("--shapes", help="head dimensions, e.g. E=128,F=128 (default 64)")
    lower.add_argument("--dtype", choices=tuple(_TRITON_TYPES), help="Triton inputs (default f16)")
    lower.add_argument("--tiles", help="QUERYxKEY tile sizes (default: per target)")
    lower.add_argument("--warps", type=int, help="Triton warps with --tiles (default 8)")
    lower.add_argument("--stages", type=int, help="Triton stages with --tiles (default 2)")
    lower.set_defaults(handler=_lower)
    analyze_command = source_command("analyze", "pass lower bound, footprint and cost")
    analyze_command.add_argument(
        "--rank", action="append", help="rank to count passes over (repeatable; default: all)"
    )
    analyze_command.add_argument("--shapes", help="evaluate at these sizes, e.g. E=64,M=4096")
    analyze_command.add_argument("--json", action="store_true", help="JSON for scripts")
    analyze_command.add_argument("--dot", help="write the graph (.dot, or .svg/.png via Graphviz)")
    analyze_command.set_defaults(handler=_analyze)
    opt = source_command("opt", "rewrite a cascade with a pipeline of passes")
    pipelines = ", ".join(f"{k} = {v}" for k, v in PIPELINES.items())
    opt.add_argument(
        "--passes", required=True, help=f"e.g. partition(rank=M,tile=128),dce; {pipelines}"
    )
    opt.add_argument("--print-ir-after-all", action="store_true", help="IR after every pass")
    opt.add_argument("--print-ir-after", action="append", help="IR after this pass")
    opt.add_argument("--check", action="store_true", help="compare with the input by running")
    opt.add_argument("-o", "--output", help="write the result here instead of stdout")
    opt.set_defaults(handler=_opt)
    masks = commands.add_parser(
        "masks",
        help="a mask's tiles: which are empty, partial or full (text, or --png)",
        epilog=MASKS_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    masks.add_argument("name", help="a mask of the mask library (listed below)")
    masks.add_argument("--shape", help="sequence length or grid, e.g. 4096 or 64x64 or 8x32x32")
    masks.add_argument("--tile", default="64", help="tile size, or QUERYxKEY (default 64)")
    masks.add_argument(
        "-O", "--option", action="append", default=[], help="mask option, e.g. kernel=7x7"
    )
    masks.add_argument("--png", help="also draw the tile classes into this PNG file")
    masks.add_argument(
        "--max-tiles", type=int, default=64, help="widest text picture, in tiles (default 64)"
    )
    masks.set_defaults(handler=_masks)
    commands.add_parser("demo", help="the built-in end-to-end example").set_defaults(handler=_demo)
    register_study(commands)
    register_import(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        logging.basicConfig(level=config().log_level, format="%(name)s: %(levelname)s: %(message)s")
        return int(args.handler(args))
    except AttnccError as error:
        print(f"error: {error}", file=sys.stderr)
    except OSError as error:
        print(f"error: {error.filename}: {error.strerror}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
