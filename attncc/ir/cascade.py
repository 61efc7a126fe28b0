"""Ranks, tensor declarations and the Cascade that holds an ordered list of Einsums.

A cascade declares its ranks (sizes as sympy expressions, symbolic or concrete), its
partitions (`M -> M1, M0`: m = m1*M0 + m0 and M1 = ceil(M/M0)), its input and output tensors;
temporaries are declared by the Einsum that writes them. Everything is an immutable value:
two cascades are equal when they state the same computation, wherever they came from.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

import sympy

from attncc.errors import SourceSpan
from attncc.ir.einsum import Einsum
from attncc.ir.indexing import format_index, index_name, index_symbol, index_vars, size_symbol


class DType(enum.Enum):
    F16 = "f16"
    BF16 = "bf16"
    F32 = "f32"
    F64 = "f64"
    I32 = "i32"
    I64 = "i64"
    BOOL = "bool"

    @property
    def is_float(self) -> bool:
        return self in (DType.F16, DType.BF16, DType.F32, DType.F64)


class Role(enum.Enum):
    INPUT = "input"
    OUTPUT = "output"
    TEMP = "temp"


@dataclass(frozen=True)
class Rank:
    """A named dimension; `size` is an integer or an expression in other ranks' sizes."""

    name: str
    size: sympy.Expr
    span: SourceSpan | None = field(default=None, compare=False, repr=False)

    @property
    def index(self) -> str:
        return index_name(self.name)


@dataclass(frozen=True)
class Partition:
    """`rank -> outer, inner`: coordinate r = outer*INNER + inner, with OUTER = ceil(R/INNER)."""

    rank: str
    outer: str
    inner: str
    span: SourceSpan | None = field(default=None, compare=False, repr=False)

    def outer_size(self) -> sympy.Expr:
        return sympy.ceiling(size_symbol(self.rank) / size_symbol(self.inner))

    def recombined(self) -> sympy.Expr:
        """The parent coordinate as an index expression: `m1*M0 + m0`."""
        outer, inner = index_symbol(index_name(self.outer)), index_symbol(index_name(self.inner))
        return outer * size_symbol(self.inner) + inner


@dataclass(frozen=True)
class BlockSparse:
    """`sparse S[m1, p // 64]`: tiles of key tile `m1` by `query_tile` queries where the mask
    of S (its filter) is false everywhere are skipped by every Einsum that iterates over both
    `key_tiles` and `query`: reductions leave them out and running updates keep their value.
    The `block-sparse` pass adds it after proving that skipping changes no result."""

    tensor: str
    key_tiles: str
    query: str
    query_tile: sympy.Expr
    span: SourceSpan | None = field(default=None, compare=False, repr=False)

    @property
    def key_tile_index(self) -> str:
        return index_name(self.key_tiles)

    @property
    def query_index(self) -> str:
        return index_name(self.query)


@dataclass(frozen=True)
class TensorDecl:
    """A tensor's ordered ranks (its layout), element type and role.

    Temporaries have `dtype` None: they are held in the accumulation type the backend uses.
    """

    name: str
    ranks: tuple[str, ...]
    dtype: DType | None
    role: Role
    span: SourceSpan | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True)
class Cascade:
    name: str
    ranks: tuple[Rank, ...]
    partitions: tuple[Partition, ...]
    inputs: tuple[TensorDecl, ...]
    outputs: tuple[TensorDecl, ...]
    einsums: tuple[Einsum, ...]
    sparse: tuple[BlockSparse, ...] = ()

    def all_ranks(self) -> tuple[Rank, ...]:
        """Declared ranks followed by the outer ranks the partitions introduce."""
        return self.ranks + tuple(Rank(p.outer, p.outer_size()) for p in self.partitions)

    def rank(self, name: str) -> Rank | None:
        return next((r for r in self.all_ranks() if r.name == name), None)

    def rank_of_index(self, index: str) -> Rank | None:
        """The rank whose index variable is `index` (`m1` -> M1)."""
        return next((r for r in self.all_ranks() if r.index == index), None)

    def writer(self, tensor: str) -> Einsum | None:
        return next((e for e in self.einsums if e.tensor == tensor), None)

    def declaration(self, tensor: str) -> TensorDecl | None:
        """The declaration of an input or output, or the implied one of a temporary."""
        for decl in self.inputs + self.outputs:
            if decl.name == tensor:
                return decl
        einsum = self.writer(tensor)
        if einsum is None:
            return None
        ranks = tuple(self.written_rank(index) for index in einsum.indices)
        return TensorDecl(tensor, ranks, None, Role.TEMP, einsum.span)

    def written_rank(self, index: sympy.Expr) -> str:
        """The rank a left-side index (`m` or `m1 + 1`) writes; its text if it names none."""
        variables = index_vars(index)
        rank = self.rank_of_index(next(iter(variables))) if len(variables) == 1 else None
        return rank.name if rank else format_index(index)

    def input_names(self) -> tuple[str, ...]:
        return tuple(d.name for d in self.inputs)

    def output_names(self) -> tuple[str, ...]:
        return tuple(d.name for d in self.outputs)
