"""Renaming tensors, and the canonical form used to compare cascades up to renaming."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace

from attncc.ir.cascade import Cascade
from attncc.ir.einsum import Einsum, map_expressions
from attncc.ir.expr import Access, Expr, replace_accesses


def rename_tensors(cascade: Cascade, names: Mapping[str, str]) -> Cascade:
    """`cascade` with tensors renamed by `names` (the others keep their names)."""

    def access(a: Access) -> Expr:
        return Access(names.get(a.tensor, a.tensor), a.indices)

    def einsum(e: Einsum) -> Einsum:
        renamed = map_expressions(e, lambda x: replace_accesses(x, access))
        return replace(renamed, tensor=names.get(e.tensor, e.tensor))

    return replace(
        cascade,
        inputs=tuple(replace(d, name=names.get(d.name, d.name)) for d in cascade.inputs),
        outputs=tuple(replace(d, name=names.get(d.name, d.name)) for d in cascade.outputs),
        einsums=tuple(einsum(e) for e in cascade.einsums),
        sparse=tuple(replace(s, tensor=names.get(s.tensor, s.tensor)) for s in cascade.sparse),
    )


def canonical(cascade: Cascade) -> Cascade:
    """Temporaries renamed T0, T1, ... in the order they are written, and the cascade named
    `cascade`: two cascades that differ only in those names have equal canonical forms."""
    outputs = set(cascade.output_names())
    temporaries = [e.tensor for e in cascade.einsums if e.tensor not in outputs]
    names = {name: f"T{k}" for k, name in enumerate(temporaries)}
    return replace(rename_tensors(cascade, names), name="cascade")
