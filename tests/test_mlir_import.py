"""The torch-mlir importer (`attncc import`): every example module's attention is found with the
right spec, at the right line, and its printed cascade, run by the reference interpreter on the
tensors the module computed there, gives the module's own values; patterns that are not
attention are reported with a reason; bad input gets a located error, not a traceback.

Exports take about half a second each: every (module, shapes, dtype) is exported once per test
process and shared (`imported`).
"""

from __future__ import annotations

import functools
import math
import sys
from dataclasses import replace
from pathlib import Path

import pytest
from torch_mlir import ir
from torch_mlir.dialects import torch as torch_dialect
from torch_mlir.extras.fx_importer import GraphNodeImporter

from attncc.cli import main
from attncc.errors import AttnccError
from attncc.frontends.torch import mlir_check
from attncc.frontends.torch.import_inputs import (
    FactoryRef,
    InputSpec,
    load_factory,
    module_name,
    parse_input_shapes,
)
from attncc.frontends.torch.mlir_check import check_site
from attncc.frontends.torch.mlir_import import ImportResult, import_attention
from attncc.frontends.torch.mlir_patterns import find_attention
from attncc.frontends.torch.spec import AttentionSpec, EmptyRow, MaskTensor
from attncc.ir import Call, Const, Coord, format_expr, parse, print_cascade

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples" / "torch_models.py"
MODELS = Path(__file__).resolve().parent / "mlir_import_models.py"
HF_MODELS = Path(__file__).resolve().parent / "mlir_import_hf_models.py"
QKV = "q=2x4x12x16,k=2x4x12x16,v=2x4x12x16"


@functools.cache
def imported(
    factory: str, shapes: str, dtype: str = "f32", decompose: bool = False
) -> ImportResult:
    return import_attention(factory, shapes, dtype=dtype, decompose=decompose)


def example(name: str) -> str:
    return f"{EXAMPLES}:{name}"


def model(name: str) -> str:
    return f"{MODELS}:{name}"


def line_of(text: str, path: Path = EXAMPLES, *, after: str | None = None) -> int:
    """The line of `path` holding `text` (once, or first after the line holding `after`)."""
    lines = list(enumerate(path.read_text().splitlines(), 1))
    start = next(i for i, line in lines if after in line) if after else 0
    found = [i for i, line in lines if text in line and i > start]
    assert len(found) == 1 or (after and found), f"{text!r} is on lines {found} of {path}"
    return found[0]


CAUSAL = AttentionSpec(causal=True)
# The examples' heads are 64 / 4 = 16 wide; a model that writes the scale out (/ sqrt(16)) has
# the literal 0.25 in its spec, SDPA without a scale None (its default, 1/sqrt(E)).
# A softmax written out gives NaN to a row that sees no key (SDPA gives 0): the spec says so.
WRITTEN = {"empty_row": EmptyRow.NAN}
SCALED = AttentionSpec(scale=0.25, **WRITTEN)
SCALED_CAUSAL = AttentionSpec(scale=0.25, causal=True, **WRITTEN)
EXAMPLE_SITES = {
    # factory: (shapes, [(spec, op, source text of the line reported)])
    "sdpa_attention": (
        "x=2x12x64",
        [(AttentionSpec(), "scaled_dot_product_attention", "y = F.scaled_dot_product_attention")],
    ),
    "sdpa_causal_attention": (
        "x=2x12x64",
        [(CAUSAL, "scaled_dot_product_attention", "y = F.scaled_dot_product_attention")],
    ),
    "decomposed_causal_attention": (
        "x=2x12x64",
        [(SCALED_CAUSAL, "softmax.int", "weights = self.dropout(torch.softmax(scores, dim=-1))")],
    ),
    "tril_causal_attention": (
        "x=2x12x64",
        [(SCALED_CAUSAL, "softmax.int", "torch.matmul(F.softmax(scores, dim=-1), v)")],
    ),
    "gqa_attention": (
        "x=2x12x64",
        [
            (
                AttentionSpec(causal=True, gqa_group=2),
                "scaled_dot_product_attention",
                "merge_heads(F.scaled_dot_product_attention(q, k, v, is_causal=True))",
            )
        ],
    ),
    "padded_attention": (
        "x=2x12x64,bias=2x1x1x12",
        [
            (
                AttentionSpec(scale=0.25, mask_tensor=MaskTensor.ADDITIVE, **WRITTEN),
                "softmax.int",
                "weights = torch.softmax(scores + bias, dim=-1)",
            )
        ],
    ),
    "two_layer_transformer": (
        "x=2x12x64",
        [(CAUSAL, "scaled_dot_product_attention", "y = F.scaled_dot_product_attention")] * 2,
    ),
}


