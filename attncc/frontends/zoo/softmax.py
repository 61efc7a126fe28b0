"""Softmax attention as the zoo's variants embed it: one attention's Q, K and V declared in a
builder that already holds the variant's other stages (a router, a scoring stage, pooling), on
the library's frame (attncc.frontends.library: `declare_heads`, `AttentionFrame`), for the
library's `softmax_3pass` (FuseMax Cascade 4) to write into.

The library's cascades are whole cascades with masks over ids at the key or the query position;
the zoo's variants mask with tensors their own stages compute (a block table from a scoring
stage, passed as `also`) and hold more than one attention (HiLo's two branches), so they
declare each attention's operands here, under names with a suffix per group of heads.
"""

from __future__ import annotations

from attncc.frontends.builder import CascadeBuilder, Index
from attncc.frontends.library import AttentionFrame, Heads


def declare_operands(
    b: CascadeBuilder, heads: Heads, *, e: Index, f: Index, m: Index, p: Index, group: str = ""
) -> AttentionFrame:
    """The inputs Q`group`[*query heads, e, p], K`group`[*kv heads, e, m] and
    V`group`[*kv heads, f, m] of `b`, as the frame of one attention over them."""
    q = b.input(f"Q{group}", [*heads.query, e, p])
    k = b.input(f"K{group}", [*heads.kv, e, m])
    v = b.input(f"V{group}", [*heads.kv, f, m])
    return AttentionFrame(b, heads, q, k, v, e, f, m, p)
