"""The attention an `AttentionSpec` states, in plain PyTorch operations.

Three callers need it: the custom op's backward (which recomputes the probabilities, see
`attention_backward`), the custom op's forward when a kernel fails at run time (the model
must not crash), and `visible`, which evaluates a mask predicate on a grid of positions.
Everything here materializes the P x M scores, as eager attention does.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable
from typing import Any

import torch

from attncc.frontends.torch.spec import AttentionSpec
from attncc.ir import Call, Const, Coord, Expr

_OPS: dict[str, Callable[..., Any]] = {
    "add": operator.add,
    "sub": operator.sub,
    "mul": operator.mul,
    "floordiv": torch.floor_divide,
    "mod": torch.remainder,
    "max": torch.maximum,
    "min": torch.minimum,
    "abs": torch.abs,
    "lt": operator.lt,
    "le": operator.le,
    "gt": operator.gt,
    "ge": operator.ge,
    "eq": operator.eq,
    "ne": operator.ne,
    "and": torch.logical_and,
    "or": torch.logical_or,
    "not": torch.logical_not,
}
"""Integer and logical IR operators on int64 position tensors (exact, like the IR's)."""


def visible(
    spec: AttentionSpec, query_len: int, key_len: int, device: torch.device
) -> torch.Tensor | None:
    """[P, M] booleans, true where query p sees key m under the causal flag and the
    predicate; None when every key is visible."""
    conditions = [e for e in (_causal(spec), spec.predicate) if e is not None]
    if not conditions:
        return None
    m = torch.arange(key_len, device=device)[None, :]
    p = torch.arange(query_len, device=device)[:, None]
    result = torch.ones(query_len, key_len, dtype=torch.bool, device=device)
    for condition in conditions:
        result = result & _evaluate(condition, {"m": m, "p": p})
    return result


def _causal(spec: AttentionSpec) -> Expr | None:
    return Call("le", (Coord("m"), Coord("p"))) if spec.causal else None


def _evaluate(expr: Expr, positions: dict[str, torch.Tensor]) -> Any:
    if isinstance(expr, Const):
        return int(expr.value) if expr.value.is_integer() else expr.value
    if isinstance(expr, Coord):
        return positions[expr.name]
    if isinstance(expr, Call) and expr.op in _OPS:
        return _OPS[expr.op](*(_evaluate(a, positions) for a in expr.args))
    raise ValueError(f"a mask predicate cannot hold {expr!r}")


def _bias(spec: AttentionSpec, mask: torch.Tensor | None, dtype: torch.dtype) -> Any:
    """The additive form of a mask tensor: SDPA's meaning of a boolean mask is 0 where
    visible and -inf where hidden."""
    if mask is None:
        return None
    if mask.dtype == torch.bool:
        return torch.zeros((), dtype=dtype, device=mask.device).masked_fill(~mask, -math.inf)
    return mask.to(dtype)


def _scores(
    spec: AttentionSpec,
    q: torch.Tensor,
    k: torch.Tensor,
    mask: torch.Tensor | None,
) -> torch.Tensor:
    """s = q k^T * scale + mask, hidden keys at -inf, in float32 or wider."""
    compute = torch.promote_types(q.dtype, torch.float32)
    scale = spec.scale if spec.scale is not None else 1 / math.sqrt(q.shape[-1])
    s = torch.matmul(q.to(compute), _repeat(spec, k).to(compute).transpose(-1, -2)) * scale
    bias = _bias(spec, mask, compute)
    if bias is not None:
        s = s + bias
    keep = visible(spec, q.shape[-2], k.shape[-2], q.device)
    return s if keep is None else s.masked_fill(~keep, -math.inf)


def _repeat(spec: AttentionSpec, kv: torch.Tensor) -> torch.Tensor:
    """Key/value heads repeated for the query heads that share them (GQA)."""
    return kv if spec.gqa_group is None else kv.repeat_interleave(spec.gqa_group, dim=-3)


def attention_reference(
    spec: AttentionSpec,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: torch.Tensor | None,
) -> torch.Tensor:
    """softmax(s) v, in q's dtype."""
    probabilities = torch.softmax(_scores(spec, q, k, mask), dim=-1)
    return torch.matmul(probabilities, _repeat(spec, v).to(probabilities.dtype)).to(q.dtype)


def attention_backward(
    spec: AttentionSpec,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: torch.Tensor | None,
    grad: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Gradients of softmax(s) v with respect to q, k, v and an additive mask.

    With A = softmax(s) and O = A V: dV = A^T dO, dA = dO V^T, ds = A (dA - rowsum(dA A)),
    dq = ds K * scale, dk = ds^T q * scale, dmask = ds. Written out (rather than through
    torch.autograd) so the backward traces into a graph like any other ATen code."""
    compute = torch.promote_types(q.dtype, torch.float32)
    scale = spec.scale if spec.scale is not None else 1 / math.sqrt(q.shape[-1])
    a = torch.softmax(_scores(spec, q, k, mask), dim=-1)
    # Hidden rows (every key masked) give NaN in eager attention too; their gradient is 0.
    a = torch.nan_to_num(a, nan=0.0)
    g = grad.to(compute)
    dv = torch.matmul(a.transpose(-1, -2), g)
    da = torch.matmul(g, _repeat(spec, v).to(compute).transpose(-1, -2))
    ds = a * (da - (da * a).sum(dim=-1, keepdim=True))
    dq = torch.matmul(ds, _repeat(spec, k).to(compute)) * scale
    dk = torch.matmul(ds.transpose(-1, -2), q.to(compute)) * scale
    dmask = None
    if mask is not None and mask.dtype != torch.bool:
        dmask = _sum_to(ds, mask.shape).to(mask.dtype)
    return dq.to(q.dtype), _fold(spec, dk).to(k.dtype), _fold(spec, dv).to(v.dtype), dmask


def _fold(spec: AttentionSpec, grad: torch.Tensor) -> torch.Tensor:
    """The gradient of a key/value head: the sum over the query heads that share it."""
    if spec.gqa_group is None:
        return grad
    *batch, heads, length, features = grad.shape
    grouped = grad.reshape(*batch, heads // spec.gqa_group, spec.gqa_group, length, features)
    return grouped.sum(dim=-3)


def _sum_to(grad: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """`grad` summed over the dims a tensor of `shape` was broadcast along."""
    leading = grad.dim() - len(shape)
    summed = grad.sum(dim=tuple(range(leading))) if leading else grad
    dims = tuple(i for i, n in enumerate(shape) if n == 1 and summed.shape[i] != 1)
    return summed.sum(dim=dims, keepdim=True) if dims else summed
