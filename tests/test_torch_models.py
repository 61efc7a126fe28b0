"""torch.compile(backend="attncc") on real models from `transformers`, built from small
configs with random weights (nothing is downloaded): GPT-2, LLaMA (GQA, rotary), BERT (padding
mask) and ViT, each with its SDPA and its eager attention code. Every attention site must be
compiled (checked with attncc.explain), the outputs must match eager within 1e-4 and a training
step's gradients must match eager's."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
import transformers

import attncc

LAYERS, HEADS = 2, 4


def _gpt2(impl: str) -> tuple[torch.nn.Module, dict[str, Any]]:
    config = transformers.GPT2Config(
        n_layer=LAYERS, n_head=HEADS, n_embd=64, vocab_size=128, n_positions=64,
        attn_pdrop=0.0, resid_pdrop=0.0, embd_pdrop=0.0, attn_implementation=impl,
    )  # fmt: skip
    return transformers.GPT2LMHeadModel(config), {"input_ids": _ids()}


def _llama(impl: str) -> tuple[torch.nn.Module, dict[str, Any]]:
    config = transformers.LlamaConfig(
        num_hidden_layers=LAYERS, num_attention_heads=HEADS, num_key_value_heads=2,
        hidden_size=64, intermediate_size=128, vocab_size=128, max_position_embeddings=64,
        attn_implementation=impl,
    )  # fmt: skip
    return transformers.LlamaForCausalLM(config), {"input_ids": _ids()}


def _bert(impl: str) -> tuple[torch.nn.Module, dict[str, Any]]:
    config = transformers.BertConfig(
        num_hidden_layers=LAYERS, num_attention_heads=HEADS, hidden_size=64,
        intermediate_size=128, vocab_size=128, max_position_embeddings=64,
        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, attn_implementation=impl,
    )  # fmt: skip
    padding = torch.ones(2, 16, dtype=torch.long)
    padding[1, 11:] = 0
    return transformers.BertModel(config), {"input_ids": _ids(), "attention_mask": padding}


def _vit(impl: str) -> tuple[torch.nn.Module, dict[str, Any]]:
    config = transformers.ViTConfig(
        num_hidden_layers=LAYERS, num_attention_heads=HEADS, hidden_size=64,
        intermediate_size=128, image_size=32, patch_size=8, attn_implementation=impl,
    )  # fmt: skip
    pixels = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    return transformers.ViTModel(config), {"pixel_values": pixels}


def _ids() -> torch.Tensor:
    return torch.randint(0, 128, (2, 16), generator=torch.Generator().manual_seed(0))


MODELS: dict[str, Callable[[str], tuple[torch.nn.Module, dict[str, Any]]]] = {
    "gpt2": _gpt2,
    "llama": _llama,
    "bert": _bert,
    "vit": _vit,
}


def _output(result: Any) -> torch.Tensor:
    return result.logits if hasattr(result, "logits") else result.last_hidden_state


@pytest.fixture(params=[(m, i) for m in MODELS for i in ("sdpa", "eager")], ids="-".join)
def model(request: pytest.FixtureRequest) -> tuple[torch.nn.Module, dict[str, Any]]:
    name, impl = request.param
    torch.manual_seed(0)
    module, inputs = MODELS[name](impl)
    return module.eval(), inputs


def test_every_attention_site_is_compiled_and_matches_eager(
    model: tuple[torch.nn.Module, dict[str, Any]],
) -> None:
    module, inputs = model
    explanation = attncc.explain(module, **inputs)
    assert len(explanation.compiled) == LAYERS, str(explanation)
    assert not explanation.fallbacks, str(explanation)
    assert all(site.passes == (3, 1) for site in explanation.sites)
    with torch.no_grad():
        expected = _output(module(**inputs))
        torch._dynamo.reset()
        got = _output(torch.compile(module, backend="attncc")(**inputs))
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)


def test_a_training_step_has_eager_gradients(
    model: tuple[torch.nn.Module, dict[str, Any]],
) -> None:
    module, inputs = model
    module.train()

    def gradients(run: Callable[..., Any]) -> dict[str, torch.Tensor]:
        module.zero_grad()
        _output(run(**inputs)).square().mean().backward()
        return {n: p.grad.clone() for n, p in module.named_parameters() if p.grad is not None}

    expected = gradients(module)
    torch._dynamo.reset()
    backend = attncc.backend()
    got = gradients(torch.compile(module, backend=backend))
    assert [r.compiled for r in backend.reports] == [True] * LAYERS, backend.reports
    assert got.keys() == expected.keys()
    for name, grad in expected.items():
        torch.testing.assert_close(got[name], grad, atol=1e-4, rtol=1e-3, msg=name)
