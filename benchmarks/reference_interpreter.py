"""How long the reference interpreter takes, next to PyTorch's SDPA on the same CPU and data.

The interpreter is an oracle, not a kernel; this table tells how large a shape a test or a
differential check can afford. Run: `.venv/bin/python benchmarks/reference_interpreter.py`.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import numpy as np
import torch
from _common import timed

from attncc.backends.numpy.reference import interpret
from attncc.frontends.library import attention_1pass, attention_2pass, attention_3pass
from attncc.ir import Cascade

CASCADES: dict[str, Callable[[], Cascade]] = {
    "attention_3pass": lambda: attention_3pass(causal=True),
    "attention_2pass": lambda: attention_2pass(causal=True),
    "attention_1pass(tile=64)": lambda: attention_1pass(causal=True, tile=64),
}


def best_of(repeats: int, run: Callable[[], object]) -> float:
    return min(timed(run) for _ in range(repeats))


def main() -> None:
    print(f"{'cascade':<26}{'E':>4}{'M=P':>7}{'attncc ms':>12}{'torch ms':>11}{'ratio':>8}")
    rng = np.random.default_rng(0)
    sdpa = torch.nn.functional.scaled_dot_product_attention
    for e, n in ((64, 256), (64, 1024), (128, 2048)):
        inputs = {name: rng.standard_normal((e, n)) for name in "QKV"}
        tensors = [torch.from_numpy(inputs[name].T.copy()) for name in "QKV"]
        reference = best_of(5, functools.partial(sdpa, *tensors, is_causal=True))
        for name, make in CASCADES.items():
            seconds = best_of(3, functools.partial(interpret, make(), inputs))
            row = f"{name:<26}{e:>4}{n:>7}{seconds * 1e3:>12.1f}{reference * 1e3:>11.2f}"
            print(f"{row}{seconds / reference:>8.0f}")


if __name__ == "__main__":
    main()
