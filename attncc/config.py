"""Runtime configuration: the only module that reads environment variables.

Settings are read once into a frozen `Config`; code that needs one calls `config()` rather than
looking at `os.environ`, so every knob is listed here with its type and default.
"""

from __future__ import annotations

import functools
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from attncc.errors import AttnccError

_LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


@dataclass(frozen=True)
class Config:
    """`cache_dir`: where compiled kernels are kept (ATTNCC_CACHE_DIR, default ~/.cache/attncc).
    `log_level`: level of the `attncc` logger (ATTNCC_LOG_LEVEL, default WARNING)."""

    cache_dir: Path
    log_level: str


def _read_log_level(value: str) -> str:
    level = value.upper()
    if level not in _LOG_LEVELS:
        raise AttnccError(f"ATTNCC_LOG_LEVEL={value!r} is not one of {', '.join(_LOG_LEVELS)}")
    return level


@functools.cache
def config() -> Config:
    default_cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "attncc"
    return Config(
        cache_dir=Path(os.environ.get("ATTNCC_CACHE_DIR", default_cache)),
        log_level=_read_log_level(os.environ.get("ATTNCC_LOG_LEVEL", "WARNING")),
    )


def use_triton_interpreter() -> bool:
    """Make Triton run kernels in its interpreter, on the CPU (for machines without a GPU).
    Triton reads TRITON_INTERPRET once, when it is imported: returns whether that is still
    ahead, i.e. whether the request takes effect."""
    if "triton" in sys.modules:
        return os.environ.get("TRITON_INTERPRET") == "1"
    os.environ["TRITON_INTERPRET"] = "1"
    return True
