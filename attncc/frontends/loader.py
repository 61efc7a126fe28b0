"""Finding a cascade by the name a user typed: a library cascade or a `.ein` file."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from attncc.errors import AttnccError
from attncc.frontends.library import LIBRARY
from attncc.frontends.zoo import ZOO
from attncc.ir import Cascade, parse_file, verify


def load(source: str, options: Mapping[str, object] | None = None) -> Cascade:
    """The verified cascade `source` names: a library name (with keyword `options`) or a path."""
    named = {**LIBRARY, **ZOO}
    if source in named:
        try:
            cascade = named[source](**(options or {}))
        except (TypeError, ValueError) as error:
            raise AttnccError(f"bad option for library cascade {source}: {error}") from None
    elif Path(source).exists():
        if options:
            raise AttnccError(f"options ({', '.join(options)}) apply to library cascades only")
        cascade = parse_file(source)
    else:
        names = ", ".join(named)
        raise AttnccError(f"no file and no library cascade named {source!r}; library: {names}")
    verify(cascade)
    return cascade
