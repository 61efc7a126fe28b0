"""Head declarations of the library and the zoo: a GQA group of one query head per key/value
head is multi-head attention, not a second rank that verification cannot equate with H."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from attncc.frontends.library import attention_1pass, attention_3pass, attention_sigmoid
from attncc.frontends.zoo import moh, routing
from attncc.ir import Cascade, verify


@pytest.mark.parametrize("build", [attention_3pass, attention_1pass, attention_sigmoid])
def test_a_group_of_one_is_multi_head_attention(build: Callable[..., Cascade]) -> None:
    assert build(gqa_group=1) == build(batched=True)


@pytest.mark.parametrize("build", [moh.moh, routing.routing])
def test_zoo_variants_take_a_group_of_one(build: Callable[..., Cascade]) -> None:
    cascade = build(gqa_group=1)
    verify(cascade)
    assert all(r.name != "G" for r in cascade.ranks)


def test_a_group_below_one_is_refused() -> None:
    with pytest.raises(ValueError, match="gqa_group must be a positive integer, got 0"):
        attention_3pass(gqa_group=0)
