"""The on-disk cache of generated kernel modules (Triton and NumPy source emitted from a cascade).

An entry is one Python file, `<root>/<namespace>/<key>.py`, whose first line records the key
and the sha256 of the rest of the file; the key is `cache_key` of whatever the source depends
on (the cascade's hash, the shape class, the dtypes, the options) plus the attncc and Triton
versions. Modules are run from their real file, because Triton's JIT reads a kernel's source back
with `inspect.getsource`. An entry that is damaged, stale or does not import is rebuilt, never
trusted; only a missing one is rebuilt silently.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import importlib.metadata
import importlib.util
import logging
import os
import re
import sys
import tempfile
import types
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from attncc.config import config
from attncc.errors import LoweringError

log = logging.getLogger("attncc")

# Keys and namespaces become file and module names, so they are kept to [A-Za-z0-9_].
_NAME = re.compile(r"\w+", re.ASCII)
_HEADER = re.compile(rb"# attncc-cache sha256=(?P<sha256>[0-9a-f]{64}) key=(?P<key>\w+)\n")
# The default object repr embeds a memory address, which differs from one process to the next.
_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")
_KEY_HEX_DIGITS = 32


def cache_root() -> Path:
    """Where entries live: ATTNCC_CACHE_DIR, else $XDG_CACHE_HOME/attncc, else ~/.cache/attncc
    (read once per process by `attncc.config`)."""
    return config().cache_dir


def cache_key(**parts: object) -> str:
    """A stable digest of `parts`: equal parts give the same key in every process, and any
    differing part, or a new attncc or Triton release, gives another. Parts must be immutable
    values with a stable repr (scalars, tuples, frozensets, frozen dataclasses, enums, dtypes)."""
    lines = [f"@{tool}={version}" for tool, version in _versions()]
    lines += [f"{name}={_canonical(parts[name], name)}" for name in sorted(parts)]
    digest = hashlib.sha256("\n".join(lines).encode()).hexdigest()
    return digest[:_KEY_HEX_DIGITS]


def source_digest(*modules: types.ModuleType) -> str:
    """A digest of the source files of `modules` (the emitters): a cache key part that changes
    whenever the code that generates a kernel changes, with no version to remember to bump."""
    return _source_digest(tuple(m.__name__ for m in modules))


@functools.cache
def _source_digest(names: tuple[str, ...]) -> str:
    digest = hashlib.sha256()
    for name in names:
        path = sys.modules[name].__file__
        assert path is not None, f"module {name} has a source file"
        digest.update(Path(path).read_bytes())
    return digest.hexdigest()[:_KEY_HEX_DIGITS]


def _canonical(value: object, part: str) -> str:
    """`value` as text that depends only on the value, never on the process: frozensets are
    sorted because their iteration order follows the per-process string hash seed."""
    if value is None or type(value) in (bool, int, float, str, bytes):
        return repr(value)
    try:
        hash(value)
    except TypeError as error:
        raise TypeError(
            f"cache_key part {part!r} is not hashable ({error}); "
            "pass an immutable value (a tuple, frozenset or frozen dataclass)"
        ) from None
    kind = f"{type(value).__module__}.{type(value).__qualname__}"
    if isinstance(value, tuple):
        items = [_canonical(item, part) for item in value]
    elif isinstance(value, frozenset):
        items = sorted(_canonical(item, part) for item in value)
    elif dataclasses.is_dataclass(value) and not isinstance(value, type):
        items = [
            f"{field.name}={_canonical(getattr(value, field.name), part)}"
            for field in dataclasses.fields(value)
        ]
    else:
        text = repr(value)
        if _ADDRESS.search(text):
            raise TypeError(
                f"cache_key part {part!r} ({kind}) has no stable repr: {text}; "
                "pass the values it stands for instead"
            )
        return f"{kind}:{text}"
    return f"{kind}({', '.join(items)})"


@functools.cache
def _versions() -> tuple[tuple[str, str], ...]:
    """The releases whose change must invalidate every entry: attncc's code generator, and
    Triton's language, which the generated kernels are written in."""
    import attncc  # here, not at the top: attncc's own __init__ may be what imports this module

    version = getattr(attncc, "__version__", None)
    if version is None:
        try:
            version = importlib.metadata.version("attncc")
        except importlib.metadata.PackageNotFoundError:
            version = "0"
    versions = [("attncc", str(version))]
    try:
        import triton
    except ImportError:
        pass
    else:
        versions.append(("triton", str(triton.__version__)))
    return tuple(versions)


@dataclass(frozen=True)
class CachedModule:
    """`rebuilt`: whether `build` was called to produce the module (in this process)."""

    key: str
    path: Path
    module: types.ModuleType
    rebuilt: bool


