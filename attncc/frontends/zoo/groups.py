"""Group-wise attention masks: Group Pose's two self-attentions over groups of queries (Liu et
al. 2023, "Group Pose: A Simple Baseline for End-to-End Multi-person Pose Estimation").

Group Pose's decoder holds N instances of `parts` queries each (an instance query and K
keypoint queries, parts = K + 1), laid out instance-major: query x is part x % parts of
instance x // parts. Its self-attention is two group-wise attentions in turn:

- within-instance: the queries of one instance attend each other, m // parts == p // parts
  (a block diagonal, as `masks.block_diagonal`);
- same-type across-instance: queries of the same type (all instance queries, all left-elbow
  queries, ...) attend each other across instances, m % parts == p % parts (every parts-th key).

Both are affine predicates built with the mask combinators, so the tile classification is
exact and closed-form; in the instance-major layout the second is scattered over every tile,
which the `reorder` pass turns into a block diagonal (type-major order, tests/test_reorder.py).
`group="both"` is the union, one attention over both groups (`masks.mask_or`).
"""

from __future__ import annotations

from dataclasses import replace

from attncc.frontends import masks
from attncc.frontends.library import attention_3pass
from attncc.ir import Call, Cascade, Const, Expr

GROUPS = ("within", "across", "both")


def within_instance(parts: int) -> Expr:
    """Queries of the same instance: m // parts == p // parts."""
    return masks.block_diagonal(_parts(parts))


def same_type(parts: int) -> Expr:
    """Queries of the same type across instances: m % parts == p % parts."""
    k = Const(float(_parts(parts)))
    return Call("eq", (Call("mod", (masks.M, k)), Call("mod", (masks.P, k))))


def group_pose_mask(parts: int, group: str = "within") -> Expr:
    """The mask of Group Pose's `group` attention ("within", "across" or "both")."""
    if group not in GROUPS:
        raise ValueError(f"group_pose: group must be one of {', '.join(GROUPS)}, got {group!r}")
    if group == "within":
        return within_instance(parts)
    if group == "across":
        return same_type(parts)
    return masks.mask_or(within_instance(parts), same_type(parts))


def group_pose(
    *,
    parts: int = 18,
    group: str = "within",
    gqa_group: int | None = None,
    head_dim: int | None = None,
    value_dim: int | None = None,
) -> Cascade:
    """Group Pose's `group` self-attention over instances of `parts` queries (17 COCO keypoints
    and the instance query: 18), batched softmax attention with `gqa_group` as in the
    library."""
    cascade = attention_3pass(
        batched=True,
        gqa_group=gqa_group,
        head_dim=head_dim,
        value_dim=value_dim,
        mask=group_pose_mask(parts, group),
    )
    return replace(cascade, name="group_pose")


def _parts(parts: int) -> int:
    if isinstance(parts, bool) or not isinstance(parts, int) or parts < 1:
        raise ValueError(f"group_pose: parts must be a positive integer, got {parts!r}")
    return parts
