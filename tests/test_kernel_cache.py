"""The kernel cache: cold builds, warm loads from disk, every kind of damaged entry rebuilt (with
a warning) rather than trusted, generated source that does not import, and the cache key."""

from __future__ import annotations

import dataclasses
import inspect
import logging
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from attncc.backends import kernel_cache
from attncc.backends.kernel_cache import KernelCache, cache_key, cache_root
from attncc.config import config
from attncc.errors import LoweringError

SOURCE = '''\
from dataclasses import dataclass


@dataclass(frozen=True)
class Tile:
    rows: int


def scale(x):
    """Doubles x."""
    return 2 * x
'''


class Builder:
    """A `build` callable that counts its calls."""

    def __init__(self, source: str = SOURCE) -> None:
        self.source = source
        self.calls = 0

    def __call__(self) -> str:
        self.calls += 1
        return self.source


def entry_path(root: Path, key: str) -> Path:
    return root / "kernels" / f"{key}.py"


def rewrite(path: Path, edit: Callable[[bytes], bytes]) -> None:
    path.write_bytes(edit(path.read_bytes()))


def test_cold_build_calls_build_once(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    build = Builder()
    key = cache_key(test="cold")
    entry = KernelCache(tmp_path).load(key, build)
    assert (build.calls, entry.rebuilt, entry.key) == (1, True, key)
    assert entry.path == entry_path(tmp_path, key)
    assert entry.module.scale(3) == 6
    assert not caplog.records  # a missing entry is no news
    # No temporary file is left behind, and no __pycache__: the module is run from the bytes
    # that were checked, not through the bytecode cache.
    assert [path.name for path in entry.path.parent.iterdir()] == [f"{key}.py"]


def test_second_instance_loads_from_disk(tmp_path: Path) -> None:
    key = cache_key(test="warm")
    KernelCache(tmp_path).load(key, Builder())
    build = Builder()
    entry = KernelCache(tmp_path).load(key, build)
    assert (build.calls, entry.rebuilt) == (0, False)
    assert entry.module.scale(4) == 8


def test_same_key_twice_returns_the_same_module(tmp_path: Path) -> None:
    cache = KernelCache(tmp_path)
    key = cache_key(test="memo")
    first = cache.load(key, Builder())
    first.path.unlink()  # the second load must not read the file
    build = Builder()
    assert cache.load(key, build).module is first.module
    assert build.calls == 0


@pytest.mark.parametrize(
    "damage",
    [
        pytest.param(lambda data: data.replace(b"2 * x", b"3 * x"), id="body-edited"),
        pytest.param(lambda data: data[:20], id="header-truncated"),
        pytest.param(lambda data: data.split(b"\n", 1)[1], id="header-missing"),
        pytest.param(lambda data: data.replace(b"sha256=", b"sha256=0"), id="header-garbled"),
    ],
)
def test_corrupted_entry_is_rebuilt_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, damage: Callable[[bytes], bytes]
) -> None:
    key = cache_key(test="corrupt")
    path = KernelCache(tmp_path).load(key, Builder()).path
    rewrite(path, damage)
    build = Builder()
    with caplog.at_level(logging.WARNING, logger="attncc"):
        entry = KernelCache(tmp_path).load(key, build)
    assert (build.calls, entry.rebuilt) == (1, True)
    assert entry.module.scale(1) == 2
    assert [r.name for r in caplog.records] == ["attncc"]
    assert "corrupted" in caplog.text and str(path) in caplog.text
    assert KernelCache(tmp_path).load(key, Builder()).rebuilt is False  # repaired on disk


