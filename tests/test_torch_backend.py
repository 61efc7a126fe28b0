"""The torch.compile backend on small hand-written attention modules: which sites it
recognizes and how (spec, predicate, tensor mask), results against eager PyTorch, gradients,
fallbacks with their logged reasons, and options."""

from __future__ import annotations

import importlib.metadata
import logging
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import attncc
from attncc.errors import AttnccError
from attncc.frontends.torch.spec import MaskTensor

B, H, L, E = 2, 4, 24, 16


class Sdpa(nn.Module):
    def __init__(self, **options: object) -> None:
        super().__init__()
        self.options = options

    def forward(self, q, k, v, mask=None):
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, **self.options)


class Decomposed(nn.Module):
    """Attention as models write it out; `mask` picks how the mask is built."""

    def __init__(self, mask: str = "none", window: int = 5, scale_queries: bool = False) -> None:
        super().__init__()
        self.mask, self.window, self.scale_queries = mask, window, scale_queries

    def forward(self, q, k, v):
        n = q.shape[-2]
        if self.scale_queries:
            scores = torch.matmul(q * q.shape[-1] ** -0.5, k.transpose(-2, -1))
        else:
            scores = torch.matmul(q, k.transpose(-2, -1)) / math.sqrt(q.shape[-1])
        if self.mask == "tril":
            causal = torch.tril(torch.ones(n, n, dtype=torch.bool))
            scores = scores.masked_fill(~causal, float("-inf"))
        elif self.mask == "window":
            rows = torch.arange(n)[:, None]
            cols = torch.arange(n)[None, :]
            visible = (cols <= rows) & (rows - cols < self.window)
            scores = scores + torch.where(visible, 0.0, torch.finfo(torch.float32).min)
        weights = F.dropout(torch.softmax(scores, dim=-1), p=0.1, training=False)
        return torch.matmul(weights, v)


class RepeatKv(nn.Module):
    """LLaMA's repeat_kv before the product: 4 query heads share 2 key/value heads."""

    def forward(self, q, k, v):
        b, g, m, d = k.shape
        k = k[:, :, None, :, :].expand(b, g, 2, m, d).reshape(b, g * 2, m, d)
        v = v[:, :, None, :, :].expand(b, g, 2, m, d).reshape(b, g * 2, m, d)
        scores = torch.matmul(q, k.transpose(2, 3)) * d**-0.5
        return torch.matmul(torch.softmax(scores, dim=-1), v)


def _qkv(kv_heads: int = H, seed: int = 0) -> tuple[torch.Tensor, ...]:
    generator = torch.Generator().manual_seed(seed)
    q = torch.randn(B, H, L, E, generator=generator)
    k = torch.randn(B, kv_heads, L, E, generator=generator)
    v = torch.randn(B, kv_heads, L, E, generator=generator)
    return q, k, v


def _compiled(module: nn.Module, *inputs: torch.Tensor, **options: object) -> torch.Tensor:
    """`module(*inputs)` compiled with attncc; every attention site must be compiled."""
    torch._dynamo.reset()
    backend = attncc.backend(**options)
    out = torch.compile(module, backend=backend)(*inputs)
    assert backend.reports, "no attention site found"
    assert all(r.compiled for r in backend.reports), backend.reports
    return out


def _eager_fallback(module: nn.Module, *inputs: torch.Tensor) -> torch.Tensor:
    """`module(*inputs)` compiled with attncc, which must leave every site to PyTorch."""
    torch._dynamo.reset()
    backend = attncc.backend()
    out = torch.compile(module, backend=backend)(*inputs)
    assert backend.reports and not any(r.compiled for r in backend.reports), backend.reports
    return out


def _only_site(module: nn.Module, *inputs: torch.Tensor):
    explanation = attncc.explain(module, *inputs)
    assert len(explanation.sites) == 1, str(explanation)
    return explanation.sites[0]


def test_the_entry_point_names_the_backend() -> None:
    names = {e.name for e in importlib.metadata.entry_points(group="torch_dynamo_backends")}
    assert "attncc" in names
    q, k, v = _qkv()
    torch._dynamo.reset()
    out = torch.compile(Sdpa(is_causal=True), backend="attncc")(q, k, v)
    torch.testing.assert_close(out, F.scaled_dot_product_attention(q, k, v, is_causal=True))


