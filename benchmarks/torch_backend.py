"""What `torch.compile(backend="attncc")` costs on the CPU against eager PyTorch, forward and
forward + backward, for one causal attention layer.

    .venv/bin/python benchmarks/torch_backend.py [--lengths 1024,4096] [--repeat 5]

The backward of the custom op recomputes the probabilities (reference.attention_backward): its
time is the price of a first, correct backward. Medians over `--repeat` runs after a warm-up
call (which includes Dynamo's compile); outputs and gradients are checked against eager.
"""

from __future__ import annotations

import argparse
import functools
from collections.abc import Callable

import torch
import torch.nn.functional as F
from _common import median_seconds

import attncc


class CausalAttention(torch.nn.Module):
    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return F.scaled_dot_product_attention(q, k, v, is_causal=True)


def _inputs(length: int, heads: int, dim: int) -> tuple[torch.Tensor, ...]:
    generator = torch.Generator().manual_seed(0)
    return tuple(
        torch.randn(1, heads, length, dim, generator=generator, requires_grad=True)
        for _ in range(3)
    )


def _timed_forward(
    module: Callable[..., torch.Tensor], inputs: tuple[torch.Tensor, ...], repeat: int
) -> float:
    return median_seconds(functools.partial(module, *inputs), repeat)


def _step(module: Callable[..., torch.Tensor], inputs: tuple[torch.Tensor, ...]) -> None:
    for t in inputs:
        t.grad = None
    module(*inputs).sum().backward()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", default="1024,4096")
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    eager = CausalAttention()
    backend = attncc.backend()
    compiled = torch.compile(CausalAttention(), backend=backend)
    print("N      eager fwd s  attncc fwd s  eager fwd+bwd s  attncc fwd+bwd s")
    for length in (int(n) for n in args.lengths.split(",")):
        inputs = _inputs(length, args.heads, args.dim)
        with torch.no_grad():
            torch.testing.assert_close(compiled(*inputs), eager(*inputs), atol=1e-4, rtol=1e-4)
        _step(compiled, inputs)
        got = [t.grad.clone() for t in inputs]
        _step(eager, inputs)
        for a, t in zip(got, inputs, strict=True):
            torch.testing.assert_close(a, t.grad, atol=1e-4, rtol=1e-3)
        with torch.no_grad():
            forward = [_timed_forward(m, inputs, args.repeat) for m in (eager, compiled)]
        steps = [
            median_seconds(functools.partial(_step, m, inputs), args.repeat)
            for m in (eager, compiled)
        ]
        cells = (*forward, *steps)
        print(f"{length:<6} {cells[0]:11.3f}  {cells[1]:12.3f}  {cells[2]:15.3f}  {cells[3]:16.3f}")
    assert all(r.compiled for r in backend.reports), backend.reports


if __name__ == "__main__":
    main()