class KernelCache:
    """Entries under `<root>/<namespace>/`, with the modules this instance has loaded kept in
    memory, so that loading a key again returns the same module without reading the file."""

    def __init__(self, root: Path | None = None, namespace: str = "kernels") -> None:
        _check_name("namespace", namespace)
        self.namespace = namespace
        self.directory = (cache_root() if root is None else root) / namespace
        self._loaded: dict[str, CachedModule] = {}

    def load(self, key: str, build: Callable[[], str]) -> CachedModule:
        """The module of entry `key`, from disk when the entry can be trusted, else from the
        source `build()` returns, which is written to the entry first."""
        if key in self._loaded:
            return self._loaded[key]
        _check_name("key", key)
        path = self.directory / f"{key}.py"
        # The key is in the name so that Triton's registry of kernels, keyed by module and
        # function name, never mixes up two kernels.
        name = f"attncc_{self.namespace}_{key}"
        module = _load_entry(path, key, name)
        rebuilt = module is None
        if module is None:
            module = _rebuild_entry(path, key, name, build)
        entry = CachedModule(key=key, path=path, module=module, rebuilt=rebuilt)
        self._loaded[key] = entry
        return entry


def _check_name(what: str, name: str) -> None:
    if not _NAME.fullmatch(name):
        raise ValueError(f"kernel cache {what} {name!r} must be letters, digits and underscores")


def _load_entry(path: Path, key: str, name: str) -> types.ModuleType | None:
    """The module of the entry at `path`, or None when it is missing or cannot be trusted; the
    latter is warned about, since a damaged entry is worth knowing of and a missing one is not."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    problem = _entry_problem(data, key)
    if problem is None:
        try:
            return _execute(name, path, data)
        except Exception as error:
            problem = f"broken: it does not import ({type(error).__name__}: {error})"
    log.warning("kernel cache entry %s is %s; rebuilding it", path, problem)
    return None


def _entry_problem(data: bytes, key: str) -> str | None:
    """Why the entry file `data` cannot be trusted as entry `key`, or None when it can."""
    header = _HEADER.match(data)
    if header is None:
        return "corrupted: its header line is malformed"
    if header["key"].decode() != key:
        return f"stale: its header names key {header['key'].decode()}"
    if hashlib.sha256(data[header.end() :]).hexdigest() != header["sha256"].decode():
        return "corrupted: its checksum does not match its contents"
    return None


def _rebuild_entry(path: Path, key: str, name: str, build: Callable[[], str]) -> types.ModuleType:
    data = _write_entry(path, key, build())
    try:
        return _execute(name, path, data)
    except Exception as error:
        # The entry stays on disk so that the user can read the source the error points at; the
        # next load finds that it does not import and builds it again.
        raise LoweringError(
            f"kernel {key}: the generated module {path} does not import: "
            f"{type(error).__name__}: {error}; this is a bug in attncc's code generator"
        ) from error


def _write_entry(path: Path, key: str, source: str) -> bytes:
    """Write `source` under its header to `path` atomically, and return the bytes written.

    Several processes may build the same key at once: each writes its own temporary file and
    `os.replace` swaps it in whole, so a reader sees the old file or a new one, never a mix, and
    every writer holds the same source, since the key determines it. The fsync before the
    replace keeps a crash from leaving the new name on an empty file; a crash that loses the
    rename leaves the old entry, which the checksum still vouches for or rejects."""
    body = source.encode()
    data = f"# attncc-cache sha256={hashlib.sha256(body).hexdigest()} key={key}\n".encode() + body
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{key}.", suffix=".tmp")
    try:
        with os.fdopen(descriptor, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return data


def _execute(name: str, path: Path, data: bytes) -> types.ModuleType:
    """Run `data`, the verified contents of `path`, as module `name`, registered in sys.modules.

    The module is made from `path`'s spec, so `__file__` and `inspect.getsource` point at the
    real file, but runs the bytes already checked rather than letting the loader read the file
    again: another process could replace it in between, and a `__pycache__` file is validated
    only by the source's size and mtime in whole seconds, so it could run stale code."""
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None, "a path ending in .py always has a spec"
    module = importlib.util.module_from_spec(spec)
    # dont_inherit: this module's `from __future__ import annotations` must not leak into it.
    code = compile(data, str(path), "exec", dont_inherit=True)
    # Registered before running, as an import would be: dataclasses, pickle and Triton's JIT
    # look a function's or class's module up in sys.modules by name.
    previous = sys.modules.get(name)
    sys.modules[name] = module
    try:
        exec(code, module.__dict__)
    except BaseException:
        if previous is None:
            del sys.modules[name]
        else:
            sys.modules[name] = previous
        raise
    return module


@functools.cache
def shared_cache(namespace: str) -> KernelCache:
    """The process's cache for `namespace`, so that its memo spares reloading a kernel module
    on every call."""
    return KernelCache(namespace=namespace)
