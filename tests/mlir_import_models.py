"""Attention written the other ways models write it, for tests/test_mlir_import.py: each module
takes q, k, v in PyTorch's layout [batch, heads, sequence, head_dim] unless its forward says
otherwise. Some are not attention as attncc compiles it and must be reported with a reason.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


class Bmm(nn.Module):
    """bmm over [batch * heads, sequence, head_dim], scaled by head_dim ** -0.5."""

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        scores = torch.bmm(q, k.transpose(1, 2)) * q.shape[-1] ** -0.5
        return torch.bmm(torch.softmax(scores, dim=-1), v)


class ScaledOperands(nn.Module):
    """The scale split over queries and keys before the product: 0.3 * 2.0 = 0.6."""

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return torch.softmax((q * 0.3) @ (k * 2.0).transpose(-1, -2), dim=-1) @ v


@dataclass(frozen=True)
class Window:
    """A dataclass in a model file (with postponed annotations): the importer must register
    the file as a module for it to be defined."""

    size: int = 3


class SlidingWindow(nn.Module):
    """A causal window of 3 keys from arange, filled with -1e9 (not -inf)."""

    def __init__(self, window: Window = Window()) -> None:
        super().__init__()
        self.window = window

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        i = torch.arange(q.shape[-2])
        keep = (i[:, None] - i[None, :] < self.window.size) & (i[None, :] <= i[:, None])
        scores = (q @ k.transpose(-1, -2)) / math.sqrt(q.shape[-1])
        return F.softmax(scores.masked_fill(~keep, -1e9), dim=-1) @ v


class TriuAdditiveMask(nn.Module):
    """LLaMA's additive causal mask, full(-inf).triu(1), and a softmax in float32."""

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        n = q.shape[-2]
        mask = torch.full((n, n), float("-inf")).triu(1)
        scores = q @ k.transpose(2, 3) / math.sqrt(q.shape[-1]) + mask
        return F.softmax(scores.float(), dim=-1).type_as(q) @ v


class ScalarAlpha(nn.Module):
    """Positions through aten's scalar forms with alpha: sub.Scalar (self - alpha * other),
    add.Scalar (self + alpha * other), rsub.Scalar (other - alpha * self)."""

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        i = torch.arange(q.shape[-2])
        key, query = i[None, :], i[:, None]
        keep = torch.sub(key, 1, alpha=2) <= query  # m - 2 <= p
        keep = keep & (torch.add(query, 1, alpha=3) >= key)  # p + 3 >= m
        keep = keep & (torch.rsub(query, 30, alpha=2) >= key)  # 30 - 2p >= m
        scores = (q @ k.transpose(-1, -2)).masked_fill(~keep, float("-inf"))
        return scores.softmax(-1) @ v


class PositionBias(nn.Module):
    """A bias computed from positions that is not a mask (ALiBi-like): it stays a tensor."""

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        i = torch.arange(q.shape[-2])
        scores = q @ k.transpose(-1, -2) + (i[None, :] - i[:, None]) * 0.5
        return scores.softmax(-1) @ v


class SdpaLiteralScale(nn.Module):
    """SDPA given 1/sqrt(E) as a number: the spec keeps the number, as the FX frontend does."""

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return F.scaled_dot_product_attention(q, k, v, scale=q.shape[-1] ** -0.5)


class BooleanMask(nn.Module):
    """SDPA with a boolean mask computed from data."""

    def forward(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, m: torch.Tensor
    ) -> torch.Tensor:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=m > 0)


class RepeatInterleave(nn.Module):
    """Grouped-query attention by repeat_interleave over the head dimension."""

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        k, v = k.repeat_interleave(2, dim=1), torch.repeat_interleave(v, 2, dim=1)
        return torch.softmax(q @ k.transpose(-1, -2) * 0.25, -1) @ v


class Einsum(nn.Module):
    """Both products as einsum, with `...` for the batch dims."""

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        scores = torch.einsum("...id,...jd->...ij", q, k) * 0.25
        return torch.einsum("...ij,...jd->...id", scores.softmax(-1), v)


