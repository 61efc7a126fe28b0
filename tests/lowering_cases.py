"""The attention variants every backend must lower, with inputs and a float64 reference.

Each case is a library cascade as a user writes it (3-pass softmax, or sigmoid attention)
and the pipeline that makes it one pass. The reference is the reference interpreter run in
float64 on the cascade *before* any pass, itself checked against plain PyTorch by
test_score_mods.py and test_masks.py; `sdpa` cases are also compared with PyTorch's
scaled_dot_product_attention directly.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np

from attncc.backends.numpy.reference import interpret
from attncc.differential import random_inputs
from attncc.frontends import masks
from attncc.frontends.library import ScoreMod, attention_3pass, attention_sigmoid
from attncc.frontends.sdpa import match_sdpa, sdpa_reference
from attncc.ir import Cascade, bind_sizes
from attncc.passes import run_pipeline

SPARSE = "flash-sparse,canonicalize"
DENSE = "flash,canonicalize"
GRID = (10, 9)


@dataclass(frozen=True)
class Case:
    name: str
    build: Callable[[], Cascade]
    pipeline: str
    sdpa: bool = False

    def cascades(self) -> tuple[Cascade, Cascade]:
        """The cascade as written and after its pipeline."""
        written = self.build()
        return written, run_pipeline(written, self.pipeline)[0]


def _softmax(**options: object) -> Callable[[], Cascade]:
    return lambda: attention_3pass(batched=True, **options)  # type: ignore[arg-type]


CASES = (
    Case("dense", _softmax(), DENSE, sdpa=True),
    Case("causal", _softmax(causal=True), SPARSE, sdpa=True),
    Case("sliding_window", _softmax(mask=masks.sliding_window(20)), SPARSE),
    Case("neighborhood_2d", _softmax(mask=masks.neighborhood_2d(GRID, 5)), SPARSE),
    Case("document", _softmax(mask=masks.document()), SPARSE),
    Case("gqa", _softmax(causal=True, gqa_group=2), SPARSE, sdpa=True),
    Case("value_dim", _softmax(value_dim=24), DENSE, sdpa=True),
    Case("softcap", _softmax(causal=True, score=ScoreMod(softcap=2.0)), SPARSE),
    Case("alibi", _softmax(causal=True, score=ScoreMod(alibi=True)), SPARSE),
    Case("bias", _softmax(score=ScoreMod(bias=True)), DENSE),
    Case("rel_bias", _softmax(causal=True, score=ScoreMod(rel_bias=True)), SPARSE),
    Case("lse", _softmax(causal=True, lse=True), SPARSE),
    Case("sigmoid", lambda: attention_sigmoid(batched=True, causal=True), SPARSE),
)

BY_NAME = {case.name: case for case in CASES}


def sizes(n: int, *, heads: int = 4, head_dim: int = 32) -> dict[str, int]:
    """Sizes for `n` keys and queries (90 for the 10x9 neighborhood grid)."""
    return {"B": 2, "H": heads, "E": head_dim, "M": n, "P": n}


def inputs_for(
    cascade: Cascade, given: Mapping[str, int], seed: int, dtype: type = np.float64
) -> tuple[dict[str, np.ndarray], dict[str, int]]:
    """Random inputs of `cascade` at the sizes `given` (completed from the cascade), ids as
    packed documents of random lengths."""
    known = {name: value for name, value in given.items() if cascade.rank(name) is not None}
    value_dim = cascade.rank("F")
    if value_dim is not None and not value_dim.size.is_number:
        known["F"] = known["E"]
    if cascade.rank("G") is not None:
        known["G"] = known.pop("H") // 2
    bound = bind_sizes(cascade, known)
    rng = np.random.default_rng(seed)
    inputs = random_inputs(cascade, bound, rng, dtype)
    for name in ("KDOC", "QDOC"):
        if name in inputs:
            lengths = rng.integers(1, bound["M"] // 3, size=bound["M"])
            inputs[name] = np.repeat(np.arange(lengths.size), lengths)[: bound["M"]].astype(
                np.int32
            )
    if "QDOC" in inputs:
        inputs["QDOC"] = inputs["KDOC"]
    return inputs, bound


def reference(
    case: Case, inputs: Mapping[str, np.ndarray], bound: Mapping[str, int]
) -> dict[str, np.ndarray]:
    """Float64 outputs of the cascade as written (and SDPA's, checked equal, for `sdpa`)."""
    written = case.build()
    wide = {n: a.astype(np.float64) if a.dtype.kind == "f" else a for n, a in inputs.items()}
    own = {name: value for name, value in bound.items() if written.rank(name) is not None}
    outputs = interpret(written, wide, own)
    if case.sdpa:
        call = match_sdpa(written)
        assert call is not None, f"{case.name} is SDPA-shaped"
        expected = sdpa_reference(call, wide, own)
        assert relative_error(outputs[call.output], expected) < 1e-12
    return outputs


def relative_error(actual: np.ndarray, expected: np.ndarray) -> float:
    """max |actual - expected| / max |expected|: the error scale the issue states."""
    return float(np.abs(actual - expected).max() / max(np.abs(expected).max(), 1e-30))