@pytest.mark.parametrize("name", sorted(EXAMPLE_SITES))
def test_example_sites_are_found_with_their_spec_and_line(name: str) -> None:
    shapes, expected = EXAMPLE_SITES[name]
    result = imported(example(name), shapes)

    assert not result.unrecognized
    assert [s.spec for s in result.sites] == [spec for spec, _, _ in expected]
    for site, (_, op, text) in zip(result.sites, expected, strict=True):
        assert site.op.name == f"torch.aten.{op}"
        assert f"torch_models.py:{line_of(text)}" in result.location(site)


def test_sites_in_submodules_are_named_by_their_module_path() -> None:
    result = imported(example("two_layer_transformer"), "x=2x12x64")

    where = [result.location(s) for s in result.sites]
    assert "in blocks.0.attention (SdpaAttention)" in where[0]
    assert "in blocks.1.attention (SdpaAttention)" in where[1]


def test_gqa_site_reads_the_key_value_heads_before_the_repeat() -> None:
    (site,) = imported(example("gqa_attention"), "x=2x12x64").sites

    assert (site.dims.heads, site.dims.kv_heads) == (4, 2)
    assert "rank B, G, H = 2*G" in print_cascade(site.cascade())


@pytest.mark.parametrize("dtype", ["f32", "f64"])
@pytest.mark.parametrize("name", sorted(EXAMPLE_SITES))
def test_printed_cascades_compute_what_the_module_computes(name: str, dtype: str) -> None:
    shapes, _ = EXAMPLE_SITES[name]
    result = imported(example(name), shapes, dtype)

    for site in result.sites:
        cascade = site.cascade()
        assert parse(print_cascade(cascade)) == cascade
        checked = check_site(result.exported, site)
        assert checked.ok
        assert checked.error < (1e-5 if dtype == "f32" else 1e-12)


@pytest.mark.parametrize(
    "name", ["decomposed_causal_attention", "tril_causal_attention", "padded_attention"]
)
def test_core_aten_decompositions_give_the_same_sites(name: str) -> None:
    """--decompose: bmm over flattened heads, aten._softmax, where.self."""
    shapes, expected = EXAMPLE_SITES[name]
    result = imported(example(name), shapes, decompose=True)

    assert [s.op.name for s in result.sites] == ["torch.aten._softmax"]
    assert [s.spec for s in result.sites] == [spec for spec, _, _ in expected]
    assert all(check_site(result.exported, s).error < 1e-5 for s in result.sites)


WINDOW = Call("ge", (Coord("m"), Call("sub", (Coord("p"), Const(2.0)))))
MORE_SITES = {
    # module: (shapes, spec)
    "Bmm": ("q=8x12x16,k=8x12x16,v=8x12x16", SCALED),
    "ScaledOperands": (QKV, AttentionSpec(scale=0.6, **WRITTEN)),
    "SlidingWindow": (QKV, AttentionSpec(scale=0.25, causal=True, predicate=WINDOW, **WRITTEN)),
    "TriuAdditiveMask": (QKV, SCALED_CAUSAL),
    "PositionBias": (QKV, AttentionSpec(scale=1.0, mask_tensor=MaskTensor.ADDITIVE, **WRITTEN)),
    "BooleanMask": (QKV + ",m=2x4x12x12", AttentionSpec(mask_tensor=MaskTensor.BOOLEAN)),
    "RepeatInterleave": (
        "q=2x4x12x16,k=2x2x12x16,v=2x2x12x16",
        AttentionSpec(scale=0.25, gqa_group=2, **WRITTEN),
    ),
    "Einsum": (QKV, SCALED),
    # nn.MultiheadAttention scales the queries by head_dim ** -0.5 (32 / 4 = 8 wide).
    "MultiheadAttention": ("x=2x12x32", AttentionSpec(scale=8**-0.5, **WRITTEN)),
}


@pytest.mark.parametrize("name", sorted(MORE_SITES))
def test_other_spellings_of_attention(name: str) -> None:
    shapes, spec = MORE_SITES[name]
    result = imported(model(name), shapes)

    (site,) = result.sites
    assert replace(site.spec, scale=spec.scale) == spec
    assert site.spec.scale == (None if spec.scale is None else pytest.approx(spec.scale))
    assert check_site(result.exported, site).error < 1e-5


