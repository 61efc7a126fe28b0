"""Linear attention in the zoo (attncc.frontends.zoo.linear) against plain PyTorch written from
the papers: Katharopoulos et al. 2020 (eq. 6 for the non-causal right product, the recurrence
of eqs. 18-20 for the causal form), Lightning Attention (no normalization), Hedgehog's feature
map [exp(W x), exp(-W x)]. Each variant runs as built (the quadratic form), reassociated, and
for causal ones chunked, on the reference interpreter, the tiled NumPy path and Triton kernels
in Triton's interpreter; fp32 within 1e-5 of the float64 PyTorch reference."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from zoo_kernels import EXAMPLES, check_load_and_example, check_refused, relative_error

from attncc.backends.execute import Backend, execute, lower_for_tiles
from attncc.backends.numpy.tiled import lower_tiled, numpy_source
from attncc.backends.schedule import schedule
from attncc.differential import random_inputs
from attncc.errors import LoweringError
from attncc.frontends.loader import load
from attncc.frontends.zoo import ZOO
from attncc.frontends.zoo.linear import lightning_attention, linear_attention
from attncc.ir import Cascade, DType, bind_sizes, print_cascade
from attncc.passes import run_pipeline


@dataclass(frozen=True)
class Variant:
    name: str
    build: Callable[[], Cascade]
    feature_map: str
    normalize: bool = True
    causal: bool = False


VARIANTS = (
    Variant("elu1", linear_attention, "elu1"),
    Variant("elu1_causal", lambda: linear_attention(causal=True), "elu1", causal=True),
    Variant("relu_batched", lambda: linear_attention(feature_map="relu", batched=True), "relu"),
    Variant(
        "relu_unnormalized_gqa",
        lambda: linear_attention(feature_map="relu", normalize=False, gqa_group=2),
        "relu",
        normalize=False,
    ),
    Variant(
        "hedgehog",
        lambda: linear_attention(feature_map="hedgehog", feature_dim=6, batched=True),
        "hedgehog",
    ),
    Variant(
        "hedgehog_bias",
        lambda: linear_attention(feature_map="hedgehog", feature_bias=True, batched=True),
        "hedgehog",
    ),
    Variant(
        "hedgehog_gqa_causal",
        lambda: linear_attention(feature_map="hedgehog", gqa_group=2, causal=True),
        "hedgehog",
        causal=True,
    ),
    Variant("lightning", lambda: lightning_attention(batched=True), "identity", False, causal=True),
    Variant(
        "lightning_mqa", lambda: lightning_attention(gqa_group=4), "identity", False, causal=True
    ),
    Variant(
        "lightning_noncausal",
        lambda: lightning_attention(causal=False, gqa_group=2),
        "identity",
        normalize=False,
    ),
)

PIPELINES = {
    "quadratic": "",
    "reassociated": "reassociate",
    "tiled_first": "partition,reassociate",
    "chunked": "chunk-causal(tile=16)",
}


def tiled_forms(variant: Variant) -> tuple[str, ...]:
    """The forms the tiled backends run: causal scores stay quadratic there (reassociate
    leaves them, and the chunked form is refused: test_chunked_form_is_refused_by_the_tiled_
    backends)."""
    return ("quadratic",) if variant.causal else ("quadratic", "reassociated", "tiled_first")


def all_forms(variant: Variant) -> tuple[str, ...]:
    return ("quadratic", "chunked") if variant.causal else tiled_forms(variant)


TILED = [pytest.param(v, f, id=f"{v.name}-{f}") for v in VARIANTS for f in tiled_forms(v)]


def _cascade(variant: Variant, form: str) -> Cascade:
    built = variant.build()
    return run_pipeline(built, PIPELINES[form])[0] if PIPELINES[form] else built


# ----------------------------------------------------------------------------- PyTorch


def feature_map(
    name: str, x: torch.Tensor, w: torch.Tensor | None, b: torch.Tensor | None = None
) -> torch.Tensor:
    """x [b, h, n, e] -> phi(x) [b, h, n, features]; Hedgehog's w [h, d, e], b [h, d]."""
    if name == "elu1":
        return F.elu(x) + 1  # Katharopoulos et al., eq. 7
    if name == "relu":
        return F.relu(x)
    if name == "identity":
        return x
    assert w is not None  # Hedgehog: W x + b and its negation, exponentiated, concatenated
    projected = torch.einsum("bhne,hde->bhnd", x, w)
    if b is not None:
        projected = projected + b[None, :, None, :]
    return torch.cat([torch.exp(projected), torch.exp(-projected)], dim=-1)


