"""The README's attention-zoo table, measured: for each variant, the lines of its text IR, its
passes over the key sequence, how its work grows with the sequence length N, and the backends
that run it.

    .venv/bin/python benchmarks/zoo_table.py

Work is the cost analysis's operation count with every sequence rank at N and the other ranks
fixed (E = F = 64, 8 heads, 64-token tiles); its growth class is the exponent between N = 4096
and N = 16384, so a sliding window or a routed block list shows as O(N) when its density falls
as 1/N. Backends: `ref` is the reference interpreter on the cascade as written; `numpy` and
`triton` when the lowering pipeline and the tiled schedule accept the cascade; `staged` when
the variant's stages run them (`*_stages(...).run`: routing, MoH, HiLo).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import sympy

from attncc.analysis import cascade_cost, count_passes, evaluate
from attncc.analysis.report import bound_sizes
from attncc.backends.execute import lower_for_tiles
from attncc.backends.schedule import schedule
from attncc.backends.tile_program import tile_program
from attncc.errors import AttnccError
from attncc.frontends import masks
from attncc.frontends.library import ScoreMod, attention_1pass, attention_3pass, attention_sigmoid
from attncc.frontends.zoo import groups, hilo, linear, moh, routing
from attncc.ir import Cascade, print_cascade
from attncc.passes import run_pipeline

SEQUENCE_RANKS = ("M", "P", "N")
FIXED = {"E": 64, "F": 64, "H": 8, "G": 8, "B": 1, "D": 32, "J": 64, "HH": 4, "HL": 4}


@dataclass(frozen=True)
class Row:
    name: str
    build: Callable[[], Cascade]
    pipeline: str | None = None
    staged: bool = False
    sized: Callable[[int], Cascade] | None = None
    """For a variant whose sequence length is fixed by its options: the cascade at N tokens."""


def _linear(**options: object) -> Callable[[], Cascade]:
    return lambda: linear.linear_attention(**options)  # type: ignore[arg-type]


ROWS = [
    Row("softmax, 3-pass (reference)", lambda: attention_3pass(batched=True)),
    Row("softmax, 1-pass (FuseMax cascade 5)", lambda: attention_1pass(batched=True)),
    Row("softmax, causal GQA", lambda: attention_3pass(causal=True, gqa_group=4)),
    Row(
        "sliding window (256)",
        lambda: attention_3pass(batched=True, mask=masks.sliding_window(256)),
        "flash-sparse",
    ),
    Row("softcap + ALiBi", lambda: attention_3pass(batched=True, score=ScoreMod(30.0, True))),
    Row(
        "relative-position bias",
        lambda: attention_3pass(batched=True, score=ScoreMod(rel_bias=True)),
    ),
    Row("sigmoid (FlashSigmoid)", lambda: attention_sigmoid(batched=True)),
    Row("linear, elu+1", _linear(batched=True)),
    Row("linear, elu+1, reassociated", _linear(batched=True), "reassociate"),
    Row(
        "linear, Hedgehog, reassociated",
        _linear(feature_map="hedgehog", batched=True),
        "reassociate",
    ),
    Row(
        "Lightning (causal), chunked",
        lambda: linear.lightning_attention(batched=True),
        "chunk-causal(tile=64)",
    ),
    Row("routed blocks (top-4 of 64-token blocks)", lambda: routing.routing(), staged=True),
    Row("Mixture-of-Head", lambda: moh.moh(), staged=True),
    Row(
        "HiLo (2x2 windows, 16x16 grid)",
        lambda: hilo.hilo(),
        staged=True,
        sized=lambda n: hilo.hilo(shape=(math.isqrt(n), math.isqrt(n))),
    ),
    Row("Group Pose, within instance", lambda: groups.group_pose(gqa_group=2)),
]


def _ir_lines(cascade: Cascade) -> int:
    return sum(1 for line in print_cascade(cascade).splitlines() if line.strip())


def _key_passes(cascade: Cascade) -> int:
    rank = next((p.outer for p in cascade.partitions if p.rank == "M"), "M")
    return count_passes(cascade, rank).passes


def _work(cascade: Cascade, n: int) -> float:
    given = {r.name: n for r in cascade.ranks if r.name in SEQUENCE_RANKS and r.size.is_Symbol}
    given |= {
        k: v for k, v in FIXED.items() if (r := cascade.rank(k)) is not None and r.size.is_Symbol
    }
    sizes = bound_sizes(cascade, given)
    cost = cascade_cost(cascade)
    return float(sum(float(evaluate(count, sizes)) for _, count in cost.totals()))


def _growth(row: Row, cascade: Cascade) -> str:
    small, large = (
        (_work(row.sized(n), n) for n in (4096, 16384))
        if row.sized
        else (_work(cascade, n) for n in (4096, 16384))
    )
    exponent = math.log(large / small, 4)
    rounded = round(exponent * 2) / 2
    return "O(N)" if rounded == 1 else f"O(N^{rounded:g})"


def _backends(cascade: Cascade, staged: bool) -> str:
    try:
        tile_program(schedule(lower_for_tiles(cascade)))
    except AttnccError:
        return "ref; numpy, triton by stages" if staged else "ref"
    return "ref, numpy, triton"


def main() -> None:
    print("| variant | lines of IR | passes over keys | work | backends |")
    print("| --- | --- | --- | --- | --- |")
    for row in ROWS:
        cascade = row.build()
        if row.pipeline:
            cascade = run_pipeline(cascade, row.pipeline)[0]
        label = f"{row.name} (`{row.pipeline}`)" if row.pipeline else row.name
        cells = (_ir_lines(cascade), _key_passes(cascade), _growth(row, cascade))
        print(
            f"| {label} | {cells[0]} | {cells[1]} | {cells[2]} | {_backends(cascade, row.staged)} |"
        )


if __name__ == "__main__":
    sympy.init_printing(use_unicode=False)
    main()
