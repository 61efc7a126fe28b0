"""Tiny Hugging Face transformers models for tests/test_mlir_import.py: the attention of real
model code, which builds its causal masks from positions in its own way and keeps buffers
(rotary inv_freq) that torch.export does not put in the state dict. Each takes token ids."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from transformers import GPT2Config, GPT2Model, LlamaConfig, LlamaModel, PreTrainedConfig


class LastHidden(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=ids).last_hidden_state


def _tiny(model: Callable[[Any], nn.Module], config: PreTrainedConfig) -> nn.Module:
    """`model(config)` with seeded weights, in eval mode, giving its last hidden state."""
    torch.manual_seed(0)
    return LastHidden(model(config)).eval()


def llama() -> nn.Module:
    """One LLaMA layer through SDPA: 4 query heads, 2 key/value heads."""
    config = LlamaConfig(
        vocab_size=100,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=1,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
    )
    return _tiny(LlamaModel, config)


def gpt2_eager() -> nn.Module:
    """One GPT-2 layer with the softmax written out (attn_implementation="eager")."""
    config = GPT2Config(
        vocab_size=100,
        n_embd=64,
        n_layer=1,
        n_head=4,
        n_positions=64,
        bos_token_id=0,
        eos_token_id=0,
        attn_implementation="eager",
    )
    return _tiny(GPT2Model, config)
