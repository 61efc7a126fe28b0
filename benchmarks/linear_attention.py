"""Linear attention on attncc's NumPy CPU path: the quadratic form as written against the form
`reassociate` gives, phi(Q) (phi(K)^T V), whose key loop runs once per head: O(N^2) against
O(N). B=1, H=8, E=F=64, elu+1 features, float32, non-causal. PyTorch's right product
(Katharopoulos et al., eq. 6, eager) is the reference every output is checked against (1e-4
of its largest magnitude) and the baseline beside attncc. Times are medians of `--repeat`
steady-state calls after one warm-up call (which emits and caches the kernel).

Run: `OPENBLAS_NUM_THREADS=1 .venv/bin/python benchmarks/linear_attention.py --threads 1`.
"""

from __future__ import annotations

import argparse
import functools
import sys
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from _common import median_seconds

from attncc.backends.execute import Backend, execute
from attncc.frontends.zoo.linear import linear_attention
from attncc.ir import Cascade
from attncc.passes import run_pipeline

B, H, D = 1, 8, 64


def _warm_median(call: Callable[[], object], repeat: int) -> float:
    call()
    return median_seconds(call, repeat)


def _torch_linear(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """[b, h, n, d] -> [b, h, n, d]: phi(Q) (phi(K)^T V) / phi(Q) sum_m phi(K)."""
    fq, fk = F.elu(q) + 1, F.elu(k) + 1
    return (fq @ (fk.transpose(-1, -2) @ v)) / (fq @ fk.sum(dim=2)[..., None])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1024,4096,16384", help="sequence lengths N")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--threads", type=int, help="torch intra-op threads")
    parser.add_argument("--quadratic-limit", type=int, default=16384, help="largest N for O(N^2)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    quadratic = linear_attention(batched=True, head_dim=D, value_dim=D)
    forms: dict[str, Cascade] = {
        "quadratic": quadratic,
        "reassociated": run_pipeline(quadratic, "reassociate")[0],
    }
    print(f"{'N':>6}  {'form':<13} {'attncc s':>9}  {'torch s':>8}  {'max error':>9}")
    failed = False
    for n in (int(s) for s in args.sizes.split(",")):
        chosen = {k: c for k, c in forms.items() if k != "quadratic" or n <= args.quadratic_limit}
        for row, error in _rows(n, chosen, args.repeat):
            failed |= error > 1e-4
            print(row)
    return 1 if failed else 0


def _rows(n: int, forms: dict[str, Cascade], repeat: int) -> list[tuple[str, float]]:
    """One line per form at length `n`, with its error against PyTorch's."""
    rng = np.random.default_rng(n)
    q, k, v = (rng.standard_normal((B, H, n, D), dtype=np.float32) for _ in range(3))
    tensors = [torch.from_numpy(x) for x in (q, k, v)]
    expected = _torch_linear(*tensors).numpy()
    torch_seconds = _warm_median(functools.partial(_torch_linear, *tensors), repeat)
    inputs = {name: x.transpose(0, 1, 3, 2) for name, x in zip("QKV", (q, k, v), strict=True)}
    rows = []
    for name, cascade in forms.items():
        run = functools.partial(execute, cascade, inputs, backend=Backend.NUMPY)
        seconds = _warm_median(run, repeat)
        actual = run()["AV"].transpose(0, 1, 3, 2)
        error = float(np.abs(actual - expected).max() / np.abs(expected).max())
        line = f"{n:>6}  {name:<13} {seconds:>9.4f}  {torch_seconds:>8.4f}  {error:>9.1e}"
        rows.append((line, error))
    return rows


if __name__ == "__main__":
    sys.exit(main())