@pytest.mark.parametrize(
    ("module", "kv_heads", "spec"),
    [
        (Sdpa(), H, "scale=1/sqrt(E)"),
        (Sdpa(is_causal=True, scale=0.3), H, "scale=0.3, causal"),
        (Sdpa(enable_gqa=True), 2, "scale=1/sqrt(E), GQA group 2"),
        (Decomposed(), H, "scale=0.25"),
        (Decomposed(scale_queries=True), H, "scale=0.25"),
        (Decomposed("tril"), H, "scale=0.25, mask where m <= p, empty rows NaN"),
        (Decomposed("window"), H, "scale=0.25, mask where m <= p and m >= p - 4, empty rows NaN"),
        (RepeatKv(), 2, "scale=0.25, GQA group 2"),
    ],
    ids=["sdpa", "sdpa-causal", "sdpa-gqa", "plain", "q-scaled", "tril", "window", "repeat-kv"],
)
def test_recognized_sites_match_eager(module: nn.Module, kv_heads: int, spec: str) -> None:
    inputs = _qkv(kv_heads)
    site = _only_site(module, *inputs)
    assert site.compiled, site.reason
    assert site.spec == spec
    assert site.passes == (3, 1)
    torch.testing.assert_close(_compiled(module, *inputs), module(*inputs), atol=1e-5, rtol=1e-5)


def test_a_window_from_positions_becomes_a_block_sparse_predicate() -> None:
    """The arange mask is an IR filter, so the lowered cascade skips tiles."""
    site = _only_site(Decomposed("window"), *_qkv())
    assert "where m1 * M0 + m0 <= p and m1 * M0 + m0 >= p - 4 else -inf" in site.cascade
    assert "sparse QK[m1,p//64]" in site.cascade


@pytest.mark.parametrize("kind", ["boolean", "additive"])
def test_data_masks_are_tensor_inputs(kind: str) -> None:
    q, k, v = _qkv()
    generator = torch.Generator().manual_seed(1)
    keep = torch.rand(B, 1, L, L, generator=generator) > 0.3
    keep[..., 0] = True  # every query sees a key
    mask = keep if kind == "boolean" else torch.randn(B, 1, L, L, generator=generator)
    site = _only_site(Sdpa(), q, k, v, mask)
    assert site.compiled, site.reason
    assert site.spec == f"scale=1/sqrt(E), {MaskTensor(kind).value} mask tensor"
    expected = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    torch.testing.assert_close(_compiled(Sdpa(), q, k, v, mask), expected, atol=1e-5, rtol=1e-5)