def torch_linear_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    phi: str,
    normalize: bool,
    causal: bool,
    wq: torch.Tensor | None = None,
    wk: torch.Tensor | None = None,
    biasq: torch.Tensor | None = None,
    biask: torch.Tensor | None = None,
) -> torch.Tensor:
    """q [b, h, p, e], k [b, g, m, e], v [b, g, m, f] (h a multiple of g) -> [b, h, p, f]."""
    group = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
    fq, fk = feature_map(phi, q, wq, biasq), feature_map(phi, k, wk, biask)
    if causal:
        # the recurrence: S_i = S_(i-1) + phi(k_i) v_i^T, z_i = z_(i-1) + phi(k_i)
        state = torch.cumsum(fk[..., :, None] * v[..., None, :], dim=2)
        numerator = torch.einsum("bhpd,bhpdf->bhpf", fq, state)
        denominator = torch.einsum("bhpd,bhpd->bhp", fq, torch.cumsum(fk, dim=2))
    else:
        # phi(Q) (phi(K)^T V) / phi(Q) sum_m phi(K)
        numerator = fq @ (fk.transpose(-1, -2) @ v)
        denominator = fq @ fk.sum(dim=2)[..., None]
        denominator = denominator[..., 0]
    return numerator / denominator[..., None] if normalize else numerator


def _heads(array: np.ndarray, batched: bool) -> torch.Tensor:
    """An attncc input [(b, h,) x, n] as PyTorch's [b, h, n, x]."""
    tensor = torch.from_numpy(array)
    tensor = tensor if batched else tensor[None, None]
    return tensor.transpose(-1, -2)


def torch_reference(
    variant: Variant, cascade: Cascade, inputs: Mapping[str, np.ndarray]
) -> np.ndarray:
    """AV of `variant` on attncc's `inputs`, by torch_linear_attention, in attncc's layout."""
    batched = cascade.rank("B") is not None
    q, k, v = (_heads(inputs[n], batched) for n in ("Q", "K", "V"))
    weights = {}
    for name in ("WQ", "WK", "BIASQ", "BIASK"):
        if name in inputs:
            w = torch.from_numpy(inputs[name])
            weights[name.lower()] = w if batched else w[None]
    out = torch_linear_attention(
        q,
        k,
        v,
        phi=variant.feature_map,
        normalize=variant.normalize,
        causal=variant.causal,
        **weights,
    ).transpose(-1, -2)
    return (out if batched else out[0, 0]).numpy()


def _inputs(cascade: Cascade, seed: int, dtype: Any = np.float64) -> dict[str, np.ndarray]:
    given = {"B": 2, "H": 4, "E": 24, "F": 16, "M": 150, "P": 130, "D": 6}
    known = {n: s for n, s in given.items() if _free(cascade, n)}
    if cascade.rank("G") is not None:
        known["G"] = 4 // cascade_group(cascade)
    bound = bind_sizes(cascade, known)
    inputs = random_inputs(cascade, bound, np.random.default_rng(seed), dtype)
    for name in ("WQ", "WK"):
        if name in inputs:  # a learned map, scaled as an initialization would be
            inputs[name] = (inputs[name] / np.sqrt(bound["E"])).astype(dtype)
    return inputs


def _free(cascade: Cascade, name: str) -> bool:
    rank = cascade.rank(name)
    return rank is not None and rank.size.is_Symbol and rank.size.name == name


