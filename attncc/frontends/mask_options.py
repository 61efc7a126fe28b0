"""Library masks from text options, as the `attncc masks` command takes them.

`-O kernel=7x7 -O causal=true` become keyword arguments of a mask function of
`attncc.frontends.masks` (tuples for per-axis values, lists of pairs for block lists);
`--shape` gives a grid or a length to masks that take one; data masks get made-up tensors
(`DATA_OPTIONS`): packed documents, or a random block table.
"""

from __future__ import annotations

import inspect
import math
import typing
from collections.abc import Mapping, Sequence

import numpy as np

from attncc.errors import AttnccError
from attncc.frontends.masks import MASKS
from attncc.frontends.options import key_values, option_value
from attncc.ir import Expr

DEFAULT_MASK_LENGTH = 1024
DATA_OPTIONS: dict[str, dict[str, object]] = {
    "document": {"docs": 4},
    "block_table": {"seed": 0, "keep": 0.3},
}
"""Options of the data the CLI makes up for data masks (not options of the mask functions)."""


def positive_ints(text: str, what: str, example: str) -> tuple[int, ...]:
    """`64`, `64x64` or `8x32x32` as a tuple of positive integers."""
    parts = [part.strip() for part in text.lower().split("x")]
    if not all(part.isascii() and part.isdigit() and int(part) > 0 for part in parts):
        raise AttnccError(f"{what} {text}: expected positive integers joined by x, e.g. {example}")
    return tuple(int(part) for part in parts)


def _mask_value(text: str) -> object:
    """A mask option value: `0:1,2:2` a list of pairs, `7x7`, `3,3` or `true,false` a tuple
    (one value per axis), anything else as a library option value."""
    if ":" in text:
        pairs = []
        for item in text.split(","):
            first, _, second = (part.strip() for part in item.partition(":"))
            try:
                pairs.append((int(first), int(second)))
            except ValueError:
                raise AttnccError(
                    f"bad pair {item!r} in {text!r}: expected QUERY_BLOCK:KEY_BLOCK, e.g. 0:1,2:2"
                ) from None
        return pairs
    parts = text.split("x")
    if len(parts) == 1 or not all(part.strip().isdigit() for part in parts):
        parts = text.split(",")
    if len(parts) > 1:
        return tuple(option_value(part.strip()) for part in parts)
    return option_value(text)


def parse_mask_options(items: Sequence[str]) -> dict[str, object]:
    """`-O kernel=7x7 -O causal=true` as keyword options for a mask of the mask library."""
    return {key: _mask_value(text) for key, text in key_values(items, "-O").items()}


def _grid_rank(function: typing.Callable[..., Expr]) -> int | None:
    """How many axes a mask's `shape` has, from its annotation (`tuple[int, int]`: 2)."""
    try:
        hint = typing.get_type_hints(function).get("shape")
    except (NameError, TypeError):
        return None
    return len(typing.get_args(hint)) or None


def _shape_arguments(name: str, shape: tuple[int, ...] | None) -> dict[str, object]:
    """`shape` (a grid) or `length` (a sequence) for a mask that takes one, from --shape."""
    function = MASKS[name]
    parameters = inspect.signature(function).parameters
    if "shape" in parameters:
        rank = _grid_rank(function)
        if shape is None or (rank is not None and len(shape) != rank):
            example = "8x32x32" if rank == 3 else "64x64"
            got = f", got {'x'.join(map(str, shape))}" if shape else ""
            raise AttnccError(
                f"mask {name} lays tokens on a {rank or 'multi'}-D grid: give --shape, e.g. "
                f"--shape {example}{got}"
            )
        return {"shape": shape}
    if "length" in parameters:
        if shape is not None and len(shape) != 1:
            raise AttnccError(f"mask {name} works on a sequence: give --shape LENGTH, e.g. 4096")
        return {"length": shape[0] if shape else DEFAULT_MASK_LENGTH}
    return {}


def build_mask(
    name: str, options: Mapping[str, object], shape: tuple[int, ...] | None
) -> tuple[Expr, dict[str, np.ndarray], tuple[int, ...]]:
    """The predicate of library mask `name`, the tensors it reads and the shape it covers."""
    if name not in MASKS:
        raise AttnccError(f"unknown mask {name!r}; the masks are {', '.join(MASKS)}")
    function = MASKS[name]
    parameters = inspect.signature(function).parameters
    data_options = DATA_OPTIONS.get(name, {})
    settings = {**data_options, **{k: v for k, v in options.items() if k in data_options}}
    kwargs = {k: v for k, v in options.items() if k not in data_options}
    for given in ("shape", "length"):
        if given in kwargs:
            raise AttnccError(f"{name}: give the {given} with --shape, not with -O {given}=...")
    accepted = [p for p in parameters if p not in ("shape", "length")] + list(data_options)
    unknown = sorted(set(kwargs) - set(parameters))
    if unknown:
        takes = f"its options are {', '.join(accepted)}" if accepted else "it takes no options"
        raise AttnccError(f"mask {name} has no option {', '.join(unknown)}; {takes}")
    kwargs.update(_shape_arguments(name, shape))
    shape = shape or (DEFAULT_MASK_LENGTH,)
    missing = [p.name for p in parameters.values() if p.default is p.empty and p.name not in kwargs]
    if missing:
        raise AttnccError(f"mask {name} needs {' '.join(f'-O {m}=...' for m in missing)}")
    try:
        predicate = function(**kwargs)
    except (TypeError, ValueError) as error:
        reason = str(error).removeprefix(f"{name}: ")
        raise AttnccError(f"bad option for mask {name}: {reason}") from None
    arguments = inspect.signature(function).bind(**kwargs)
    arguments.apply_defaults()
    return predicate, _mask_data(name, arguments.arguments, settings, math.prod(shape)), shape


def _mask_data(
    name: str, arguments: Mapping[str, object], settings: Mapping[str, object], n: int
) -> dict[str, np.ndarray]:
    """Made-up tensors for a data mask over n positions (see MASKS_EPILOG)."""

    def number(key: str, low: int, high: int, integer: bool = True) -> float:
        value = settings[key]
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or (integer and not isinstance(value, int))
            or not low <= value <= high
        ):
            kind = "an integer" if integer else "a number"
            raise AttnccError(
                f"bad option for mask {name}: {key} must be {kind} in [{low}, {high}]"
            )
        return value

    if name == "document":
        docs = int(number("docs", 1, n))
        ids = np.arange(n, dtype=np.int64) * docs // n
        return {str(arguments["key_ids"]): ids, str(arguments["query_ids"]): ids}
    if name == "block_table":
        rng = np.random.default_rng(int(number("seed", 0, 2**63 - 1)))
        blocks = -(-n // typing.cast(int, arguments["block"]))
        table = rng.random((blocks, blocks)) < number("keep", 0, 1, integer=False)
        return {str(arguments["tensor"]): table.astype(np.int8)}
    return {}
