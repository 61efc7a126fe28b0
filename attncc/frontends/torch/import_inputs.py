"""What `attncc import` runs: the module a factory in a Python file builds, and example inputs
for its forward.

`load_factory` imports the file by path (its directory first on sys.path, so it can import its
neighbours; registered in sys.modules under a name unique to its path) and calls the factory:
a callable returning an nn.Module, or an nn.Module class.
`parse_input_shapes` reads `--shapes`, which names forward's parameters
(`x=2x16x64,bias=2x1x1x16`, `ids=2x16:int1000` for token ids, `keep=2x16:bool`);
`example_inputs` draws seeded random tensors for them. Errors name the file and the line of
the user's code that failed, and say how to fix the command.
"""

from __future__ import annotations

import hashlib
import importlib.util
import inspect
import re
import sys
import traceback
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch

from attncc.errors import AttnccError

DTYPES = {"f32": torch.float32, "f64": torch.float64}


@dataclass(frozen=True)
class FactoryRef:
    """`path:name` of a factory in a Python file."""

    path: Path
    name: str

    def __str__(self) -> str:
        return f"{self.path}:{self.name}"


def parse_factory(text: str) -> FactoryRef:
    path, sep, name = text.rpartition(":")
    if not sep or not path or not name.isidentifier():
        raise AttnccError(
            f"{text!r}: give FILE.py:FACTORY, e.g. examples/torch_models.py:sdpa_attention "
            "(FACTORY returns an nn.Module, or is an nn.Module class)"
        )
    return FactoryRef(Path(path), name)


def load_factory(ref: FactoryRef) -> torch.nn.Module:
    """Import `ref.path` by path and build its module; errors name the file and line."""
    if not ref.path.is_file():
        raise AttnccError(f"{ref.path}: no such file")
    path = ref.path.resolve()
    spec = importlib.util.spec_from_file_location(module_name(path), path)
    if spec is None or spec.loader is None:
        raise AttnccError(f"{ref.path}: not a Python file that can be imported")
    source = importlib.util.module_from_spec(spec)
    # Registered as a module, as an import would (dataclasses and pickling look classes up
    # there), under a name unique to the path; the file's own directory comes first on
    # sys.path while it runs, so it can import its neighbours.
    sys.modules[spec.name] = source
    directory = str(path.parent)
    sys.path.insert(0, directory)
    try:
        spec.loader.exec_module(source)
    except Exception as error:
        del sys.modules[spec.name]
        raise AttnccError(f"{ref.path}: importing it failed: {located(error, ref.path)}") from None
    finally:
        # The file may have changed sys.path itself: remove our entry, not whatever is first.
        if directory in sys.path:
            sys.path.remove(directory)
    factory = getattr(source, ref.name, None)
    if factory is None:
        found = sorted(n for n, v in vars(source).items() if _is_factory(v) and n[:1] != "_")
        raise AttnccError(
            f"{ref.path} has no {ref.name!r}; its factories and module classes: "
            f"{', '.join(found) or 'none'}"
        )
    if not callable(factory):
        raise AttnccError(f"{ref}: {type(factory).__name__} is not callable")
    try:
        module = factory()
    except Exception as error:
        raise AttnccError(f"{ref}() raised {located(error, ref.path)}") from None
    if not isinstance(module, torch.nn.Module):
        raise AttnccError(f"{ref}() returned {type(module).__name__}, not a torch.nn.Module")
    return module


def module_name(path: Path) -> str:
    """The name a model file is registered under in sys.modules: its stem for the reader,
    and a digest of its resolved path, so two files named model.py never share a module."""
    digest = hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:12]
    stem = re.sub(r"\W", "_", path.stem)
    return f"attncc_import_{stem}_{digest}"


def _is_factory(value: object) -> bool:
    if inspect.isclass(value):
        return issubclass(value, torch.nn.Module)
    return inspect.isfunction(value)


def located(error: BaseException, path: Path) -> str:
    """`Type: message (file, line N)`, at the innermost frame in the user's file."""
    line = None
    if isinstance(error, SyntaxError) and error.lineno is not None:
        line = error.lineno
    for frame in traceback.extract_tb(error.__traceback__):
        if Path(frame.filename).resolve() == path.resolve():
            line = frame.lineno
    text = error.msg if isinstance(error, SyntaxError) else str(error)
    message = text.strip().splitlines()[0] if text.strip() else ""
    where = f" ({path}, line {line})" if line is not None else ""
    return f"{type(error).__name__}: {message}{where}"