def cascade_group(cascade: Cascade) -> int:
    rank = cascade.rank("H")
    assert rank is not None
    return int(rank.size.as_coeff_Mul()[0])


# ----------------------------------------------------------------------------- tests


def test_the_torch_references_agree_with_the_quadratic_definition() -> None:
    """The causal recurrence and the right product against (phi(Q) phi(K)^T, masked) V."""
    rng = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 2, 20, 8, generator=rng, dtype=torch.float64) for _ in range(3))
    weights = (F.elu(q) + 1) @ (F.elu(k) + 1).transpose(-1, -2)
    for causal in (False, True):
        masked = torch.tril(weights) if causal else weights
        expected = (masked @ v) / masked.sum(-1, keepdim=True)
        actual = torch_linear_attention(q, k, v, phi="elu1", normalize=True, causal=causal)
        assert torch.allclose(actual, expected, rtol=1e-12)


@pytest.mark.parametrize("variant", VARIANTS, ids=lambda v: v.name)
def test_reference_interpreter_matches_pytorch(variant: Variant) -> None:
    for form in all_forms(variant):
        cascade = _cascade(variant, form)
        inputs = _inputs(cascade, seed=1)
        expected = torch_reference(variant, cascade, inputs)
        actual = execute(cascade, inputs, backend=Backend.REFERENCE)["AV"]
        assert relative_error(actual, expected) < 1e-12, form


def _fp32_case(variant: Variant, form: str, seed: int) -> tuple[Cascade, dict, np.ndarray]:
    cascade = _cascade(variant, form)
    inputs = _inputs(cascade, seed=seed, dtype=np.float32)
    wide = {n: a.astype(np.float64) for n, a in inputs.items()}
    return cascade, inputs, torch_reference(variant, cascade, wide)


@pytest.mark.parametrize(
    ("backend", "seed"),
    [(Backend.NUMPY, 2), pytest.param(Backend.TRITON, 3, marks=pytest.mark.triton_interpret)],
    ids=["numpy", "triton"],
)
@pytest.mark.parametrize(("variant", "form"), TILED)
def test_tiled_backends_match_pytorch(
    variant: Variant, form: str, backend: Backend, seed: int
) -> None:
    cascade, inputs, expected = _fp32_case(variant, form, seed=seed)
    actual = execute(cascade, inputs, backend=backend)["AV"]
    assert actual.dtype == np.float32
    assert relative_error(actual, expected) < 1e-5


@pytest.mark.triton_interpret
@pytest.mark.parametrize("backend", [Backend.NUMPY, Backend.TRITON])
def test_chunked_form_is_refused_by_the_tiled_backends(backend: Backend) -> None:
    cascade, inputs, _ = _fp32_case(VARIANTS[1], "chunked", seed=4)
    with pytest.raises(LoweringError, match=r"reads the running value RFKV at key tile p//M0"):
        execute(cascade, inputs, backend=backend)


@pytest.mark.triton_interpret
def test_reassociated_form_runs_its_key_loop_once() -> None:
    """phi(K)^T V serves every query: one key loop per batch and head, then the query tiles."""
    from attncc.backends.triton.launch import lower_triton

    quadratic = lower_for_tiles(linear_attention(batched=True))
    summed = lower_for_tiles(run_pipeline(linear_attention(batched=True), "reassociate")[0])
    assert not schedule(quadratic).hoisted and schedule(summed).hoisted
    assert "for j in range(counts[qt]):" in numpy_source(lower_tiled(quadratic))
    source = numpy_source(lower_tiled(summed))
    assert source.index("for j in range(counts[0]):") < source.index("for qt in range(")
    dtypes = {name: DType.F32 for name in ("Q", "K", "V", "AV")}
    kernel = lower_triton(summed, features={"e": 32, "f": 16}, dtypes=dtypes).source
    assert kernel.index("for j in range(0, count):") < kernel.index(
        "for qt in range(0, tl.cdiv(s_P, BLOCK_Q)):"
    )


