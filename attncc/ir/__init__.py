"""The cascade IR: ranks, tensors, Einsums and cascades; their verifier and their text form.

Other packages import from here, not from the private modules, so the IR can be reorganized
without touching its users.
"""

from attncc.ir.cascade import (
    BlockSparse,
    Cascade,
    DType,
    Partition,
    Rank,
    Role,
    TensorDecl,
)
from attncc.ir.einsum import Einsum, Filter, ReduceOp, iteration_successor, map_expressions
from attncc.ir.expr import (
    OPS,
    Access,
    Call,
    Const,
    Coord,
    Expr,
    OpInfo,
    Size,
    as_index,
    index_value,
    indices_used,
    product,
    product_factors,
    replace_accesses,
    substitute,
    tensors_read,
    walk,
)
from attncc.ir.graph import Step, dependency_graph, execution_order
from attncc.ir.indexing import (
    evaluate_index,
    evaluate_size,
    format_index,
    index_name,
    index_symbol,
    index_vars,
    is_quasi_affine,
    size_symbol,
)
from attncc.ir.parser import parse, parse_file
from attncc.ir.printer import format_einsum, format_expr, print_cascade
from attncc.ir.rename import canonical, rename_tensors
from attncc.ir.sizes import bind_sizes
from attncc.ir.verifier import diagnose, verify

__all__ = [
    "OPS",
    "Access",
    "BlockSparse",
    "Call",
    "Cascade",
    "Const",
    "Coord",
    "DType",
    "Einsum",
    "Expr",
    "Filter",
    "OpInfo",
    "Partition",
    "Rank",
    "ReduceOp",
    "Role",
    "Size",
    "Step",
    "TensorDecl",
    "as_index",
    "bind_sizes",
    "canonical",
    "dependency_graph",
    "diagnose",
    "evaluate_index",
    "evaluate_size",
    "execution_order",
    "format_einsum",
    "format_expr",
    "format_index",
    "index_name",
    "index_symbol",
    "index_value",
    "index_vars",
    "indices_used",
    "is_quasi_affine",
    "iteration_successor",
    "map_expressions",
    "parse",
    "parse_file",
    "print_cascade",
    "product",
    "product_factors",
    "rename_tensors",
    "replace_accesses",
    "size_symbol",
    "substitute",
    "tensors_read",
    "verify",
    "walk",
]