def test_entry_holding_another_keys_file_is_stale(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cache = KernelCache(tmp_path)
    other = cache.load(cache_key(test="other"), Builder("VALUE = 'other'\n"))
    key = cache_key(test="mine")
    entry_path(tmp_path, key).write_bytes(other.path.read_bytes())
    build = Builder("VALUE = 'mine'\n")
    entry = KernelCache(tmp_path).load(key, build)
    assert (build.calls, entry.rebuilt, entry.module.VALUE) == (1, True, "mine")
    assert "stale" in caplog.text and other.key in caplog.text


def test_source_that_does_not_import_raises_lowering_error(tmp_path: Path) -> None:
    key = cache_key(test="broken")
    with pytest.raises(LoweringError) as caught:
        KernelCache(tmp_path).load(key, Builder("def scale(x:\n"))
    message = str(caught.value)
    assert key in message and str(entry_path(tmp_path, key)) in message
    assert "SyntaxError" in message
    assert f"attncc_kernels_{key}" not in sys.modules


def test_cached_entry_that_does_not_import_is_rebuilt(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    key = cache_key(test="rebuild-on-import-error")
    with pytest.raises(LoweringError):
        KernelCache(tmp_path).load(key, Builder("raise RuntimeError('boom')\n"))
    # The checksum vouches for the broken entry left on disk; importing it is what fails.
    build = Builder()
    entry = KernelCache(tmp_path).load(key, build)
    assert (build.calls, entry.rebuilt) == (1, True)
    assert "does not import (RuntimeError: boom)" in caplog.text


def test_cached_function_has_its_source_and_module(tmp_path: Path) -> None:
    key = cache_key(test="inspect")
    KernelCache(tmp_path).load(key, Builder())
    module = KernelCache(tmp_path).load(key, Builder()).module
    assert inspect.getsource(module.scale).startswith("def scale(x):")
    assert inspect.getsourcefile(module.scale) == str(entry_path(tmp_path, key))
    assert sys.modules[module.scale.__module__] is module
    assert dataclasses.is_dataclass(module.Tile(rows=2))


@pytest.mark.cuda_compile
def test_triton_jit_reads_the_cached_kernel(tmp_path: Path) -> None:
    """Triton's JIT (not its interpreter, hence the mark) reads a kernel's source back."""
    source = (
        "import triton\n"
        "import triton.language as tl\n\n\n"
        "@triton.jit\n"
        "def add_one(x_ptr):\n"
        "    tl.store(x_ptr, tl.load(x_ptr) + 1)\n"
    )
    kernel = KernelCache(tmp_path).load(cache_key(test="triton"), Builder(source)).module.add_one
    assert "tl.store(x_ptr, tl.load(x_ptr) + 1)" in kernel.src


def test_cache_key_is_stable_and_sees_every_part() -> None:
    parts: dict[str, object] = {
        "cascade": "9f2c",
        "shape": (("M", 128), ("P", None)),
        "dtypes": ("f16", "f32"),
        "options": frozenset({"causal", "fuse"}),
    }
    key = cache_key(**parts)
    assert key == cache_key(**dict(reversed(parts.items())))
    assert len(key) == 32 and int(key, 16) >= 0
    changed = {
        "cascade": "9f2d",
        "shape": (("M", 64), ("P", None)),
        "dtypes": ("f16", "f16"),
        "options": frozenset({"causal"}),
    }
    for name, value in changed.items():
        assert cache_key(**{**parts, name: value}) != key, name
    assert cache_key(a=1, b=2) != cache_key(a=2, b=1)
    assert len({cache_key(x=1), cache_key(x=1.0), cache_key(x="1"), cache_key(x=True)}) == 4


def test_cache_key_changes_with_the_release(monkeypatch: pytest.MonkeyPatch) -> None:
    key = cache_key(cascade="9f2c")
    monkeypatch.setattr(kernel_cache, "_versions", lambda: (("attncc", "99.0"),))
    assert cache_key(cascade="9f2c") != key


def test_cache_key_does_not_depend_on_the_hash_seed() -> None:
    script = (
        "from attncc.backends.kernel_cache import cache_key\n"
        "names = frozenset({'causal', 'fuse', 'tile', 'mask', 'rope', 'alibi'})\n"
        "print(list(names), cache_key(options=names))\n"
    )
    outputs = [
        subprocess.run(
            [sys.executable, "-c", script],
            env={**os.environ, "PYTHONHASHSEED": seed},
            capture_output=True,
            text=True,
            check=True,
        )
        .stdout.strip()
        .rsplit(" ", 1)
        for seed in ("1", "2")
    ]
    (order_1, key_1), (order_2, key_2) = outputs
    assert order_1 != order_2  # the seeds do reorder the set, so the test shows something
    assert key_1 == key_2


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ([1, 2], "not hashable .*'list'"),
        ((1, {}), "not hashable .*'dict'"),
        (object(), "no stable repr"),
    ],
)
def test_cache_key_rejects_values_without_a_stable_form(value: object, reason: str) -> None:
    with pytest.raises(TypeError, match=rf"'shape'.*{reason}"):
        cache_key(cascade="9f2c", shape=value)


def test_invalid_key_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="letters, digits and underscores"):
        KernelCache(tmp_path).load("../escape", Builder())


@pytest.fixture
def fresh_config() -> Iterator[None]:
    """`config()` reads the environment once; clear it around a test that changes it."""
    config.cache_clear()
    yield
    config.cache_clear()


@pytest.mark.usefixtures("fresh_config")
def test_cache_dir_variable_sets_the_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ATTNCC_CACHE_DIR", str(tmp_path / "cache"))
    assert cache_root() == tmp_path / "cache"
    assert KernelCache().directory == tmp_path / "cache" / "kernels"


@pytest.mark.usefixtures("fresh_config")
def test_xdg_cache_home_is_respected(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ATTNCC_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert cache_root() == tmp_path / "attncc"
