"""Small PyTorch modules with attention in them, for `attncc import` and the PyTorch frontends.

Each factory returns a module in eval mode; `attncc import` exports it with torch-mlir, finds
its attention and prints the cascades attncc would compile. The shapes to give on the command
line name forward's parameters (x[batch, sequence, model dimension]):

    attncc import examples/torch_models.py:sdpa_attention --shapes x=2x16x64
    attncc import examples/torch_models.py:padded_attention --shapes x=2x16x64,bias=2x1x1x16
    attncc import examples/torch_models.py:two_layer_transformer --shapes x=2x16x64 --check

The modules spell attention in the ways models in the wild do: one call to
scaled_dot_product_attention, or the softmax written out (matmul, scale, mask, softmax,
matmul), with causal masks built from arange or tril, and grouped-query attention that
repeats the key/value heads (LLaMA's repeat_kv).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def split_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """[batch, sequence, heads * head_dim] -> [batch, heads, sequence, head_dim]."""
    batch, length, width = x.shape
    return x.view(batch, length, heads, width // heads).transpose(1, 2)


def merge_heads(x: torch.Tensor) -> torch.Tensor:
    """[batch, heads, sequence, head_dim] -> [batch, sequence, heads * head_dim]."""
    batch, heads, length, head_dim = x.shape
    return x.transpose(1, 2).reshape(batch, length, heads * head_dim)


def repeat_kv(x: torch.Tensor, repeats: int) -> torch.Tensor:
    """LLaMA's repeat_kv: [batch, kv_heads, sequence, head_dim] -> [batch, kv_heads * repeats,
    sequence, head_dim], each key/value head shared by `repeats` consecutive query heads."""
    batch, kv_heads, length, head_dim = x.shape
    x = x[:, :, None, :, :].expand(batch, kv_heads, repeats, length, head_dim)
    return x.reshape(batch, kv_heads * repeats, length, head_dim)


class SdpaAttention(nn.Module):
    """Multi-head self-attention through one call to scaled_dot_product_attention."""

    def __init__(self, dim: int = 64, heads: int = 4, *, causal: bool = False) -> None:
        super().__init__()
        self.heads, self.causal = heads, causal
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = (split_heads(t, self.heads) for t in self.qkv(x).chunk(3, dim=-1))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=self.causal)
        return self.out(merge_heads(y))


class DecomposedCausalAttention(nn.Module):
    """Causal self-attention with the softmax written out, as in minGPT: scores scaled by
    1/sqrt(head_dim), future keys hidden by a mask built from arange, softmax, dropout (a
    no-op in eval mode), then the weighted sum of the values."""

    def __init__(self, dim: int = 64, heads: int = 4) -> None:
        super().__init__()
        self.heads = heads
        self.q, self.k, self.v = nn.Linear(dim, dim), nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.dropout = nn.Dropout(0.1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = (split_heads(proj(x), self.heads) for proj in (self.q, self.k, self.v))
        length = x.shape[1]
        scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
        position = torch.arange(length, device=x.device)
        future = position[None, :] > position[:, None]
        scores = scores.masked_fill(future, float("-inf"))
        weights = self.dropout(torch.softmax(scores, dim=-1))
        return merge_heads(weights @ v)


class TrilCausalAttention(nn.Module):
    """Causal attention whose mask is the lower triangle of a matrix of ones (torch.tril)."""

    def __init__(self, dim: int = 64, heads: int = 4) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = (split_heads(t, self.heads) for t in self.qkv(x).chunk(3, dim=-1))
        length = x.shape[1]
        visible = torch.tril(torch.ones(length, length, device=x.device))
        scores = torch.matmul(q, k.transpose(2, 3)) * (q.shape[-1] ** -0.5)
        scores = scores.masked_fill(visible == 0, float("-inf"))
        return merge_heads(torch.matmul(F.softmax(scores, dim=-1), v))


class GroupedQueryAttention(nn.Module):
    """Grouped-query attention in LLaMA's style: `kv_heads` key/value heads, each repeated for
    heads // kv_heads query heads (repeat_kv), then causal scaled_dot_product_attention."""

    def __init__(self, dim: int = 64, heads: int = 4, kv_heads: int = 2) -> None:
        super().__init__()
        self.heads, self.kv_heads = heads, kv_heads
        head_dim = dim // heads
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * kv_heads * head_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q = split_heads(self.q(x), self.heads)
        k, v = (split_heads(t, self.kv_heads) for t in self.kv(x).chunk(2, dim=-1))
        repeats = self.heads // self.kv_heads
        k, v = repeat_kv(k, repeats), repeat_kv(v, repeats)
        return merge_heads(F.scaled_dot_product_attention(q, k, v, is_causal=True))


class PaddedAttention(nn.Module):
    """Attention over padded sequences: `bias[batch, 1, 1, key]` is added to every score (0 for
    a real key, a large negative number for padding), as BERT-style models do."""

    def __init__(self, dim: int = 64, heads: int = 4) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        q, k, v = (split_heads(t, self.heads) for t in self.qkv(x).chunk(3, dim=-1))
        scores = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(q.shape[-1])
        weights = torch.softmax(scores + bias, dim=-1)
        return merge_heads(torch.matmul(weights, v))


class TransformerBlock(nn.Module):
    """A pre-norm transformer block: causal attention, then an MLP, each with a residual."""

    def __init__(self, dim: int = 64, heads: int = 4) -> None:
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attention = SdpaAttention(dim, heads, causal=True)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attention(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class TwoLayerTransformer(nn.Module):
    """Two transformer blocks: two attention sites, found separately."""

    def __init__(self, dim: int = 64, heads: int = 4) -> None:
        super().__init__()
        self.blocks = nn.Sequential(TransformerBlock(dim, heads), TransformerBlock(dim, heads))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(x)


def _built(module: type[nn.Module], **options: bool) -> nn.Module:
    """`module` with seeded weights, in eval mode (dropout off)."""
    torch.manual_seed(0)
    return module(**options).eval()


def sdpa_attention() -> nn.Module:
    """Self-attention through scaled_dot_product_attention; x: [batch, sequence, 64]."""
    return _built(SdpaAttention)


def sdpa_causal_attention() -> nn.Module:
    """The same, with is_causal=True."""
    return _built(SdpaAttention, causal=True)


def decomposed_causal_attention() -> nn.Module:
    """Causal attention written out, its mask built from arange; x: [batch, sequence, 64]."""
    return _built(DecomposedCausalAttention)


def tril_causal_attention() -> nn.Module:
    """Causal attention written out, its mask the lower triangle of ones."""
    return _built(TrilCausalAttention)


def gqa_attention() -> nn.Module:
    """Grouped-query attention: 4 query heads, 2 key/value heads, repeat_kv."""
    return _built(GroupedQueryAttention)


def padded_attention() -> nn.Module:
    """Attention with an additive padding mask; x: [batch, sequence, 64], bias: [batch, 1, 1,
    sequence]."""
    return _built(PaddedAttention)


def two_layer_transformer() -> nn.Module:
    """Two pre-norm transformer blocks (causal attention and an MLP each)."""
    return _built(TwoLayerTransformer)
