"""`attncc masks`: a library mask's tile classes as text and as a PNG, through `main(argv)`."""

from __future__ import annotations

from pathlib import Path

import pytest

from attncc.analysis.sparsity import classify_tiles
from attncc.analysis.tile_map import TileClass
from attncc.cli import main
from attncc.frontends import masks as mk
from attncc.frontends.mask_options import parse_mask_options


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    status = main(["masks", *argv])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def test_causal_picture(capsys: pytest.CaptureFixture[str]) -> None:
    status, out, err = run(capsys, "causal", "--shape", "256", "--tile", "64")

    assert status == 0, err
    assert out == (
        "4x4 tiles of 64x64: 6 full, 4 partial, 6 empty, density 0.6250\n"
        "░░\n"
        "██░░\n"
        "████░░\n"
        "██████░░\n"
    )


def test_neighborhood_2d_matches_classify_tiles(capsys: pytest.CaptureFixture[str]) -> None:
    status, out, err = run(
        capsys, "neighborhood_2d", "--shape", "16x16", "--tile", "32", "-O", "kernel=3x5"
    )

    assert status == 0, err
    expected = classify_tiles(
        mk.neighborhood_2d((16, 16), (3, 5)), key_len=256, query_len=256, key_tile=32, query_tile=32
    )
    header, *rows = out.splitlines()
    counts = (expected.count(TileClass.FULL), expected.count(TileClass.PARTIAL))
    assert header.startswith("8x8 tiles of 32x32: ")
    assert f"{counts[0]} full, {counts[1]} partial" in header
    assert f"{expected.count(TileClass.EMPTY)} empty, density {expected.density:.4f}" in header
    assert len(rows) == 8 and out == expected.to_string() + "\n"


def test_rectangular_tiles_and_max_tiles(capsys: pytest.CaptureFixture[str]) -> None:
    status, out, _ = run(
        capsys, "sliding_window", "--shape", "1024", "--tile", "16x64", "-O", "window=100"
    )
    assert status == 0 and out.startswith("64x16 tiles of 16x64: ")

    status, out, _ = run(capsys, "causal", "--shape", "1024", "--tile", "16", "--max-tiles", "16")
    assert status == 0
    assert "(1 character pair = 4x4 tiles)" in out and len(out.splitlines()) == 1 + 16


def test_data_masks_get_made_up_tensors(capsys: pytest.CaptureFixture[str]) -> None:
    status, out, _ = run(capsys, "document", "--shape", "256", "-O", "docs=4")
    assert status == 0 and out.startswith("4x4 tiles of 64x64: 4 full, 0 partial, 12 empty")

    status, out, _ = run(capsys, "block_table", "--shape", "256", "-O", "block=64", "-O", "keep=1")
    assert status == 0 and out.startswith("4x4 tiles of 64x64: 16 full, 0 partial, 0 empty")


def test_png(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    from matplotlib.image import imread

    path = tmp_path / "na.png"
    status, _, err = run(
        capsys, "neighborhood_2d", "--shape", "16x16", "-O", "kernel=3", "--tile", "16",
        "--png", str(path),
    )  # fmt: skip

    assert status == 0, err
    assert str(path) in err
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    pixels = imread(path)
    assert pixels.ndim == 3 and pixels.shape[0] > 0 and pixels.shape[1] > 0


def test_mask_option_values() -> None:
    assert parse_mask_options(
        ["kernel=7x7", "dilation=2,3", "causal=true,false", "pairs=0:1, 2:2", "window=5"]
    ) == {
        "kernel": (7, 7),
        "dilation": (2, 3),
        "causal": (True, False),
        "pairs": [(0, 1), (2, 2)],
        "window": 5,
    }


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["nope"], "unknown mask 'nope'; the masks are causal, sliding_window"),
        (["sliding_window", "-O", "window=0"], "window must be a positive integer, got 0"),
        (["sliding_window"], "mask sliding_window needs -O window=..."),
        (["causal", "-O", "window=3"], "mask causal has no option window"),
        (["neighborhood_2d", "-O", "kernel=3"], "2-D grid: give --shape, e.g. --shape 64x64"),
        (["neighborhood_3d", "--shape", "8x8", "-O", "kernel=3"], "3-D grid"),
        (["neighborhood_1d", "--shape", "8x8", "-O", "kernel=3"], "works on a sequence"),
        (["causal", "--shape", "64xq"], "--shape 64xq: expected positive integers"),
        (["causal", "--tile", "0"], "--tile 0: expected positive integers"),
        (["block_list", "-O", "block=4", "-O", "pairs=0:a"], "bad pair '0:a'"),
        (["block_table", "-O", "block=4", "-O", "keep=2"], "keep must be a number in [0, 1]"),
    ],
)
def test_errors(capsys: pytest.CaptureFixture[str], argv: list[str], message: str) -> None:
    status, out, err = run(capsys, *argv)

    assert status != 0 and out == ""
    assert err.startswith("error: ") and message in err
    assert "Traceback" not in err


def test_unwritable_png(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    path = tmp_path / "no such directory" / "mask.png"

    status, _, err = run(capsys, "causal", "--shape", "256", "--png", str(path))

    assert status != 0
    assert err == f"error: cannot write {path}: No such file or directory\n"
    assert not path.exists()


def test_masks_help_lists_masks_and_data_options(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["masks", "--help"])

    out = capsys.readouterr().out
    assert exit_info.value.code == 0
    assert all(name in out for name in mk.MASKS)
    assert "-O docs=4" in out and "-O seed=0 -O keep=0.3" in out
    assert all(flag in out for flag in ("--shape", "--tile", "--png", "--max-tiles"))


def test_readme_shows_the_real_masks_output(capsys: pytest.CaptureFixture[str]) -> None:
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    command = "$ .venv/bin/attncc masks neighborhood_2d --shape 32x32 -O kernel=7 --tile 64\n"
    shown = readme.split(command, 1)[1].split("```", 1)[0]

    status, out, err = run(
        capsys, "neighborhood_2d", "--shape", "32x32", "-O", "kernel=7", "--tile", "64"
    )

    assert status == 0, err
    assert out == shown