def test_gradients_match_eager_with_gqa_and_a_learned_bias() -> None:
    q, k, v = (t.requires_grad_() for t in _qkv(kv_heads=2))
    bias = torch.randn(1, H, L, L, requires_grad=True)
    module = Sdpa(enable_gqa=True)
    out = _compiled(module, q, k, v, bias)
    grad = torch.randn_like(out)
    got = torch.autograd.grad(out, (q, k, v, bias), grad)
    expected = torch.autograd.grad(module(q, k, v, bias), (q, k, v, bias), grad)
    for a, b in zip(got, expected, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("inner", ["aot_eager", "inductor"])
def test_the_custom_op_goes_through_aot_autograd(inner: str) -> None:
    """The fake implementation lets AOTAutograd (and Inductor) trace around the op, and the
    backward formula traces into the backward graph."""
    q, k, v = (t.requires_grad_() for t in _qkv())
    module = Decomposed("window")
    out = _compiled(module, q, k, v, inner=inner)
    out.sum().backward()
    grads = [t.grad.clone() for t in (q, k, v)]
    for t in (q, k, v):
        t.grad = None
    module(q, k, v).sum().backward()
    torch.testing.assert_close(out, module(q, k, v), atol=1e-5, rtol=1e-5)
    for got, t in zip(grads, (q, k, v), strict=True):
        torch.testing.assert_close(got, t.grad, atol=1e-5, rtol=1e-4)


class NotAttention(nn.Module):
    def forward(self, q, k, v):
        weights = torch.softmax(torch.matmul(q, k.transpose(-2, -1)), dim=-2)
        return torch.matmul(weights, v)


class ReturnsWeights(nn.Module):
    def forward(self, q, k, v):
        weights = torch.softmax(torch.matmul(q, k.transpose(-2, -1)), dim=-1)
        return torch.matmul(weights, v), weights


class TrainingDropout(nn.Module):
    def forward(self, q, k, v):
        return F.scaled_dot_product_attention(q, k, v, dropout_p=0.5)


@pytest.mark.parametrize(
    ("module", "reason"),
    [
        (NotAttention(), "softmax over dim -2, not the last (key) dim"),
        (ReturnsWeights(), "used outside the attention (output_attentions?)"),
        (TrainingDropout(), "dropout_p=0.5: attncc has no attention dropout"),
    ],
    ids=["softmax-over-queries", "weights-returned", "dropout"],
)
def test_unsupported_attention_stays_pytorch_with_a_logged_reason(
    module: nn.Module, reason: str, caplog: pytest.LogCaptureFixture
) -> None:
    q, k, v = _qkv()
    with caplog.at_level(logging.WARNING, logger="attncc"):
        torch.manual_seed(0)
        out = _eager_fallback(module, q, k, v)
    assert any(reason in r.getMessage() for r in caplog.records), caplog.text
    if not isinstance(module, TrainingDropout):
        torch.testing.assert_close(out, module(q, k, v))
    site = _only_site(module, q, k, v)
    assert not site.compiled and reason in site.reason


def test_a_kernel_failing_at_run_time_falls_back_to_pytorch(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Triton refuses float64; the op says so and computes the attention with PyTorch."""
    q, k, v = (t.double() for t in _qkv())
    with caplog.at_level(logging.WARNING, logger="attncc"):
        out = _compiled(Sdpa(is_causal=True), q, k, v, target="triton")
    assert "fell back to PyTorch at run time" in caplog.text
    assert "float64" in caplog.text
    torch.testing.assert_close(out, F.scaled_dot_product_attention(q, k, v, is_causal=True))


def test_reference_and_pipeline_options() -> None:
    q, k, v = _qkv()
    expected = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    for options in ({"target": "reference"}, {"passes": "flash"}):
        out = _compiled(Sdpa(is_causal=True), q, k, v, **options)
        torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"targt": "numpy"}, "unknown attncc backend option(s) targt"),
        ({"target": "gpu"}, "attncc backend target 'gpu': choose auto, numpy, triton"),
        ({"inner": "xla"}, "attncc backend inner 'xla': choose eager, aot_eager, inductor"),
    ],
)
def test_bad_options_say_what_is_wrong(options: dict[str, object], message: str) -> None:
    with pytest.raises(AttnccError, match=message.replace("(", r"\(").replace(")", r"\)")):
        attncc.backend(**options)


def test_explain_reports_the_predicate_it_read() -> None:
    site = _only_site(Decomposed("window", window=3), *_qkv())
    assert site.compiled
    assert "mask where m <= p and m >= p - 2" in site.spec


@pytest.mark.triton_interpret
def test_the_triton_target_runs_masks_and_gqa_like_eager() -> None:
    """target='triton' is what CUDA tensors get; here its kernels run interpreted."""
    q, k, v = _qkv(kv_heads=2)
    bias = torch.randn(B, 1, L, L, generator=torch.Generator().manual_seed(2))
    module = Sdpa(enable_gqa=True)
    out = _compiled(module, q, k, v, bias, target="triton")
    torch.testing.assert_close(out, module(q, k, v, bias), atol=1e-5, rtol=1e-5)
    window = Decomposed("window")
    out = _compiled(window, *_qkv(), target="triton")
    torch.testing.assert_close(out, window(*_qkv()), atol=1e-5, rtol=1e-5)


def test_an_internal_error_leaves_the_site_to_pytorch(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from attncc.frontends.torch import backend

    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("simulated bug")

    monkeypatch.setattr(backend, "attention_cascade", broken)
    q, k, v = _qkv()
    with caplog.at_level(logging.WARNING, logger="attncc"):
        out = _eager_fallback(Sdpa(is_causal=True), q, k, v)
    assert "internal error compiling the attention" in caplog.text
    torch.testing.assert_close(out, F.scaled_dot_product_attention(q, k, v, is_causal=True))
    site = _only_site(Sdpa(is_causal=True), q, k, v)
    assert site.reason == "internal error in attncc: RuntimeError: simulated bug"


class KeywordSdpa(nn.Module):
    def forward(self, q, k, v):
        return F.scaled_dot_product_attention(query=q, key=k, value=v, is_causal=True)


class KeywordSoftmax(nn.Module):
    def forward(self, q, k, v):
        scores = torch.matmul(input=q, other=k.transpose(-2, -1))
        return torch.matmul(F.softmax(input=scores, dim=-1), v)


class PaddedTril(nn.Module):
    """tril of a [1, M] block of ones, broadcast over the queries: keys m <= 0 only."""

    def forward(self, q, k, v):
        keep = torch.tril(torch.ones(1, k.shape[-2], dtype=torch.bool))
        scores = torch.matmul(q, k.transpose(-2, -1)).masked_fill(~keep, float("-inf"))
        return torch.matmul(torch.softmax(scores, dim=-1), v)


class StrictlyCausal(nn.Module):
    """m < p: query 0 sees no key, so the softmax gives NaN there."""

    def forward(self, q, k, v):
        n = q.shape[-2]
        hide = torch.arange(n)[None, :] >= torch.arange(n)[:, None]
        scores = torch.matmul(q, k.transpose(-2, -1)).masked_fill(hide, float("-inf"))
        return torch.matmul(torch.softmax(scores, dim=-1), v)


class StrictlyCausalFinite(nn.Module):
    """m < p with finfo.min: query 0's softmax averages every key, unlike -inf."""

    def forward(self, q, k, v):
        n = q.shape[-2]
        hide = torch.arange(n)[None, :] >= torch.arange(n)[:, None]
        fill = torch.finfo(torch.float32).min
        scores = torch.matmul(q, k.transpose(-2, -1)).masked_fill(hide, fill)
        return torch.matmul(torch.softmax(scores, dim=-1), v)


def test_tensors_passed_by_keyword() -> None:
    q, k, v = _qkv()
    expected = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    torch.testing.assert_close(_compiled(KeywordSdpa(), q, k, v), expected, atol=1e-5, rtol=1e-5)
    written = KeywordSoftmax()(q, k, v)
    torch.testing.assert_close(_compiled(KeywordSoftmax(), q, k, v), written, atol=1e-5, rtol=1e-5)


def test_a_size_one_dim_of_a_triangle_is_not_a_position() -> None:
    q, k, v = _qkv()
    site = _only_site(PaddedTril(), q, k, v)
    assert site.spec == "scale=1, mask where m <= 0, empty rows NaN"
    torch.testing.assert_close(_compiled(PaddedTril(), q, k, v), PaddedTril()(q, k, v))


def test_rows_that_see_no_key_are_what_pytorch_gives() -> None:
    """SDPA gives 0 for a row that sees no key; a softmax written out gives NaN; a finite
    fill averages the row, so that mask stays a tensor rather than becoming a predicate."""
    q, k, v = _qkv()
    keep = torch.ones(B, 1, L, L, dtype=torch.bool)
    keep[:, :, 3] = False
    expected = F.scaled_dot_product_attention(q, k, v, attn_mask=keep)
    assert expected[:, :, 3].abs().max() == 0
    torch.testing.assert_close(_compiled(Sdpa(), q, k, v, keep), expected, atol=1e-5, rtol=1e-5)
    for target in ("numpy", "reference"):
        strict = _compiled(StrictlyCausal(), q, k, v, target=target)
        torch.testing.assert_close(strict, StrictlyCausal()(q, k, v), equal_nan=True)
    finite = StrictlyCausalFinite()
    site = _only_site(finite, q, k, v)
    assert not site.compiled and "finite fill averages over rows that see no key" in site.reason
    torch.testing.assert_close(_eager_fallback(finite, q, k, v), finite(q, k, v))


class AlphaAdd(nn.Module):
    def forward(self, q, k, v, bias):
        scores = torch.add(torch.matmul(q, k.transpose(-2, -1)), bias, alpha=3)
        return torch.matmul(torch.softmax(scores, dim=-1), v)


class BooleanAdded(nn.Module):
    def forward(self, q, k, v, bias):
        scores = torch.matmul(q, k.transpose(-2, -1)) + (bias > 0)
        return torch.matmul(torch.softmax(scores, dim=-1), v)


class MaskBeforeScale(nn.Module):
    def forward(self, q, k, v, bias):
        scores = (torch.matmul(q, k.transpose(-2, -1)) + bias) * 0.5
        return torch.matmul(torch.softmax(scores, dim=-1), v)


class DataMaskedFill(nn.Module):
    def forward(self, q, k, v, bias):
        scores = torch.matmul(q, k.transpose(-2, -1)).masked_fill(bias > 1.5, float("-inf"))
        return torch.matmul(torch.softmax(scores, dim=-1), v)


@pytest.mark.parametrize(
    ("module", "reason"),
    [
        (AlphaAdd(), "add with alpha or rounding_mode on the scores"),
        (BooleanAdded(), "a boolean or constant added to the scores (it adds 0 or 1)"),
        (MaskBeforeScale(), "the mask is added before the scale"),
        (DataMaskedFill(), "a masked_fill attncc cannot state as a predicate: the mask reads"),
    ],
    ids=["alpha", "boolean-added", "mask-before-scale", "data-masked-fill"],
)
def test_score_changes_attncc_does_not_state_stay_pytorch(module: nn.Module, reason: str) -> None:
    q, k, v = _qkv()
    bias = torch.randn(1, 1, L, L, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(_eager_fallback(module, q, k, v, bias), module(q, k, v, bias))
    site = _only_site(module, q, k, v, bias)
    assert not site.compiled and reason in site.reason, site.reason


def test_a_positional_mask_that_varies_over_the_batch_is_a_tensor() -> None:
    class PerBatch(nn.Module):
        def forward(self, q, k, v):
            n = q.shape[-2]
            shift = torch.arange(q.shape[0])[:, None, None, None]
            visible = torch.arange(n)[None, :] <= torch.arange(n)[:, None] + shift
            return F.scaled_dot_product_attention(q, k, v, attn_mask=visible)

    q, k, v = _qkv()
    site = _only_site(PerBatch(), q, k, v)
    assert site.compiled and site.spec == "scale=1/sqrt(E), boolean mask tensor"
    torch.testing.assert_close(
        _compiled(PerBatch(), q, k, v), PerBatch()(q, k, v), atol=1e-5, rtol=1e-5
    )


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_inputs(dtype: torch.dtype) -> None:
    q, k, v = (t.to(dtype) for t in _qkv())
    out = _compiled(Decomposed("tril"), q, k, v)
    assert out.dtype == dtype
    expected = Decomposed("tril")(*(t.double() for t in (q, k, v)))
    torch.testing.assert_close(out.double(), expected, atol=1e-2, rtol=1e-2)


def test_dynamic_shapes_compile_once_for_every_length() -> None:
    torch._dynamo.reset()
    backend = attncc.backend()
    compiled = torch.compile(Sdpa(is_causal=True), backend=backend, dynamic=True)
    # Lengths other than E = 16: Dynamo's duck sizing would tie a length equal to E to it.
    for length in (24, 40, 56):
        q, k, v = (torch.randn(B, H, length, E) for _ in range(3))
        expected = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        torch.testing.assert_close(compiled(q, k, v), expected, atol=1e-5, rtol=1e-5)
    assert len(backend.reports) == 1 and backend.reports[0].compiled, backend.reports
    assert "E = " not in backend.reports[0].cascade  # the head dim stayed symbolic


def test_torch_compile_options_overlay_the_configured_ones() -> None:
    backend = attncc.backend(target="reference")
    torch._dynamo.reset()
    q, k, v = _qkv()
    torch.compile(Sdpa(), backend=backend, options={"inner": "aot_eager"})(q, k, v)
    assert backend.options.target.value == "reference"
    assert backend.reports and backend.reports[0].compiled
