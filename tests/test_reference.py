"""The reference interpreter against PyTorch's scaled_dot_product_attention (float64)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from attncc.backends.numpy.reference import interpret
from attncc.errors import ExecutionError, ShapeError
from attncc.frontends.builder import CascadeBuilder, TensorRef, maximum
from attncc.frontends.library import (
    attention_1pass,
    attention_2pass,
    attention_3pass,
    toy_cascade1,
    toy_cascade2,
    toy_cascade3,
)
from attncc.ir import parse

ATTENTION = {
    "3pass": attention_3pass,
    "2pass": attention_2pass,
    "1pass": lambda **kw: attention_1pass(tile=16, **kw),
}

# (B, H, G, E, F, M, P): M = 40 is not a multiple of the 16-key tile; 48 is; M != P too.
SHAPES = [
    (None, None, None, 8, 8, 40, 40),
    (None, None, None, 16, 8, 48, 33),
    (2, 3, None, 8, 16, 40, 21),
    (2, 4, 2, 8, 8, 35, 35),
    (1, 6, 1, 4, 4, 17, 50),
]


def torch_layout(array: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(array).transpose(-1, -2)


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(str(d) for d in s if d))
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("name", list(ATTENTION))
def test_attention_matches_sdpa(name: str, causal: bool, shape: tuple) -> None:
    b, h, g, e, f, m, p = shape
    batched = b is not None
    gqa_group = h // g if g is not None else None
    cascade = ATTENTION[name](causal=causal, batched=batched, gqa_group=gqa_group)
    rng = np.random.default_rng(hash((name, causal, shape)) % 2**32)
    q_heads = (b, h) if batched else ()
    kv_heads = (b, g if g is not None else h) if batched else ()
    q = rng.standard_normal((*q_heads, e, p))
    k = rng.standard_normal((*kv_heads, e, m))
    v = rng.standard_normal((*kv_heads, f, m))

    out = interpret(cascade, {"Q": q, "K": k, "V": v})["AV"]

    expected = torch.nn.functional.scaled_dot_product_attention(
        torch_layout(q),
        torch_layout(k),
        torch_layout(v),
        is_causal=causal,
        enable_gqa=g is not None,
    )
    expected_np = expected.transpose(-1, -2).numpy()
    assert out.dtype == np.float64
    assert out.shape == expected_np.shape
    assert np.abs(out - expected_np).max() / np.abs(expected_np).max() < 1e-10


def test_explicit_scale_and_float32() -> None:
    cascade = attention_1pass(scale=0.3, tile=8)
    rng = np.random.default_rng(1)
    q, k, v = (rng.standard_normal(s).astype(np.float32) for s in ((4, 9), (4, 20), (4, 20)))

    out = interpret(cascade, {"Q": q, "K": k, "V": v})["AV"]

    expected = torch.nn.functional.scaled_dot_product_attention(
        torch_layout(q), torch_layout(k), torch_layout(v), scale=0.3
    )
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, expected.transpose(-1, -2).numpy(), rtol=1e-5, atol=1e-6)


def test_running_values_are_the_prefix_reductions() -> None:
    """RM[m1] is the max of the first m1 tiles; RD the sum of exp(score - RM) over them."""
    cascade = attention_1pass(tile=4, scale=1.0)
    rng = np.random.default_rng(2)
    q, k, v = (
        rng.standard_normal((3, 5)),
        rng.standard_normal((3, 10)),
        rng.standard_normal((2, 10)),
    )

    values = interpret(cascade, {"Q": q, "K": k, "V": v}, keep_temporaries=True)

    scores = k.T @ q
    for tiles in range(1, 4):
        seen = scores[: min(4 * tiles, 10)]
        np.testing.assert_allclose(values["RM"][tiles], seen.max(axis=0))
        np.testing.assert_allclose(values["RD"][tiles], np.exp(seen - seen.max(axis=0)).sum(axis=0))
    assert np.all(values["RM"][0] == -np.inf)


@pytest.mark.parametrize("size", [1, 7, 64])
def test_toy_cascades_agree(size: int) -> None:
    rng = np.random.default_rng(size)
    inputs = {"A": rng.standard_normal(size), "B": rng.standard_normal(size)}
    expected = (inputs["A"] @ inputs["B"]) * inputs["A"].sum()

    results = [interpret(toy(), inputs)["Z"] for toy in (toy_cascade1, toy_cascade2, toy_cascade3)]

    for result in results:
        assert result.shape == ()
        np.testing.assert_allclose(result, expected, rtol=1e-12)


def _masked_sum_cascade(fill: float | None):
    b = CascadeBuilder("masked_sum")
    m, p = b.rank("M"), b.rank("P")
    X = b.input("X", [m, p])
    b.output("S", [p])
    b.let("S", [p], X[m, p], where=m + 2 <= p, fill=fill)
    return b.build()


def test_filter_excludes_points_and_fills_empty_outputs() -> None:
    x = np.arange(12.0).reshape(3, 4)

    default = interpret(_masked_sum_cascade(None), {"X": x})["S"]
    filled = interpret(_masked_sum_cascade(-1.0), {"X": x})["S"]

    # Column p sums rows m <= p - 2: none for p < 2.
    expected = np.array([0.0, 0.0, x[0, 2], x[0, 3] + x[1, 3]])
    np.testing.assert_array_equal(default, expected)
    np.testing.assert_array_equal(filled, np.where([True, True, False, False], -1.0, expected))


def test_data_predicate_masks_across_documents() -> None:
    b = CascadeBuilder("same_document")
    m, p = b.rank("M"), b.rank("P")
    X = b.input("X", [m, p])
    DOC = b.input("DOC", [m])
    DOCQ = b.input("DOCQ", [p])
    b.output("S", [p])
    b.let("S", [p], X[m, p], reduce="max", where=DOC[m] == DOCQ[p])
    x = np.arange(12.0).reshape(4, 3)

    s = interpret(b.build(), {"X": x, "DOC": [0, 0, 1, 1], "DOCQ": [1, 0, 2]})["S"]

    np.testing.assert_array_equal(s, [x[3, 0], x[1, 1], -np.inf])


def test_missing_and_unknown_inputs_are_reported() -> None:
    cascade = attention_3pass()
    with pytest.raises(ExecutionError, match="missing input V"):
        interpret(cascade, {"Q": np.ones((2, 3)), "K": np.ones((2, 3))})
    with pytest.raises(ExecutionError, match="unknown input W"):
        interpret(cascade, {"Q": 1, "K": 1, "V": 1, "W": 1})


def test_shapes_must_agree() -> None:
    cascade = attention_3pass(head_dim=4)
    q, v = np.ones((4, 3)), np.ones((2, 5))
    with pytest.raises(ShapeError, match=r"rank M is 6 from input K .* but 5 from input V"):
        interpret(cascade, {"Q": q, "V": v, "K": np.ones((4, 6))})
    with pytest.raises(ShapeError, match=r"rank E is 3 from input K .* but 4 from the cascade"):
        interpret(cascade, {"Q": np.ones((3, 3)), "K": np.ones((3, 5)), "V": v})
    with pytest.raises(ShapeError, match="input K has 3 dimensions"):
        interpret(cascade, {"Q": q, "K": np.ones((4, 5, 1)), "V": v})


def test_out_of_range_read_is_located() -> None:
    b = CascadeBuilder("shift")
    m = b.rank("M")
    X = b.input("X", [m])
    b.output("Y", [m])
    b.let("Y", [m], X[m + 1])

    with pytest.raises(ExecutionError, match=r"Einsum Y: X\[m\+1\] reads index 3 along rank M"):
        interpret(b.build(), {"X": np.ones(3)})


def test_filter_of_a_running_update_does_not_apply_to_its_initial_value() -> None:
    b = CascadeBuilder("filtered_running_max")
    j = b.rank("J")
    X = b.input("X", [j])
    b.output("R", [j])
    R = TensorRef("R")
    b.let("R", [j + 1], maximum(R[j], X[j]), init=-1.0, where=j >= 1, fill=7.0)

    r = interpret(b.build(), {"X": np.array([5.0, 2.0, 3.0])})["R"]

    # Step j=0 is filtered out (takes the fill); later steps run the max from there.
    np.testing.assert_array_equal(r, [-1.0, 7.0, 7.0, 7.0])


def test_sums_of_comparisons_count() -> None:
    cascade = parse("rank M, P\ninput X[m,p]\noutput Y[p]\nY[p] = X[m,p] > 0")

    y = interpret(cascade, {"X": np.array([[1.0, 1.0], [2.0, -1.0], [3.0, 1.0]])})["Y"]

    np.testing.assert_array_equal(y, [3.0, 2.0])


def test_integer_temporaries_are_not_rounded() -> None:
    text = """
    rank M, P
    input S[m,p]
    input KDOC[m] : i64
    input QDOC[p] : i64
    output Y[m,p]
    D[m] = KDOC[m]
    Y[m,p] = S[m,p] where D[m] == QDOC[p] else 0
    """
    inputs = {
        "S": np.ones((2, 1), np.float32),
        "KDOC": np.array([16777217, 5]),
        "QDOC": np.array([16777216]),
    }

    y = interpret(parse(text), inputs)["Y"]

    np.testing.assert_array_equal(y, [[0.0], [0.0]])  # 2^24 + 1 is not 2^24
    with pytest.raises(ExecutionError, match="KDOC is declared i64 but holds floating-point"):
        interpret(parse(text), {**inputs, "KDOC": np.array([1.5, 2.0])})
    with pytest.raises(ExecutionError, match="S is not a rectangular array"):
        interpret(parse(text), {**inputs, "S": [[1.0], [2.0, 3.0]]})
