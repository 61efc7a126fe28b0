"""Rewrites Cascade -> Cascade, registered by name and composed from pipeline strings.

Importing this package registers every pass (each module registers its own).
"""

from attncc.passes import (
    block_sparse,
    canonicalize,
    chunk_causal,
    dce,
    defer_div,
    fuse,
    partition,
    reassociate,
    reorder,
    running_reduce,
)
from attncc.passes.base import CascadePass, PassResult
from attncc.passes.manager import PassManager, PassRecord, run_pipeline
from attncc.passes.registry import PASSES, PIPELINES, parse_pipeline

__all__ = [
    "PASSES",
    "PIPELINES",
    "CascadePass",
    "PassManager",
    "PassRecord",
    "PassResult",
    "block_sparse",
    "canonicalize",
    "chunk_causal",
    "dce",
    "defer_div",
    "fuse",
    "parse_pipeline",
    "partition",
    "reassociate",
    "reorder",
    "run_pipeline",
    "running_reduce",
]