# ----------------------------------------------------------------------------- the builders


def test_default_cascade_is_the_quadratic_form() -> None:
    assert print_cascade(linear_attention()).split("\n\n")[1] == (
        "FQ[e,p] = select(Q[e,p] > 0, Q[e,p] + 1, exp(Q[e,p]))\n"
        "FK[e,m] = select(K[e,m] > 0, K[e,m] + 1, exp(K[e,m]))\n"
        "QK[m,p] = FQ[e,p] * FK[e,m]\n"
        "QKV[f,p] = QK[m,p] * V[f,m]\n"
        "QKS[p] = QK[m,p]\n"
        "AV[f,p] = QKV[f,p] / QKS[p]\n"
    )


def test_causal_cascades_are_self_attention_and_gqa_reads_key_heads() -> None:
    text = print_cascade(lightning_attention(gqa_group=2))
    assert "rank B, G, H = 2*G, E, F, M, P = M" in text
    assert "QK[b,h,m,p] = Q[b,h,e,p] * K[b,h//2,e,m] where m <= p" in text
    assert "AV[b,h,f,p] = QK[b,h,m,p] * V[b,h//2,f,m]" in text


def test_hedgehog_features_are_both_signs_of_a_projection_per_head() -> None:
    text = print_cascade(linear_attention(feature_map="hedgehog", feature_dim=8, gqa_group=2))
    assert "D = 8, J = 2*D" in text
    assert "input WK[h,d,e] : f32" in text
    assert "HK[b,h,j,m] = WK[h,j%D,e] * K[b,h//2,e,m]" in text
    assert "FK[b,h,j,m] = exp(select(j < D, HK[b,h,j,m], -HK[b,h,j,m]))" in text
    # Hedgehog's bias joins after the sum over e, inside the exponent: exp(+-(W x + b)).
    text = print_cascade(linear_attention(feature_map="hedgehog", feature_bias=True, batched=True))
    assert "input BIASK[h,d] : f32" in text
    biased = "HK[b,h,j,m] + BIASK[h,j%D]"
    assert f"FK[b,h,j,m] = exp(select(j < D, {biased}, -({biased})))" in text


def test_zoo_names_both_builders_for_the_loader() -> None:
    assert ZOO["linear_attention"] is linear_attention
    assert load("lightning_attention", {"gqa_group": 2}) == lightning_attention(gqa_group=2)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"feature_map": "cosine"}, "choose one of elu1, relu, identity, hedgehog"),
        ({"feature_dim": 4}, "feature_dim and feature_bias are Hedgehog's"),
        ({"feature_bias": True, "feature_map": "relu"}, "relu has no projection"),
        ({"gqa_group": 0}, "gqa_group must be a positive integer"),
    ],
)
def test_bad_options_are_refused(options: dict[str, Any], message: str) -> None:
    check_refused(linear_attention, options, message)


EXAMPLE_SOURCES: dict[str, tuple[Callable[..., Cascade], dict[str, Any]]] = {
    "linear_attention": (linear_attention, {}),
    "linear_attention_hedgehog_gqa": (
        linear_attention,
        {"feature_map": "hedgehog", "feature_dim": 32, "gqa_group": 4, "head_dim": 64},
    ),
    "lightning_attention": (lightning_attention, {"batched": True}),
}


def test_every_zoo_example_has_a_builder() -> None:
    stems = {path.stem for path in EXAMPLES.glob("linear*.ein")}
    stems |= {path.stem for path in EXAMPLES.glob("lightning*.ein")}
    assert stems == EXAMPLE_SOURCES.keys()


@pytest.mark.parametrize("stem", sorted(EXAMPLE_SOURCES))
def test_example_is_the_builders_cascade(stem: str) -> None:
    build, options = EXAMPLE_SOURCES[stem]
    check_load_and_example(build.__name__, build, options, stem)