def test_masks_are_explained_in_notes() -> None:
    (window,) = imported(model("SlidingWindow"), QKV).sites
    (bias,) = imported(model("PositionBias"), QKV).sites

    assert window.spec.describe() == "scale=0.25, causal, mask where m >= p - 2, empty rows NaN"
    assert any("large finite value" in note for note in window.notes)
    assert any("computed from positions stays a tensor" in note for note in bias.notes)


def test_scalar_forms_with_alpha_read_as_aten_defines_them() -> None:
    """sub.Scalar and add.Scalar scale `other` by alpha; rsub.Scalar is other - alpha * self."""
    result = imported(model("ScalarAlpha"), QKV)

    (site,) = result.sites
    assert site.spec.predicate is not None
    assert format_expr(site.spec.predicate) == "m <= p + 2 and m <= p + 3 and 2 * p + m <= 30"
    assert check_site(result.exported, site).ok


def test_bmm_over_flattened_heads_reads_its_one_leading_dim_as_heads() -> None:
    (site,) = imported(model("Bmm"), MORE_SITES["Bmm"][0]).sites

    assert (site.dims.batch, site.dims.heads, site.dims.queries) == (1, 8, 12)


UNRECOGNIZED = {
    "SoftmaxOverQueries": (QKV, "not over the last (key) dimension"),
    "WeightsOnly": ("q=2x4x12x16,k=2x4x12x16", "weights are not multiplied with a value tensor"),
    "SdpaWithDropout": (QKV, "dropout_p=0.5: attncc compiles attention without dropout"),
    "WrittenOutDropout": (QKV, "dropout is on after the softmax (training mode)"),
    "fill_with_zero": (QKV, "masked_fill fills scores with 0: only -inf (or a constant at most"),
    "WhereZero": (QKV, "a where() before the softmax replaces scores with 0: only -inf"),
    "fill_before_negative_scale": (QKV, "a mask hides keys before a negative scale (-1)"),
    # -1e4 hides a key, but the scale 1e-4 after it makes the fill -1 at the softmax.
    "fill_scaled_away": (
        QKV,
        "masked_fill fills scores with -10000 (times the scale 0.0001 that follows: -1)",
    ),
}


@pytest.mark.parametrize("name", sorted(UNRECOGNIZED))
def test_unrecognized_patterns_are_reported_with_a_reason(name: str) -> None:
    shapes, reason = UNRECOGNIZED[name]
    result = imported(model(name), shapes)

    assert not result.sites
    (skipped,) = result.unrecognized
    assert reason in skipped.reason
    assert "mlir_import_models.py:" in result.location(skipped)


def test_transformers_llama_is_causal_grouped_query_attention() -> None:
    result = imported(f"{HF_MODELS}:llama", "ids=2x12:int100")

    (site,) = result.sites
    # LLaMA passes SDPA its scale, head_dim ** -0.5, explicitly.
    assert site.spec == AttentionSpec(scale=0.25, causal=True, gqa_group=2)
    where = result.location(site)
    assert "transformers/models/llama/modeling_llama.py:" in where
    assert "(from " in where and "mlir_import_hf_models.py:" in where
    assert "in model.layers.0.self_attn (LlamaAttention)" in where
    assert check_site(result.exported, site).error < 1e-5


def test_transformers_gpt2_eager_mask_is_proved_causal() -> None:
    """GPT-2's eager attention hides future keys with the dtype's minimum, not -inf."""
    result = imported(f"{HF_MODELS}:gpt2_eager", "ids=2x12:int100")

    (site,) = result.sites
    assert site.op.name == "torch.aten.softmax.int"
    assert site.spec == SCALED_CAUSAL
    assert any("large finite value" in note for note in site.notes)
    assert check_site(result.exported, site).error < 1e-5


# -- The command line. -------------------------------------------------------------------------


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    status = main(["import", *argv])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def test_cli_prints_each_site_as_text_ir_with_its_check(capsys: pytest.CaptureFixture[str]) -> None:
    status, out, _ = run(
        capsys, example("padded_attention"), "--shapes", "x=2x12x64,bias=2x1x1x12", "--check"
    )

    assert status == 0
    assert "1 attention site" in out
    line = line_of("weights = torch.softmax(scores + bias, dim=-1)")
    assert f"# site 1: examples/torch_models.py:{line}, in PaddedAttention" in out
    assert "# scale=0.25, additive mask tensor" in out
    assert "S[b,h,m,p] = QK[b,h,m,p] + BIAS[b,h,p,m]" in out
    assert ": ok" in out and "MISMATCH" not in out
    # The site's lines, headers and all, read back as the cascade.
    (site,) = imported(example("padded_attention"), "x=2x12x64,bias=2x1x1x12").sites
    body = out[out.index("# site 1") :]
    assert parse(body) == site.cascade()


