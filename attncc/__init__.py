"""attncc: a compiler for attention stated as a cascade of extended Einsums.

The public entry points; the packages hold the rest (`attncc.ir` for the IR and its text form,
`attncc.frontends` for the builder and the library, `attncc.backends` for execution).
`backend` and `explain` (the torch.compile integration) load torch on first use.
"""

from typing import Any

from attncc.backends.numpy.reference import interpret
from attncc.errors import AttnccError
from attncc.frontends.library import LIBRARY
from attncc.frontends.loader import load
from attncc.ir import Cascade, parse, parse_file, print_cascade, verify

__all__ = [
    "LIBRARY",
    "AttnccError",
    "Cascade",
    "backend",
    "explain",
    "interpret",
    "load",
    "parse",
    "parse_file",
    "print_cascade",
    "verify",
]


def __getattr__(name: str) -> Any:
    # torch takes seconds to import; the IR and the CLI do not need it.
    if name == "backend":
        from attncc.frontends.torch.backend import backend

        return backend
    if name == "explain":
        from attncc.frontends.torch.explain import explain

        return explain
    raise AttributeError(f"module 'attncc' has no attribute {name!r}")
