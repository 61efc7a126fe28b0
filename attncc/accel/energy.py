"""Energy from action counts: each action the model counts, times its energy in the spec's
table (picojoules per action, per word for memories).

Compute: each operation an Einsum performs, expanded into the native actions its PE builds it
from (exp on FuseMax: six MACs). Registers: every busy PE cycle reads and writes the PE's
register file as often as the array's spec says (`registers`; by default two operands read and
one result written; a zero-cycle select, a multiplexer in the output stage, is no busy cycle).
Buffer and DRAM: the words attncc.accel.traffic counts.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping

from attncc.accel.spec import Architecture, PEArray


def compute_energy(
    arch: Architecture, array: PEArray, counts: Mapping[str, float]
) -> dict[str, float]:
    """Picojoules by action for `counts` operations (kind -> count) on `array`."""
    energy: dict[str, float] = defaultdict(float)
    busy = 0.0
    for kind, count in counts.items():
        op = array.op(kind)
        assert op is not None, "the mapping binds Einsums only to arrays that run their ops"
        busy += count * op.cycles
        for action, times in op.actions:
            energy[action] += count * times * arch.energy_of(action)
    energy["register"] += busy * (
        array.register_reads * arch.energy_of("register_read")
        + array.register_writes * arch.energy_of("register_write")
    )
    return dict(energy)


def memory_energy(
    arch: Architecture, buffer_read: float, buffer_write: float, dram_read: float, dram_write: float
) -> dict[str, float]:
    """Picojoules for the words moved through the buffer and DRAM."""
    return {
        "buffer": buffer_read * arch.energy_of("buffer_read")
        + buffer_write * arch.energy_of("buffer_write"),
        "dram": dram_read * arch.energy_of("dram_read") + dram_write * arch.energy_of("dram_write"),
    }


def add(parts: Iterable[Mapping[str, float]]) -> dict[str, float]:
    total: dict[str, float] = defaultdict(float)
    for part in parts:
        for action, value in part.items():
            total[action] += value
    return dict(total)
