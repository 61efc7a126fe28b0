"""Options written as text (`-O causal=true`, `--shapes E=64`), as Python values."""

from __future__ import annotations

from collections.abc import Sequence

from attncc.errors import AttnccError


def option_value(text: str) -> object:
    """`true`, `none`, `7`, `0.5` or any other text, as bool, None, int, float or str."""
    lowered = text.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    if lowered == "none":
        return None
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def key_values(items: Sequence[str], what: str) -> dict[str, str]:
    """`NAME=VALUE` items as a dict; `what` names the option in errors."""
    pairs = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key.strip() or not text.strip():
            raise AttnccError(f"bad {what} entry {item!r}: expected NAME=VALUE")
        pairs[key.strip()] = text.strip()
    return pairs