def test_cli_check_mismatch_exits_1(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(mlir_check.TOLERANCE, "f32", -1.0)

    status, out, _ = run(capsys, example("sdpa_attention"), "--shapes", "x=2x12x64", "--check")

    assert status == 1
    assert "MISMATCH" in out


def test_cli_emit_mlir(capsys: pytest.CaptureFixture[str]) -> None:
    status, out, _ = run(
        capsys, example("gqa_attention"), "--shapes", "x=2x12x64", "--emit", "mlir"
    )

    assert status == 0
    mlir = out[: out.index("# ")]
    assert "func.func @main(%arg0: !torch.vtensor<[2,12,64],f32>" in mlir
    assert "torch.aten.scaled_dot_product_attention" in mlir
    assert "torch_models.py" in mlir  # locations
    assert "GQA group 2" in out[len(mlir) :]


def test_cli_reports_unrecognized_softmax_and_modules_without_attention(
    capsys: pytest.CaptureFixture[str],
) -> None:
    status, out, _ = run(capsys, model("SoftmaxOverQueries"), "--shapes", QKV)
    _, none, _ = run(capsys, model("NoAttention"), "--shapes", "x=3")

    assert status == 0
    assert "0 attention sites" in out
    assert "# not recognized: " in out and "torch.aten.softmax.int: the softmax runs over" in out
    assert "no softmax and no scaled_dot_product_attention" in none


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["nope.py:f", "--shapes", "x=2"], "nope.py: no such file"),
        ([str(EXAMPLES), "--shapes", "x=2"], "give FILE.py:FACTORY"),
        ([example("missing"), "--shapes", "x=2"], "has no 'missing'; its factories"),
        ([model("raises"), "--shapes", "x=2"], "raises() raised ValueError: no weights"),
        ([model("not_a_module"), "--shapes", "x=2"], "returned int, not a torch.nn.Module"),
        ([example("sdpa_attention"), "--shapes", "x=2xa"], "--shapes 'x=2xa': give NAME="),
        ([example("sdpa_attention"), "--shapes", "x=2x0"], "(positive sizes)"),
        ([example("sdpa_attention"), "--shapes", "y=2"], "names y, but SdpaAttention.forward"),
        ([example("padded_attention"), "--shapes", "x=2x12x64"], "no shape for bias"),
        (
            [example("sdpa_attention"), "--shapes", "x=2x12x32"],
            "forward(x: 2x12x32) raised RuntimeError: mat1 and mat2 shapes cannot be multiplied",
        ),
    ],
)
def test_cli_errors_say_what_and_where(
    capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    status, _, err = run(capsys, *argv)

    assert status == 1
    assert message in err
    assert "Traceback" not in err


def test_errors_point_at_the_users_line(tmp_path: Path) -> None:
    broken = tmp_path / "broken.py"
    broken.write_text("import torch\n\nx = (\n")

    with pytest.raises(AttnccError, match=r"importing it failed: SyntaxError: .* line 3"):
        import_attention(f"{broken}:f", "x=2")
    with pytest.raises(AttnccError, match=rf"mlir_import_models.py, line {_raise_line()}"):
        import_attention(model("raises"), "x=2")
    with pytest.raises(AttnccError, match=rf"torch_models.py, line {_linear_line()}"):
        import_attention(example("sdpa_attention"), "x=2x12x32")


def _raise_line() -> int:
    return line_of('raise ValueError("no weights for this size")', MODELS)


def _linear_line() -> int:
    return line_of("self.qkv(x).chunk", after="class SdpaAttention")


def test_parse_input_shapes() -> None:
    assert parse_input_shapes("x=2x16x64, bias=2x1x1x16, ids=2x16:int100, keep=2x16:bool") == {
        "x": InputSpec((2, 16, 64)),
        "bias": InputSpec((2, 1, 1, 16)),
        "ids": InputSpec((2, 16), "int", 100),
        "keep": InputSpec((2, 16), "bool"),
    }
    for bad in ("2x16x64", "x=2x16:int", "x=2:float", "x=", "x=2,"):
        with pytest.raises(AttnccError, match="give NAME=DIMSxDIMS"):
            parse_input_shapes(bad)
    with pytest.raises(AttnccError, match="x is given twice"):
        parse_input_shapes("x=2,x=3")


def test_scale_is_read_as_a_number_not_rounded() -> None:
    (site,) = imported(model("ScaledOperands"), QKV).sites

    assert site.spec.scale is not None
    assert math.isclose(site.spec.scale, 0.3 * 2.0, rel_tol=1e-12)


# -- Masks that hide whole rows, finite fills, and masks that stay tensors. ----------------------


def test_finite_fill_is_a_predicate_when_every_row_sees_a_key() -> None:
    """masked_fill(future, -1e9): causal, and no query row is left without a key."""
    result = imported(model("finite_causal"), QKV)

    (site,) = result.sites
    assert site.spec == AttentionSpec(scale=1.0, causal=True, **WRITTEN)
    assert any("as every query row sees a key" in note for note in site.notes)
    assert check_site(result.exported, site).ok


def test_finite_fill_hiding_whole_rows_stays_a_tensor() -> None:
    """masked_fill(m >= p, -1e9) hides every key of row 0: the module averages there, where a
    predicate (-inf) would leave no key, so the mask stays BIAS, its fill included."""
    result = imported(model("finite_rows_hidden"), QKV)

    (site,) = result.sites
    assert site.spec == AttentionSpec(scale=1.0, mask_tensor=MaskTensor.ADDITIVE, **WRITTEN)
    assert any("hides every key of some query row" in note for note in site.notes)
    (term,) = site.masks
    assert term.hiding == -1e9
    assert result.exported.data(site.output)[:, :, 0].isfinite().all()
    checked = check_site(result.exported, site)
    assert checked.ok and checked.empty_rows == 0


def test_finite_fill_on_hidden_rows_in_float64_is_reported() -> None:
    """In float64, s - 1e9 keeps the scores' differences: the cascade's added fill is not
    masked_fill's equal weights on row 0, and the check says so rather than passing."""
    result = imported(model("finite_rows_hidden"), QKV, "f64")

    (site,) = result.sites
    assert not check_site(result.exported, site).ok


@pytest.mark.parametrize(
    ("name", "empty_row"), [("inf_rows_hidden", math.nan), ("sdpa_rows_hidden", 0.0)]
)
def test_rows_without_keys_compare_as_the_module_gives_them(name: str, empty_row: float) -> None:
    """m <= p - 1 with -inf leaves row 0 of each of the 2 x 4 heads without a key: SDPA gives
    0 there, a softmax written out NaN; the cascade's 0/0 is read as that."""
    result = imported(model(name), QKV)

    (site,) = result.sites
    assert site.spec.predicate is not None
    assert format_expr(site.spec.predicate) == "m <= p - 1"
    assert site.empty_row == pytest.approx(empty_row, nan_ok=True)
    checked = check_site(result.exported, site)
    assert checked.ok and checked.empty_rows == 8


def test_check_holds_the_module_to_its_empty_row_value(monkeypatch: pytest.MonkeyPatch) -> None:
    """A written-out softmax gives NaN on rows without a key: read as 0, they mismatch."""
    result = imported(model("inf_rows_hidden"), QKV)
    (site,) = result.sites
    monkeypatch.setattr(type(site), "empty_row", property(lambda _: 0.0))

    assert check_site(result.exported, site).error == math.inf


def test_cli_reports_rows_without_keys(capsys: pytest.CaptureFixture[str]) -> None:
    status, out, _ = run(capsys, model("sdpa_rows_hidden"), "--shapes", QKV, "--check")

    assert status == 0
    assert "# check: 8 query rows see no key; the module gives them 0" in out


MASK_NOTES = {
    # module: (mask tensor kind, note, query rows without a key)
    "mask_by_batch": (MaskTensor.BOOLEAN, "the mask varies over batch or heads", 0),
    "five_comparisons": (
        MaskTensor.BOOLEAN,
        "the mask compares positions 5 ways (at most 4 are read)",
        0,
    ),
    "hides_every_key": (MaskTensor.BOOLEAN, "the mask hides every key", 2 * 4 * 12),
}


@pytest.mark.parametrize("name", sorted(MASK_NOTES))
def test_masks_from_positions_that_stay_tensors_say_why(name: str) -> None:
    kind, note, empty = MASK_NOTES[name]
    result = imported(model(name), QKV)

    (site,) = result.sites
    assert site.spec == AttentionSpec(scale=1.0, mask_tensor=kind, **WRITTEN)
    assert any(
        n.startswith(f"a mask computed from positions stays a tensor: {note}") for n in site.notes
    )
    checked = check_site(result.exported, site)
    assert checked.ok and checked.empty_rows == empty


def test_fill_is_judged_after_the_scale_that_follows_it() -> None:
    """masked_fill(future, -1e9) * 0.25 still hides (-2.5e8): causal, with scale 0.25."""
    (site,) = imported(model("fill_then_scale"), QKV).sites

    assert site.spec == AttentionSpec(scale=0.25, causal=True, **WRITTEN)
    (skipped,) = imported(model("fill_scaled_away"), QKV).unrecognized
    assert "-1)" in skipped.reason


def test_explicit_scale_equal_to_the_default_is_kept() -> None:
    (literal,) = imported(model("SdpaLiteralScale"), QKV).sites
    (default,) = imported(example("sdpa_attention"), "x=2x12x64").sites

    assert literal.spec.scale == 0.25
    assert default.spec.scale is None


def test_sdpa_with_a_scale_computed_at_run_time_is_not_compiled() -> None:
    """torch.export cannot trace a data-dependent scale, so the module is written in MLIR."""
    t = "!torch.vtensor<[1,1,12,16],f32>"
    text = f"""
    func.func @main(%q: {t}, %k: {t}, %v: {t}, %scale: !torch.float) -> {t} {{
      %none = torch.constant.none
      %zero = torch.constant.float 0.000000e+00
      %false = torch.constant.bool false
      %0 = torch.aten.scaled_dot_product_attention %q, %k, %v, %none, %zero, %false, %scale,
          %false : {t}, {t}, {t}, !torch.none, !torch.float, !torch.bool, !torch.float,
          !torch.bool -> {t}
      return %0 : {t}
    }}"""
    context = ir.Context()
    torch_dialect.register_dialect(context)
    module = ir.Module.parse(text, context)

    sites, (skipped,) = find_attention(module)
    assert not sites
    assert skipped.reason == "dropout_p, is_causal, scale and enable_gqa must be constants"


# -- torch-mlir internals, and loading model files. --------------------------------------------


def test_missing_torch_mlir_internals_name_the_version(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delattr(GraphNodeImporter, "_import_literal")

    with pytest.raises(AttnccError, match=r"has no GraphNodeImporter\._import_literal.*==20261001"):
        import_attention(example("sdpa_attention"), "x=2x12x64")


def test_missing_value_map_names_the_version(monkeypatch: pytest.MonkeyPatch) -> None:
    init = GraphNodeImporter.__init__

    def without_value_map(self: GraphNodeImporter, *args: object) -> None:
        init(self, *args)
        del self._v

    monkeypatch.setattr(GraphNodeImporter, "__init__", without_value_map)

    with pytest.raises(AttnccError, match=r"torch-mlir \S+ has no GraphNodeImporter\._v"):
        import_attention(example("sdpa_attention"), "x=2x12x64")


MODEL_FILE = """
import sys
from torch import nn

sys.path.insert(0, {marker!r})


class Model(nn.Module):
    width = {width}
"""


def test_model_files_with_one_stem_stay_apart(tmp_path: Path) -> None:
    """Two model.py files load as two modules; sys.path loses only the importer's entry,
    though each file puts its own entry first."""
    marker = str(tmp_path / "put-there-by-the-model")
    paths = []
    for width in (1, 2):
        folder = tmp_path / f"run{width}"
        folder.mkdir()
        (folder / "model.py").write_text(MODEL_FILE.format(marker=marker, width=width))
        paths.append(folder / "model.py")
    try:
        first, second = (load_factory(FactoryRef(p, "Model")) for p in paths)

        assert (type(first).width, type(second).width) == (1, 2)
        names = {type(first).__module__, type(second).__module__}
        assert names == {module_name(p) for p in paths} and len(names) == 2
        assert all(sys.modules[name].__file__ in map(str, paths) for name in names)
        assert not any(str(p.parent) in sys.path for p in paths)
        assert marker in sys.path
    finally:
        while marker in sys.path:
            sys.path.remove(marker)
        for p in paths:
            sys.modules.pop(module_name(p), None)


def test_a_model_file_that_fails_to_import_is_not_registered(tmp_path: Path) -> None:
    broken = tmp_path / "model.py"
    broken.write_text("raise RuntimeError('no')\n")

    with pytest.raises(AttnccError, match="importing it failed: RuntimeError: no"):
        load_factory(FactoryRef(broken, "Model"))
    assert module_name(broken) not in sys.modules
    assert str(tmp_path) not in sys.path
