"""What a recognized attention computes, whichever frontend found it (the FX backend or the
torch-mlir importer), and the cascade that states it.

A frontend fills an `AttentionSpec` from the graph it walks; `attention_cascade` turns it into
the library's softmax cascade with batch and head ranks, so both frontends build the same IR
for the same attention. Tensors follow PyTorch's layout (q[b, h, p, e]); the cascade reads them
in FuseMax layout (Q[b, h, e, p]) and `torch_layout` says which tensor dims that is.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from attncc.frontends.library import ScoreMod, attention_3pass
from attncc.ir import Cascade, Expr, format_expr


class MaskTensor(enum.Enum):
    """How a mask that is data, not a predicate the graph computes from positions, enters."""

    NONE = "none"
    BOOLEAN = "boolean"
    """True where the key is visible (SDPA's boolean attn_mask)."""
    ADDITIVE = "additive"
    """Added to the scores before the softmax (SDPA's float attn_mask; -inf hides a key)."""


class EmptyRow(enum.Enum):
    """What a query that sees no key at all gets: PyTorch's SDPA gives 0, a softmax written
    out gives NaN (0/0). Both frontends record which one the model asked for."""

    ZERO = "zero"
    NAN = "nan"


@dataclass(frozen=True)
class AttentionSpec:
    """One softmax attention softmax(q k^T * scale + mask) v, in PyTorch's terms.

    `scale` None means 1/sqrt(E). `causal` hides key m from query p unless m <= p (SDPA's
    is_causal, aligned top-left). `predicate` is a mask over key position m and query position
    p that the graph computed from positions (arange comparisons): it becomes an IR filter, so
    its empty tiles are skipped. `mask_tensor` says whether a mask tensor is also an input.
    `gqa_group` query heads share each key/value head (None: as many key/value heads as query
    heads). `empty_row` is what a query row that sees no key gets.
    """

    scale: float | None = None
    causal: bool = False
    predicate: Expr | None = None
    mask_tensor: MaskTensor = MaskTensor.NONE
    gqa_group: int | None = None
    empty_row: EmptyRow = EmptyRow.ZERO

    def describe(self) -> str:
        parts = [f"scale={'1/sqrt(E)' if self.scale is None else f'{self.scale:.6g}'}"]
        if self.causal:
            parts.append("causal")
        if self.predicate is not None:
            parts.append(f"mask where {format_expr(self.predicate)}")
        if self.mask_tensor is not MaskTensor.NONE:
            parts.append(f"{self.mask_tensor.value} mask tensor")
        if self.gqa_group is not None:
            parts.append(f"GQA group {self.gqa_group}")
        if self.empty_row is EmptyRow.NAN and self.masked:
            parts.append("empty rows NaN")
        return ", ".join(parts)

    @property
    def masked(self) -> bool:
        """Whether anything can hide a key (and so, perhaps, a whole row)."""
        return self.causal or self.predicate is not None or self.mask_tensor is not MaskTensor.NONE


def attention_cascade(
    spec: AttentionSpec, *, head_dim: int | None, value_dim: int | None
) -> Cascade:
    """The cascade computing `spec` on inputs Q[b,h,e,p], K[b,g,e,m], V[b,g,f,m] (g = h without
    GQA; head dims left None stay symbolic) and, with a mask tensor, BIAS[b,h,p,m] added to
    the scores: a boolean mask enters as its additive form (0 where visible, -inf where
    hidden), which is what SDPA does with it.

    Written as the 3-pass cascade, the form a reader recognizes; the backends' lowering
    pipeline derives the one-pass form from it."""
    return attention_3pass(
        head_dim=head_dim,
        value_dim=value_dim,
        scale=spec.scale,
        causal=spec.causal,
        mask=spec.predicate,
        batched=True,
        gqa_group=spec.gqa_group,
        score=ScoreMod(bias=spec.mask_tensor is not MaskTensor.NONE),
    )