@dataclass(frozen=True)
class InputSpec:
    """A forward parameter's example input: its shape, and random floats (standard normal, in
    the run's dtype), integers in [0, `high`) (token ids), or booleans."""

    shape: tuple[int, ...]
    kind: str = "float"
    high: int | None = None

    def sample(self, generator: torch.Generator, dtype: torch.dtype) -> torch.Tensor:
        if self.kind == "int":
            assert self.high is not None
            return torch.randint(0, self.high, self.shape, generator=generator)
        if self.kind == "bool":
            return torch.rand(self.shape, generator=generator) < 0.5
        return torch.randn(self.shape, generator=generator, dtype=dtype)


_SHAPES_HELP = (
    "give NAME=DIMSxDIMS for each parameter of forward, e.g. x=2x16x64,bias=2x1x1x16 "
    "(positive sizes), with :intN for integers below N (ids=2x16:int1000) or :bool"
)


def parse_input_shapes(text: str) -> dict[str, InputSpec]:
    """`x=2x16x64,ids=2x16:int1000,keep=2x16:bool` as {name: InputSpec}."""
    shapes: dict[str, InputSpec] = {}
    for item in (t.strip() for t in text.split(",")):
        name, sep, rest = item.partition("=")
        name = name.strip()
        dims, _, kind = rest.strip().partition(":")
        sizes = dims.split("x")
        high = kind[3:] if kind.startswith("int") else ""
        valid_kind = kind in ("", "bool") or (high.isdigit() and int(high) > 0)
        positive = all(s.isdigit() and int(s) > 0 for s in sizes)
        if not (sep and name.isidentifier() and valid_kind and positive):
            raise AttnccError(f"--shapes {item!r}: {_SHAPES_HELP}")
        if name in shapes:
            raise AttnccError(f"--shapes: {name} is given twice")
        shape = tuple(int(s) for s in sizes)
        if kind == "bool":
            shapes[name] = InputSpec(shape, "bool")
        else:
            shapes[name] = InputSpec(shape, "int", int(high)) if high else InputSpec(shape)
    return shapes


def example_inputs(
    module: torch.nn.Module, shapes: Mapping[str, InputSpec], dtype: str, seed: int
) -> dict[str, torch.Tensor]:
    """Seeded random inputs for forward's parameters, in their order (see InputSpec)."""
    parameters = list(inspect.signature(module.forward).parameters.values())
    named = [p for p in parameters if p.kind in (p.POSITIONAL_OR_KEYWORD, p.POSITIONAL_ONLY)]
    if any(p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) for p in parameters):
        raise AttnccError(
            f"{type(module).__name__}.forward takes *args or **kwargs; attncc import needs "
            "named parameters to give shapes to"
        )
    names = [p.name for p in named]
    unknown = sorted(set(shapes) - set(names))
    if unknown:
        raise AttnccError(
            f"--shapes names {', '.join(unknown)}, but {type(module).__name__}.forward takes "
            f"({', '.join(names)})"
        )
    missing = [p.name for p in named if p.name not in shapes and p.default is p.empty]
    if missing:
        raise AttnccError(
            f"--shapes gives no shape for {', '.join(missing)} of "
            f"{type(module).__name__}.forward({', '.join(names)}): give NAME=DIMSxDIMS for "
            "every parameter without a default"
        )
    given = [n for n in names if n in shapes]
    if given != names[: len(given)]:
        skipped = [n for n in names[: len(given)] if n not in shapes]
        raise AttnccError(
            f"--shapes skips {', '.join(skipped)} of {type(module).__name__}.forward"
            f"({', '.join(names)}): inputs are passed in order, so give a shape to every "
            "parameter before the last one given"
        )
    generator = torch.Generator().manual_seed(seed)
    return {name: shapes[name].sample(generator, DTYPES[dtype]) for name in given}


def shapes_text(inputs: Mapping[str, torch.Tensor]) -> str:
    """`x: 2x16x64, ids: 2x16`: the inputs' shapes, for messages and headers."""
    return ", ".join(f"{n}: {'x'.join(map(str, t.shape))}" for n, t in inputs.items())
