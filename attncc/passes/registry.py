"""The registry of passes by name, and pipelines from strings such as
`partition(rank=M,tile=128),running-reduce,defer-div` or a named pipeline (`flash`)."""

from __future__ import annotations

import dataclasses
import functools
import types
import typing

import lark

from attncc.errors import PassError
from attncc.passes.base import CascadePass

PASSES: dict[str, type[CascadePass]] = {}

PIPELINES: dict[str, str] = {
    # Softmax attention to its FlashAttention-2 / FuseMax 1-pass form: defer the division
    # past the AV contraction, tile every softmax rank, then run its max and sums over tiles.
    "flash": "defer-div,partition,running-reduce,dce",
    # The same, then skip the tiles a mask hides entirely (64 queries a tile).
    "flash-sparse": "defer-div,partition,running-reduce,dce,block-sparse",
}

_GRAMMAR = r"""
    pipeline: step ("," step)*
    step: NAME ["(" [option ("," option)*] ")"]
    option: NAME "=" VALUE
    NAME: /[A-Za-z_][A-Za-z0-9_-]*/
    VALUE: /[^,()=\s]+/
    %ignore /\s+/
"""

PassClass = typing.TypeVar("PassClass", bound=type[CascadePass])


def register(cls: PassClass) -> PassClass:
    """Class decorator: make a pass available to pipelines under its `name`."""
    if cls.name in PASSES:
        raise ValueError(f"two passes are named {cls.name!r}")
    PASSES[cls.name] = cls
    return cls


@functools.cache
def _parser() -> lark.Lark:
    return lark.Lark(_GRAMMAR, start="pipeline", parser="lalr")


def parse_pipeline(text: str) -> tuple[CascadePass, ...]:
    """The passes a pipeline string names, with their options, in order."""
    expanded = ",".join(PIPELINES.get(part.strip(), part) for part in _top_level(text))
    try:
        tree = _parser().parse(expanded)
    except lark.exceptions.UnexpectedInput as error:
        raise PassError(
            f"bad pipeline {text!r} at column {error.column}: write passes as "
            "name or name(option=value,...), separated by commas"
        ) from None
    return tuple(_make(step) for step in tree.children if isinstance(step, lark.Tree))


def _top_level(text: str) -> list[str]:
    """Split at commas outside parentheses, so named pipelines can be expanded first."""
    parts, depth, start = [], 0, 0
    for position, char in enumerate(text):
        depth += {"(": 1, ")": -1}.get(char, 0)
        if char == "," and depth == 0:
            parts.append(text[start:position])
            start = position + 1
    parts.append(text[start:])
    return parts


def _make(step: lark.Tree) -> CascadePass:
    name_token, *options = step.children
    name = str(name_token)
    cls = PASSES.get(name)
    if cls is None:
        known = ", ".join(sorted(PASSES)) + "; pipelines: " + ", ".join(sorted(PIPELINES))
        raise PassError(f"unknown pass {name!r}; passes: {known}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    values: dict[str, object] = {}
    for option in (o for o in options if o is not None):
        key, text = (str(t) for t in option.children)
        key = key.replace("-", "_")
        if key not in fields:
            allowed = ", ".join(fields) or "none"
            raise PassError(f"{name} has no option {key!r}; its options: {allowed}")
        values[key] = _convert(name, key, text, hints[key])
    return cls(**values)


def _convert(name: str, key: str, text: str, hint: object) -> object:
    kinds = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
    if text.lower() == "none" and type(None) in kinds:
        return None
    for kind in kinds:
        if kind is bool and text.lower() in ("true", "false"):
            return text.lower() == "true"
        if kind is int and text.lstrip("-").isdigit():
            return int(text)
        if kind is str:
            return text
    wanted = " or ".join(getattr(k, "__name__", str(k)) for k in kinds)
    raise PassError(f"{name}({key}={text}): expected {wanted}")