class MultiheadAttention(nn.Module):
    """torch.nn.MultiheadAttention, returning the weights too (its bmm/softmax path)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.mha = nn.MultiheadAttention(32, 4, batch_first=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mha(x, x, x)[0]


class SoftmaxOverQueries(nn.Module):
    """Not attention: the softmax normalizes over queries."""

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return torch.softmax(q @ k.transpose(-1, -2), dim=-2) @ v


class WeightsOnly(nn.Module):
    """Not attention: the weights are returned, never applied to values."""

    def forward(self, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        return torch.softmax(q @ k.transpose(-1, -2), dim=-1)


class SdpaWithDropout(nn.Module):
    """SDPA with dropout_p > 0: attncc compiles attention without dropout."""

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return F.scaled_dot_product_attention(q, k, v, dropout_p=0.5)


class WrittenOutDropout(nn.Module):
    """Not compiled: F.dropout with training=True stays on in eval mode (native_dropout)."""

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        weights = torch.softmax(q @ k.transpose(-1, -2), dim=-1)
        return F.dropout(weights, 0.1, training=True) @ v


def _positions(q: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Key positions [1, M] and query positions [P, 1]."""
    i = torch.arange(q.shape[-2])
    return i[None, :], i[:, None]


class MaskedScores(nn.Module):
    """scores.masked_fill(hide, fill) * after, then the softmax: `hide` is computed from
    positions by `hidden`; the factories below pick the mask, the fill and the scale."""

    def __init__(self, hidden: str, fill: float, after: float = 1.0, sdpa: bool = False) -> None:
        super().__init__()
        self.hidden, self.fill, self.after, self.sdpa = hidden, fill, after, sdpa

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        key, query = _positions(q)
        hide = {
            "future": key > query,
            "not_before": key >= query,  # row 0 sees no key
            "everything": key >= 0,
            "by_batch": key > query + torch.arange(q.shape[0])[:, None, None, None],
            "five_ways": (key > query)
            & (key != query + 2)
            & (key != query + 4)
            & (key != query + 6)
            & (key != query + 8),
        }[self.hidden]
        if self.sdpa:
            return F.scaled_dot_product_attention(q, k, v, attn_mask=~hide)
        scores = (q @ k.transpose(-1, -2)).masked_fill(hide, self.fill) * self.after
        return scores.softmax(-1) @ v


def finite_causal() -> nn.Module:
    return MaskedScores("future", -1e9)


def finite_rows_hidden() -> nn.Module:
    return MaskedScores("not_before", -1e9)


def inf_rows_hidden() -> nn.Module:
    return MaskedScores("not_before", float("-inf"))


def sdpa_rows_hidden() -> nn.Module:
    return MaskedScores("not_before", float("-inf"), sdpa=True)


def hides_every_key() -> nn.Module:
    return MaskedScores("everything", float("-inf"))


def mask_by_batch() -> nn.Module:
    return MaskedScores("by_batch", float("-inf"))


def five_comparisons() -> nn.Module:
    return MaskedScores("five_ways", float("-inf"))


def fill_then_scale() -> nn.Module:
    """-1e9, then scaled by 0.25: still hides (-2.5e8)."""
    return MaskedScores("future", -1e9, after=0.25)


def fill_scaled_away() -> nn.Module:
    """-1e4, then scaled by 1e-4: a fill of -1 at the softmax, which hides nothing."""
    return MaskedScores("future", -1e4, after=1e-4)


def fill_before_negative_scale() -> nn.Module:
    return MaskedScores("future", float("-inf"), after=-1.0)


def fill_with_zero() -> nn.Module:
    return MaskedScores("future", 0.0)


class WhereZero(nn.Module):
    """Not a mask: where() puts 0, not -inf, in place of future scores."""

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        key, query = _positions(q)
        scores = torch.where(key <= query, q @ k.transpose(-1, -2), 0.0)
        return scores.softmax(-1) @ v


class NoAttention(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(x)


def raises() -> nn.Module:
    raise ValueError("no weights for this size")


def not_a_module() -> int:
    return 3
