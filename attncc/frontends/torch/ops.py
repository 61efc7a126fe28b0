"""The custom op `attncc::attention` that compiled attention sites call, and its registry.

`torch.ops.attncc.attention(q, k, v, mask, site)` runs the cascade compiled for `site`: on
CPU tensors the tiled NumPy kernels, on CUDA tensors the Triton kernels (either can be forced).
It is a `torch.library` custom op with a fake implementation, so graphs that hold it can still
go through AOTAutograd and Inductor, and an autograd formula (reference.attention_backward).

`site` is a key into this process's registry of compiled sites, written by the backend when
it rewrites a graph; it reads like the spec it stands for, so graph printouts stay legible.
If a kernel fails at run time, the op logs why and computes the attention with PyTorch: a
model never crashes because attncc could not run one of its attentions.
"""

from __future__ import annotations

import enum
import hashlib
import logging
from dataclasses import dataclass

import numpy as np
import torch

from attncc.backends.execute import Backend, execute, lower_for_tiles
from attncc.errors import AttnccError
from attncc.frontends.torch.reference import (
    additive_mask,
    attention_backward,
    attention_reference,
    with_empty_rows,
)
from attncc.frontends.torch.spec import AttentionSpec
from attncc.ir import Cascade, print_cascade

log = logging.getLogger("attncc")


class Target(enum.Enum):
    """Where a compiled site runs: by the tensors' device (AUTO), or always one backend."""

    AUTO = "auto"
    NUMPY = "numpy"
    TRITON = "triton"
    REFERENCE = "reference"


@dataclass(frozen=True)
class CompiledSite:
    """An attention the backend compiled: what it computes and the cascade that runs it."""

    key: str
    spec: AttentionSpec
    cascade: Cascade
    target: Target


_SITES: dict[str, CompiledSite] = {}


def register_site(spec: AttentionSpec, cascade: Cascade, target: Target) -> str:
    """The key under which the custom op finds `cascade` (one per distinct compiled site)."""
    key = f"{spec.describe()}; {cascade.name}; target={target.value}; #{_digest(cascade)}"
    _SITES.setdefault(key, CompiledSite(key, spec, cascade, target))
    return key


def _digest(cascade: Cascade) -> str:
    return hashlib.sha256(print_cascade(cascade).encode()).hexdigest()[:12]


def compiled_site(key: str) -> CompiledSite:
    site = _SITES.get(key)
    if site is None:
        raise AttnccError(
            f"no compiled attention site {key!r} in this process: graphs holding "
            "torch.ops.attncc.attention come from torch.compile(backend='attncc') in the same "
            "process"
        )
    return site


@torch.library.custom_op("attncc::attention", mutates_args=())
def attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    mask: torch.Tensor | None,
    site: str,
) -> torch.Tensor:
    """Softmax attention of q [B, H, P, E], k [B, G, M, E], v [B, G, M, F] and an optional
    mask broadcastable to [B, H, P, M] (boolean, or additive); the result is [B, H, P, F]."""
    compiled = compiled_site(site)
    try:
        out = _run(compiled, query, key, value, mask)
    except Exception as error:
        # An attncc refusal (AttnccError) is expected and logged plainly; anything else is a
        # bug in attncc, logged with its traceback. The model goes on either way.
        log.warning(
            "attncc: %s fell back to PyTorch at run time: %s",
            compiled.key,
            error,
            exc_info=not isinstance(error, AttnccError),
        )
        return attention_reference(compiled.spec, query, key, value, mask)
    return with_empty_rows(compiled.spec, out, mask, key.shape[-2])


@attention.register_fake
def _attention_fake(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    mask: torch.Tensor | None,
    site: str,
) -> torch.Tensor:
    return query.new_empty((*query.shape[:-1], value.shape[-1]))


def _setup_context(ctx: object, inputs: tuple[object, ...], output: torch.Tensor) -> None:
    query, key, value, mask, site = inputs
    ctx.save_for_backward(query, key, value, mask)  # type: ignore[attr-defined]
    ctx.site = site  # type: ignore[attr-defined]


def _backward(
    ctx: object, grad: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None, None]:
    query, key, value, mask = ctx.saved_tensors  # type: ignore[attr-defined]
    spec = compiled_site(ctx.site).spec  # type: ignore[attr-defined]
    dq, dk, dv, dmask = attention_backward(spec, query, key, value, mask, grad)
    return dq, dk, dv, dmask, None


attention.register_autograd(_backward, setup_context=_setup_context)


def _run(
    site: CompiledSite,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    mask: torch.Tensor | None,
) -> torch.Tensor:
    target = site.target
    if target is Target.AUTO:
        target = Target.TRITON if query.is_cuda else Target.NUMPY
    inputs = _cascade_inputs(query, key, value, mask)
    if target is Target.TRITON:
        # Triton loads lazily: importing it fixes its mode (interpreted or compiled) for good.
        from attncc.backends.triton.launch import run_triton

        out = run_triton(lower_for_tiles(site.cascade), inputs)["AV"]
    else:
        backend = Backend.NUMPY if target is Target.NUMPY else Backend.REFERENCE
        arrays = {name: _array(t) for name, t in inputs.items()}
        out = torch.from_numpy(execute(site.cascade, arrays, backend=backend)["AV"])
    # AV[b, h, f, p] back to PyTorch's [b, h, p, f].
    return out.transpose(-1, -2).to(device=query.device, dtype=query.dtype).contiguous()


def _cascade_inputs(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    mask: torch.Tensor | None,
) -> dict[str, torch.Tensor]:
    """The cascade's inputs in FuseMax layout: Q[b,h,e,p], K[b,g,e,m], V[b,g,f,m] and the
    additive BIAS[b,h,p,m]."""
    inputs = {
        "Q": query.transpose(-1, -2),
        "K": key.transpose(-1, -2),
        "V": value.transpose(-1, -2),
    }
    if mask is not None:
        batch, heads, queries = query.shape[0], query.shape[1], query.shape[2]
        bias = additive_mask(mask, torch.promote_types(query.dtype, torch.float32))
        inputs["BIAS"] = bias.expand(batch, heads, queries, key.shape[-2])
    return inputs


def _array(tensor: torch.Tensor) -> np.ndarray:
    """A NumPy view of `tensor` (float32 for the half types NumPy lacks)."""
    if tensor.dtype in (torch.float16, torch.bfloat16):
        tensor = tensor.float()
    return tensor.detach().cpu().numpy()
