"""Architecture specs: the presets load with the paper's parameters, a spec inherits from a
`base` one, and malformed specs and bindings are refused with messages that name the file, the
field and the fix."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from attncc.accel import (
    PRESETS,
    SpecError,
    Workload,
    architecture_from_dict,
    evaluate,
    load_architecture,
    plan,
)
from attncc.accel.spec import Issue, preset_text
from attncc.frontends.library import attention_3pass


def preset_dict(name: str = "fusemax") -> dict[str, Any]:
    data = yaml.safe_load(preset_text(name))
    assert isinstance(data, dict)
    return data


@pytest.mark.parametrize("name", PRESETS)
def test_presets_load_with_the_papers_parameters(name: str) -> None:
    arch = load_architecture(name)

    assert arch.name == name
    assert arch.clock == 940e6 and arch.data_bytes == 2
    assert arch.dram_bandwidth == 400 * 2**30
    two_d, one_d = arch.array("2d"), arch.array("1d")
    assert two_d is not None and one_d is not None
    assert two_d.shape == (256, 256) and one_d.shape == (256,)
    assert arch.buffer.capacity == (16 if name == "fusemax" else 32) * 2**20


def test_fusemax_exp_is_six_macs_and_flat_has_an_exp_unit() -> None:
    fusemax, flat = load_architecture("fusemax"), load_architecture("flat")
    exp = fusemax.array("2d").op("exp")  # type: ignore[union-attr]
    assert exp is not None and exp.cycles == 6 and exp.actions == (("mac", 6.0),)
    flat_exp = flat.array("1d").op("exp")  # type: ignore[union-attr]
    assert flat_exp is not None and flat_exp.cycles == 1
    assert flat.array("1d").issue is Issue.PIPELINED  # type: ignore[union-attr]
    assert flat.array("2d").op("max") is None  # type: ignore[union-attr]


def test_spec_from_a_file(tmp_path: Path) -> None:
    data = preset_dict()
    data["name"] = "small"
    data["arrays"]["2d"]["shape"] = [64, 64]
    path = tmp_path / "small.yaml"
    path.write_text(yaml.safe_dump(data))

    arch = load_architecture(str(path))

    assert arch.name == "small" and arch.array("2d").pes == 64 * 64  # type: ignore[union-attr]
    assert arch.source == str(path)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            lambda d: d["arrays"]["2d"].update(shape=[-256, 256]),
            "arrays.2d.shape[0]: must be positive",
        ),
        (lambda d: d["buffer"].pop("capacity_bytes"), "buffer.capacity_bytes: missing (required)"),
        (lambda d: d.pop("arrays"), "arrays: missing (required)"),
        (
            lambda d: d["dram"].update(bandwidth_bytes_per_s=0),
            "dram.bandwidth_bytes_per_s: must be positive",
        ),
        (lambda d: d["buffer"].update(banks=2.5), "buffer.banks: expected an integer"),
        (lambda d: d.update(clock_hz="fast"), "clock_hz: expected a number, got 'fast'"),
        (
            lambda d: d["arrays"]["1d"]["ops"].update(sqroot=1),
            "arrays.1d.ops.sqroot: unknown operation",
        ),
        (lambda d: d["arrays"]["1d"].update(issue="vliw"), "arrays.1d.issue: 'vliw' is not one of"),
        (
            lambda d: d["arrays"]["1d"].update(shape=[1, 2, 3]),
            "arrays.1d.shape: a list of one or two",
        ),
        (lambda d: d["energy_pj"].pop("div"), "energy_pj: missing div (used by arrays.1d.ops.div)"),
        (
            lambda d: d["energy_pj"].pop("dram_read"),
            "energy_pj: missing dram_read (used by every spec)",
        ),
        (lambda d: d.update(dramm={}), "dramm: unknown field; fields here: name, clock_hz"),
        (lambda d: d["arrays"]["2d"]["ops"].update(exp={}), "arrays.2d.ops.exp: name the actions"),
    ],
)
def test_bad_specs_name_the_file_and_the_field(tmp_path: Path, change: Any, message: str) -> None:
    data = preset_dict()
    change(data)
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(data))

    with pytest.raises(SpecError) as error:
        load_architecture(str(path))

    assert str(error.value).startswith(f"{path}: ")
    assert message in str(error.value)


def test_yaml_syntax_error_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("name: x\narrays: [\n")

    with pytest.raises(SpecError, match=rf"{path}:\d+: not valid YAML"):
        load_architecture(str(path))


def test_unknown_preset_or_file() -> None:
    with pytest.raises(SpecError, match="no architecture file 'tpu' and no preset"):
        load_architecture("tpu")


def test_binding_to_an_array_that_lacks_the_operation() -> None:
    arch = load_architecture("flat")
    with pytest.raises(SpecError) as error:
        plan(attention_3pass(), arch, {"bind": {"SN": "2d"}})

    text = str(error.value)
    assert "Einsum SN needs add, exp, which array 2d of flat lacks" in text
    assert "bind it to another array or add the operation to arrays.2d.ops" in text


def test_an_operation_no_array_runs() -> None:
    data = preset_dict("flat")
    del data["arrays"]["1d"]["ops"]["div"]
    arch = architecture_from_dict(data, "nodiv.yaml")

    with pytest.raises(SpecError, match="Einsum A needs div; no array of flat"):
        plan(attention_3pass(scale=1.0), arch)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"bind": {"ZZ": "2d"}}, "bind.ZZ: attention_3pass has no Einsum ZZ"),
        ({"bind": {"QK": "3d"}}, "bind.QK: fusemax has no array '3d'"),
        ({"tiles": {"P0": -4}}, "tiles.P0: must be a positive integer"),
        ({"tiles": {"Q0": 4}}, "tiles.Q0: unknown tile"),
        ({"overlap": "sometimes"}, "overlap: 'sometimes' is not one of serialized, pipelined"),
        ({"spatial": {"2d": ["key"]}}, "spatial.2d: one role per dimension"),
        ({"phases": [["QK", "GM"], ["SN"]]}, "phases: every Einsum exactly once"),
        ({"phases": [["GM"], ["QK", "SN", "SD", "A", "AV"]]}, "GM (phase 1) reads QK"),
        ({"unroll": 2}, "unroll: unknown mapping option"),
        ({"residency": {"key_tile": 2}}, "residency.key_tile: unknown field"),
        ({"residency": {"key_tiles": 0}}, "residency.key_tiles: must be a positive integer"),
        ({"residency": {"query_tiles": "most"}}, "'most' is not one of divisor, fit"),
    ],
)
def test_bad_mapping_options(options: dict[str, Any], message: str) -> None:
    with pytest.raises(SpecError, match="mapping: ") as error:
        plan(attention_3pass(), load_architecture("fusemax"), options)
    assert message in str(error.value)


def test_buffer_too_small_for_the_rows_in_flight() -> None:
    data = preset_dict()
    data["buffer"]["capacity_bytes"] = 4096
    arch = architecture_from_dict(data, "tiny.yaml")
    cascade = attention_3pass(scale=1.0)
    work = Workload("w", (("M", 1024), ("P", 1024), ("E", 64), ("F", 64)))

    with pytest.raises(SpecError, match=r"tiny\.yaml: buffer\.capacity_bytes: 4096 bytes cannot"):
        evaluate(cascade, arch, work)


def test_unfused_preset_is_flat_with_its_own_mapping() -> None:
    """unfused.yaml says `base: flat` and changes the name and the mapping's overlap and
    fusion: everything else is FLAT's, the spatial mapping merged in from FLAT's mapping."""
    assert preset_dict("unfused")["base"] == "flat"
    flat, unfused = load_architecture("flat"), load_architecture("unfused")

    assert unfused.name == "unfused"
    assert (unfused.arrays, unfused.buffer, unfused.energy) == (
        flat.arrays,
        flat.buffer,
        flat.energy,
    )
    hints = dict(unfused.mapping)
    assert hints["overlap"] == "serialized" and hints["fusion"] == "per-array"
    assert hints["spatial"] == dict(flat.mapping)["spatial"]


def test_a_spec_inherits_from_a_preset_or_a_file_in_its_folder(tmp_path: Path) -> None:
    (tmp_path / "half.yaml").write_text("base: fusemax\nbuffer: {capacity_bytes: 8388608}\n")
    (tmp_path / "narrow.yaml").write_text(
        "base: half.yaml\nname: narrow\narrays: {2d: {shape: [128, 128]}}\n"
    )

    arch = load_architecture(str(tmp_path / "narrow.yaml"))

    fusemax = load_architecture("fusemax")
    assert arch.name == "narrow" and arch.source == str(tmp_path / "narrow.yaml")
    assert arch.buffer.capacity == 8388608 and arch.buffer.banks == fusemax.buffer.banks
    two_d = arch.array("2d")
    assert two_d is not None and two_d.shape == (128, 128)
    assert two_d.ops == fusemax.array("2d").ops  # type: ignore[union-attr]
    assert arch.energy == fusemax.energy


@pytest.mark.parametrize(
    ("files", "message"),
    [
        ({"a.yaml": "base: fusemaks\n"}, "a.yaml: base: no architecture file 'fusemaks'"),
        (
            {"a.yaml": "base: b.yaml\n", "b.yaml": "base: a.yaml\n"},
            "base: a.yaml inherits from itself ({a} -> {b} -> {a})",
        ),
        ({"a.yaml": "base: [fusemax]\n"}, "a.yaml: base: a preset name or a YAML file"),
        # The merged result is checked like any spec.
        (
            {"a.yaml": "base: fusemax\narrays: {2d: {shape: [0, 256]}}\n"},
            "a.yaml: arrays.2d.shape[0]: must be positive, got 0",
        ),
        ({"a.yaml": "base: b.yaml\n", "b.yaml": "name: [\n"}, "b.yaml:2: not valid YAML"),
    ],
)
def test_bad_bases(tmp_path: Path, files: dict[str, str], message: str) -> None:
    for name, text in files.items():
        (tmp_path / name).write_text(text)

    with pytest.raises(SpecError) as error:
        load_architecture(str(tmp_path / "a.yaml"))

    assert message.format(a=tmp_path / "a.yaml", b=tmp_path / "b.yaml") in str(error.value)


def test_register_accesses_per_cycle_are_a_spec_field() -> None:
    """Two reads and a write per busy PE cycle unless the spec says otherwise: three reads
    add one register read (0.653431 pJ) per busy cycle."""
    data = preset_dict()
    default = architecture_from_dict(data, "fusemax.yaml")
    data["arrays"]["2d"]["registers"] = {"reads": 3}
    more = architecture_from_dict(data, "fusemax.yaml")
    two_d = more.array("2d")
    assert two_d is not None and (two_d.register_reads, two_d.register_writes) == (3.0, 1.0)
    cascade = attention_3pass(scale=1.0)
    work = Workload("w", (("M", 1024), ("P", 1024), ("E", 64), ("F", 64)))
    base, changed = evaluate(cascade, default, work), evaluate(cascade, more, work)
    busy_2d = sum(
        count * (two_d.op(kind).cycles)  # type: ignore[union-attr]
        for e in base.einsums
        if e.array == "2d"
        for kind, count in e.ops
    )
    extra = dict(changed.energy)["register"] - dict(base.energy)["register"]
    assert extra == pytest.approx(busy_2d * 0.653431)
    data["arrays"]["2d"]["registers"] = {"read": 3}
    with pytest.raises(SpecError, match=r"arrays\.2d\.registers\.read: unknown field"):
        architecture_from_dict(data, "fusemax.yaml")
