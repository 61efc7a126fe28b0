"""Score modifications (soft-capping, ALiBi, an additive bias, a relative-position table), the
log-sum-exp output and sigmoid attention: each library cascade in the reference interpreter
against a plain PyTorch float64 computation written from the definitions, then the flash
pipelines on the 3-pass cascades, checked the same way."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pytest
import torch

from attncc.analysis import count_passes
from attncc.backends.numpy.reference import interpret
from attncc.differential import random_inputs
from attncc.frontends import masks
from attncc.frontends.library import (
    LIBRARY,
    ScoreMod,
    attention_1pass,
    attention_2pass,
    attention_3pass,
    attention_sigmoid,
)
from attncc.ir import Cascade, Expr, parse, print_cascade
from attncc.passes import run_pipeline

BUILDERS: dict[str, Callable[..., Cascade]] = {
    "3pass": attention_3pass,
    "2pass": attention_2pass,
    "1pass": lambda **options: attention_1pass(tile=16, **options),
}

# Free ranks of every cascade here; each cascade takes the ones it declares. M != P, and M is
# not a multiple of the 16-key tile.
SIZES = {"B": 2, "H": 3, "G": 2, "E": 6, "F": 4, "M": 37, "P": 29}

MODS = {
    "softcap": ScoreMod(softcap=2.0),
    "alibi": ScoreMod(alibi=True),
    "bias": ScoreMod(bias=True),
    "rel_bias": ScoreMod(rel_bias=True),
    "all": ScoreMod(softcap=1.5, alibi=True, bias=True, rel_bias=True),
}


@dataclass(frozen=True)
class Options:
    """A cascade's options, read by both the builder and the PyTorch reference."""

    causal: bool = False
    batched: bool = False
    gqa_group: int | None = None
    score: ScoreMod = field(default_factory=ScoreMod)
    scale: float | None = None
    value_dim: int | None = None
    mask: Expr | None = None

    def build(self, builder: Callable[..., Cascade], **extra: object) -> Cascade:
        return builder(
            causal=self.causal,
            batched=self.batched,
            gqa_group=self.gqa_group,
            score=self.score,
            scale=self.scale,
            value_dim=self.value_dim,
            mask=self.mask,
            **extra,
        )


