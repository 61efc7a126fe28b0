"""attncc: a compiler for attention stated as a cascade of extended Einsums.

The public entry points; the packages hold the rest (`attncc.ir` for the IR and its text form,
`attncc.frontends` for the builder and the library, `attncc.backends` for execution).
"""

from attncc.backends.numpy.reference import interpret
from attncc.errors import AttnccError
from attncc.frontends.library import LIBRARY
from attncc.frontends.loader import load
from attncc.ir import Cascade, parse, parse_file, print_cascade, verify

__all__ = [
    "LIBRARY",
    "AttnccError",
    "Cascade",
    "interpret",
    "load",
    "parse",
    "parse_file",
    "print_cascade",
    "verify",
]
