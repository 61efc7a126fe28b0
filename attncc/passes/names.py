"""Fresh tensor names for passes that create Einsums."""

from __future__ import annotations

from attncc.ir import Cascade


def taken_names(cascade: Cascade) -> set[str]:
    return {*cascade.input_names(), *cascade.output_names(), *(e.tensor for e in cascade.einsums)}


def fresh_name(base: str, taken: set[str]) -> str:
    """`base`, or `base2`, `base3`, ... whichever is free; the name is added to `taken`."""
    name, suffix = base, 2
    while name in taken:
        name, suffix = f"{base}{suffix}", suffix + 1
    taken.add(name)
    return name
