"""`attncc import FILE.py:FACTORY --shapes x=2x16x64`: the torch-mlir importer on the command line.

Prints, for each attention found in the exported module, where it is in the model's source,
what it computes (`AttentionSpec.describe`) and its cascade as text IR; headers are `#`
comments, so each site's text reads back as a `.ein` file. Softmax calls that are not
attention as attncc compiles it are listed with the reason. `--emit mlir` prints the module's
MLIR (torch dialect, weights elided) first; `--check` runs every cascade with the reference
interpreter on the tensors the module computed there and exits 1 on a mismatch (`mlir_check`).
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from attncc.ir import print_cascade

if TYPE_CHECKING:
    from attncc.frontends.torch.mlir_import import Exported
    from attncc.frontends.torch.mlir_patterns import AttentionSite

EPILOG = """\
--shapes names forward's parameters: x=2x16x64,bias=2x1x1x16 gives forward(x, bias) seeded
standard-normal inputs of those shapes (--dtype, --seed); ids=2x16:int1000 gives integers
below 1000 (token ids), keep=2x16:bool booleans. Parameters with defaults may be left out at
the end.

examples:
  attncc import examples/torch_models.py:sdpa_causal_attention --shapes x=2x16x64
  attncc import examples/torch_models.py:padded_attention --shapes x=2x16x64,bias=2x1x1x16 --check
  attncc import examples/torch_models.py:two_layer_transformer --shapes x=2x16x64 --emit mlir
"""


def register(commands: argparse._SubParsersAction) -> None:
    """Add `attncc import` to the CLI's subcommands."""
    command = commands.add_parser(
        "import",
        help="export a PyTorch module with torch-mlir and print the cascades of its attention",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    command.add_argument("factory", help="FILE.py:FACTORY, a function or nn.Module class")
    command.add_argument(
        "--shapes", required=True, help="forward's inputs, e.g. x=2x16x64,bias=2x1x1x16"
    )
    command.add_argument("--dtype", choices=("f32", "f64"), default="f32", help="default f32")
    command.add_argument("--seed", type=int, default=0, help="seed of the random inputs")
    command.add_argument("--emit", choices=("mlir",), help="also print the MLIR (torch dialect)")
    command.add_argument(
        "--decompose",
        action="store_true",
        help="apply torch-mlir's default decompositions (core ATen) before looking",
    )
    command.add_argument(
        "--check",
        action="store_true",
        help="run each cascade on the module's tensors and compare; exit 1 on a mismatch",
    )
    command.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    # torch and torch-mlir take seconds to import: only this command pays for them.
    from attncc.frontends.torch.import_inputs import shapes_text
    from attncc.frontends.torch.mlir_import import import_attention

    result = import_attention(
        args.factory, args.shapes, dtype=args.dtype, seed=args.seed, decompose=args.decompose
    )
    exported = result.exported
    if args.emit == "mlir":
        print(exported.mlir())
    count = len(result.sites)
    print(
        f"# {exported.source}: forward({shapes_text(exported.inputs)}) in {args.dtype}, "
        f"exported with torch-mlir: {count} attention site{'s' if count != 1 else ''}"
    )
    status = 0
    for number, site in enumerate(result.sites, 1):
        print(f"\n# site {number}: {result.location(site)}: {site.op.name}")
        _print_site(site)
        status |= _print_check(exported, site) if args.check else 0
    if not result.sites and not result.unrecognized:
        print("# no softmax and no scaled_dot_product_attention in the module")
    for skipped in result.unrecognized:
        print(
            f"\n# not recognized: {result.location(skipped)}: {skipped.op.name}: {skipped.reason}"
        )
    return status


def _print_site(site: AttentionSite) -> None:
    """What the site computes, its sizes, the notes on its masks, and its cascade."""
    d = site.dims
    print(f"# {site.spec.describe()}")
    print(
        f"# B={d.batch}, H={d.heads}, G={d.kv_heads}, P={d.queries}, M={d.keys}, "
        f"E={d.head_dim}, F={d.value_dim}"
    )
    for note in site.notes:
        print(f"# note: {note}")
    print(print_cascade(site.cascade()), end="")


def _print_check(exported: Exported, site: AttentionSite) -> int:
    """The site's --check line(s); 1 on a mismatch."""
    from attncc.frontends.torch.mlir_check import check_site

    checked = check_site(exported, site)
    verdict = "ok" if checked.ok else "MISMATCH"
    print(
        f"# check: max |cascade - module| = {checked.error:.3g} "
        f"(tolerance {checked.tolerance:.3g}): {verdict}"
    )
    if checked.empty_rows:
        print(
            f"# check: {checked.empty_rows} query rows see no key; the module gives them "
            f"{site.empty_row:g}"
        )
    return 0 if checked.ok else 1
