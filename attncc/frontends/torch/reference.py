"""The attention an `AttentionSpec` states, in plain PyTorch operations.

The custom op's backward recomputes the probabilities with it (`attention_backward`), its
forward falls back on it when a kernel fails at run time (the model must not crash), and both
settle rows that see no key the way the model asked (`with_empty_rows`). Everything here but
the row check materializes the P x M scores, as eager attention does.
"""

from __future__ import annotations

import functools
import math
import operator
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from attncc.analysis import TileClass, classify_tiles
from attncc.analysis.data_masks import COMPARE
from attncc.errors import AnalysisError
from attncc.frontends.torch.spec import AttentionSpec, EmptyRow
from attncc.ir import Call, Const, Coord, Expr

_OPS: dict[str, Callable[..., Any]] = {
    **COMPARE,
    "add": operator.add,
    "sub": operator.sub,
    "mul": operator.mul,
    "floordiv": torch.floor_divide,
    "mod": torch.remainder,
    "max": torch.maximum,
    "min": torch.minimum,
    "abs": torch.abs,
    "and": torch.logical_and,
    "or": torch.logical_or,
    "not": torch.logical_not,
}
"""The IR's integer and logical operators on int64 position tensors: PyTorch's spelling of
the masks' part of backends.numpy.ops.MAP_OPS, so masks evaluate on any device and trace."""


def position_mask(spec: AttentionSpec) -> Expr | None:
    """The causal flag and the predicate as one predicate over m and p (None: no such mask)."""
    conditions = [e for e in (_causal(spec), spec.predicate) if e is not None]
    if not conditions:
        return None
    return conditions[0] if len(conditions) == 1 else Call("and", tuple(conditions))


def visible(
    spec: AttentionSpec, query_len: int, key_len: int, device: torch.device
) -> torch.Tensor | None:
    """[P, M] booleans, true where query p sees key m under the causal flag and the
    predicate; None when every key is visible."""
    predicate = position_mask(spec)
    return None if predicate is None else _grid(predicate, query_len, key_len, device)


def _grid(predicate: Expr, query_len: int, key_len: int, device: torch.device) -> torch.Tensor:
    m = torch.arange(key_len, device=device)[None, :]
    p = torch.arange(query_len, device=device)[:, None]
    every = torch.ones(query_len, key_len, dtype=torch.bool, device=device)
    return every & _evaluate(predicate, {"m": m, "p": p})


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


@functools.lru_cache(maxsize=64)
def _rows_seeing_a_key(predicate: Expr, query_len: int, key_len: int) -> np.ndarray | None:
    """[P] booleans, whether each query row sees a key under `predicate`; None when all do.
    Decided per row by the tile classifier (one tile per row), not point by point."""
    try:
        tiles = classify_tiles(
            predicate, key_len=key_len, query_len=query_len, key_tile=key_len, query_tile=1
        )
        rows = tiles.classes[:, 0] != TileClass.EMPTY
    except AnalysisError:
        # A predicate the classifier cannot decide exactly: point by point, once per size.
        rows = _grid(predicate, query_len, key_len, torch.device("cpu")).any(dim=-1).numpy()
    return None if rows.all() else rows


def rows_seeing_a_key(
    spec: AttentionSpec, mask: torch.Tensor | None, query_len: int, key_len: int
) -> torch.Tensor | None:
    """Booleans [..., P], whether each query row sees at least one key; None when all do."""
    predicate = position_mask(spec)
    if mask is None:
        if predicate is None:
            return None
        rows = _rows_seeing_a_key(predicate, query_len, key_len)
        return None if rows is None else torch.from_numpy(rows)
    keep = mask if mask.dtype == torch.bool else mask != -math.inf
    shown = visible(spec, query_len, key_len, mask.device)
    if shown is not None:
        keep = keep & shown
    return keep.any(dim=-1)


def with_empty_rows(
    spec: AttentionSpec, out: torch.Tensor, mask: torch.Tensor | None, key_len: int
) -> torch.Tensor:
    """`out` [..., P, F] with the rows that see no key set to what the model asked (0 for
    SDPA, NaN for a softmax written out): the cascades' own value there depends on the form
    (0/0 as written, 0 once block-sparse)."""
    if not spec.masked:
        return out
    rows = rows_seeing_a_key(spec, mask, out.shape[-2], key_len)
    if rows is None:
        return out
    empty = 0.0 if spec.empty_row is EmptyRow.ZERO else math.nan
    return torch.where(rows.to(out.device)[..., None], out, empty)


def additive_mask(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The additive form of a mask tensor: SDPA's meaning of a boolean mask is 0 where
    visible and -inf where hidden."""
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
    if mask is not None:
        s = s + additive_mask(mask, compute)
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
    out = torch.matmul(probabilities, _repeat(spec, v).to(probabilities.dtype))
    return with_empty_rows(spec, out, mask, k.shape[-2]).to(q.dtype)


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
    # A row that sees no key has NaN probabilities (0/0); its output does not depend on the
    # inputs, so its gradient is 0.
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