def run(
    cascade: Cascade, seed: int = 0, **resized: int
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Random float64 inputs in the cascade's layouts, and the interpreter's outputs; sizes
    from SIZES, or `resized`."""
    free = [r.name for r in cascade.ranks if r.size.is_Symbol and r.size.name == r.name]
    sizes = {name: resized.get(name, SIZES[name]) for name in free}
    inputs = random_inputs(cascade, sizes, np.random.default_rng(seed))
    return inputs, interpret(cascade, inputs, sizes)


def as_heads(array: np.ndarray, ranks: int) -> torch.Tensor:
    """`array` with `ranks` leading axes, padded with batch and head axes to `ranks + 2`."""
    tensor = torch.from_numpy(array)
    while tensor.dim() < ranks + 2:
        tensor = tensor.unsqueeze(0)
    return tensor


def reference_scores(options: Options, inputs: dict[str, np.ndarray]) -> torch.Tensor:
    """s[b,h,p,m] from the definitions: Q·K scaled, + ALiBi + BIAS + REL, soft-capped,
    masked to -inf."""
    q = as_heads(inputs["Q"], 2).transpose(-1, -2)  # [B,H,P,E]
    k = as_heads(inputs["K"], 2).transpose(-1, -2)  # [B,G,M,E]
    k = k.repeat_interleave(options.gqa_group or 1, dim=1)
    heads, p_size, e_size = q.shape[1], q.shape[2], q.shape[3]
    m_size = k.shape[2]
    scale = options.scale if options.scale is not None else 1 / math.sqrt(e_size)
    s = q @ k.transpose(-1, -2) * scale
    offset = (torch.arange(m_size)[None, :] - torch.arange(p_size)[:, None]).double()
    mod = options.score
    if mod.alibi:
        slopes = torch.tensor(
            [2.0 ** (-8 * (h + 1) / heads) for h in range(heads)], dtype=torch.float64
        )
        s = s + slopes[:, None, None] * offset
    if mod.bias:
        s = s + as_heads(inputs["BIAS"], 2)
    if mod.rel_bias:
        table = as_heads(inputs["REL"], 1)[0]  # [H or 1, R]
        s = s + table[:, (offset + p_size - 1).long()]
    if mod.softcap is not None:
        s = mod.softcap * torch.tanh(s / mod.softcap)
    visible = torch.ones(p_size, m_size, dtype=torch.bool)
    if options.causal:
        visible &= offset <= 0
    if options.mask is not None:
        assert options.mask == masks.sliding_window(5), "the reference knows this mask only"
        visible &= (offset <= 0) & (-offset < 5)
    return s.masked_fill(~visible, -math.inf)


def in_layout(result: torch.Tensor, like: np.ndarray) -> np.ndarray:
    """[B,H,P,F] as AV[*heads, f, p] (or [B,H,P] as LSE[*heads, p]) of `like`'s rank count."""
    if result.dim() == 4:
        result = result.transpose(-1, -2)
    return result.reshape(like.shape).numpy()


def softmax_reference(options: Options, inputs: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    s = reference_scores(options, inputs)
    v = as_heads(inputs["V"], 2).transpose(-1, -2).repeat_interleave(options.gqa_group or 1, 1)
    return {"AV": torch.softmax(s, dim=-1) @ v, "LSE": torch.logsumexp(s, dim=-1)}


def sigmoid_reference(
    options: Options, inputs: dict[str, np.ndarray], bias: float | None
) -> torch.Tensor:
    s = reference_scores(options, inputs)
    v = as_heads(inputs["V"], 2).transpose(-1, -2).repeat_interleave(options.gqa_group or 1, 1)
    b = -math.log(s.shape[-1]) if bias is None else bias
    return torch.sigmoid(s + b) @ v


def assert_matches(got: dict[str, np.ndarray], want: dict[str, torch.Tensor]) -> None:
    for name, array in got.items():
        np.testing.assert_allclose(array, in_layout(want[name], array), rtol=1e-10, atol=1e-12)


CASES = {
    **{f"{name}": Options(score=mod) for name, mod in MODS.items() if not mod.alibi},
    **{
        f"{name}-causal-batched": Options(causal=True, batched=True, score=m)
        for name, m in MODS.items()
    },
    "all-gqa": Options(gqa_group=2, score=MODS["all"], value_dim=3, scale=0.3),
    "all-gqa-causal": Options(causal=True, gqa_group=2, score=MODS["all"], value_dim=5),
    "rel_bias-window": Options(score=MODS["rel_bias"], mask=masks.sliding_window(5)),
    "none-causal-gqa": Options(causal=True, gqa_group=2),
}


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("form", sorted(BUILDERS))
def test_modified_scores_match_pytorch(form: str, case: str) -> None:
    options = CASES[case]
    inputs, outputs = run(options.build(BUILDERS[form]))
    assert_matches(outputs, softmax_reference(options, inputs))


@pytest.mark.parametrize("form", ["3pass", "2pass"])
@pytest.mark.parametrize("case", ["none-causal-gqa", "all-gqa-causal", "bias-causal-batched"])
def test_lse_is_the_log_sum_exp_of_the_scores(form: str, case: str) -> None:
    options = CASES[case]
    cascade = options.build(BUILDERS[form], lse=True)
    assert cascade.output_names() == ("AV", "LSE")
    inputs, outputs = run(cascade, seed=1)
    assert_matches(outputs, softmax_reference(options, inputs))


SIGMOID_CASES = {
    "plain": (Options(), None),
    "causal-batched": (Options(causal=True, batched=True), None),
    "window-bias": (Options(mask=masks.sliding_window(5)), -1.0),
    "all-gqa-causal": (CASES["all-gqa-causal"], None),
    "all-batched": (Options(batched=True, score=MODS["all"], value_dim=3), 0.5),
}


@pytest.mark.parametrize("case", sorted(SIGMOID_CASES))
def test_sigmoid_attention_matches_pytorch(case: str) -> None:
    options, bias = SIGMOID_CASES[case]
    inputs, outputs = run(options.build(attention_sigmoid, bias_value=bias), seed=2)
    assert_matches(outputs, {"AV": sigmoid_reference(options, inputs, bias)})


def test_sigmoid_attention_is_in_the_library_and_takes_one_pass() -> None:
    cascade = LIBRARY["attention_sigmoid"](causal=True)
    assert count_passes(cascade, "M").passes == 1


def one_pass_over_key_tiles(cascade: Cascade) -> bool:
    return count_passes(cascade, "M1").passes == 1


@pytest.mark.parametrize("lse", [False, True], ids=["", "lse"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_flash_pipeline_keeps_the_modifications(case: str, lse: bool) -> None:
    """At M = P = 70 the pipelines' 64-key, 64-query tiles leave one EMPTY tile to skip."""
    options = CASES[case]
    dense = options.build(attention_3pass, lse=lse)
    assert count_passes(dense, "M").passes == 3
    masked = options.causal or options.mask is not None
    for pipeline in ["flash", "flash-sparse"] if masked else ["flash"]:
        flash, records = run_pipeline(dense, pipeline)
        assert one_pass_over_key_tiles(flash), pipeline
        if pipeline == "flash-sparse":
            scores = "S" if options.score.changes_scores else "QK"
            assert records[-1].remarks[0] == f"{scores} skips EMPTY tiles of M1 x 64"
        inputs, outputs = run(flash, seed=3, M=70, P=70)
        assert_matches(outputs, softmax_reference(options, inputs))


def test_small_tiles_skip_hidden_tiles_of_modified_scores() -> None:
    """16-key, 8-query tiles: several EMPTY tiles, and the skipped tiles change nothing."""
    options = CASES["all-gqa-causal"]
    dense = options.build(attention_3pass, lse=True)
    pipeline = "defer-div,partition(tile=16),running-reduce,dce,block-sparse(query_tile=8)"
    sparse, records = run_pipeline(dense, pipeline)
    assert records[-1].remarks[0] == "S skips EMPTY tiles of M1 x 8"
    inputs, outputs = run(sparse, seed=4)
    assert_matches(outputs, softmax_reference(options, inputs))


def test_sigmoid_attention_through_the_pipelines() -> None:
    """With no max to tile, `flash` tiles the key rank AV sums over; the masked scores are
    -inf and sigmoid(-inf) = 0, so block-sparse proves hidden tiles add nothing."""
    options = CASES["all-gqa-causal"]
    dense = options.build(attention_sigmoid)
    flash, _ = run_pipeline(dense, "flash")
    assert [p.rank for p in flash.partitions] == ["M"]
    pipeline = "partition(rank=M,tile=16),block-sparse(query_tile=8)"
    sparse, records = run_pipeline(dense, pipeline)
    assert records[-1].remarks[0] == "S skips EMPTY tiles of M1 x 8"
    assert one_pass_over_key_tiles(sparse)
    inputs, outputs = run(sparse, seed=5)
    assert_matches(outputs, {"AV": sigmoid_reference(options, inputs, None)})


@pytest.mark.parametrize("form", sorted(BUILDERS))
def test_modified_cascades_round_trip(form: str) -> None:
    cascade = CASES["all-gqa-causal"].build(BUILDERS[form])
    assert parse(print_cascade(cascade)) == cascade


def test_without_modifications_the_scores_are_masked_in_place() -> None:
    """ScoreMod() changes nothing: the cascade is the one built without `score`."""
    assert attention_3pass(causal=True, score=ScoreMod()) == attention_3pass(causal=True)


def test_alibi_needs_head_ranks() -> None:
    with pytest.raises(ValueError, match="no head rank: pass batched=True or gqa_group"):
        attention_2pass(score=ScoreMod(alibi=True))


def test_softcap_must_be_positive() -> None:
    with pytest.raises(ValueError, match="softcap must be positive"):
        ScoreMod(softcap=0.0)
