"""The mask core both PyTorch frontends share (`position_masks`): masks stated as expressions of
their coordinates are read as predicates over m and p, and `rows_without_keys` finds query rows
that see no key. Symbolic values are built by hand here, as the FX frontend builds them, so
nothing in these tests goes through torch-mlir.
"""

from __future__ import annotations

import subprocess
import sys

from attncc.frontends import masks
from attncc.frontends.torch.position_masks import (
    HIDING_FILL,
    MaskKind,
    MaskPredicate,
    Symbolic,
    axis,
    broadcast,
    fold,
    mask_predicate,
    normalized,
    rows_without_keys,
)
from attncc.ir import Call, Const, Coord, Expr, format_expr

M, P = Coord("m"), Coord("p")
ROW, COL = Coord(axis(0)), Coord(axis(1))


def test_imports_no_torch_mlir() -> None:
    code = (
        "import sys, attncc.frontends.torch.position_masks\n"
        "assert 'torch_mlir' not in sys.modules, 'position_masks pulled in torch_mlir'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_symbolic_helpers() -> None:
    assert axis(3) == "d3"
    # A size-1 dimension has no coordinate: d0 is set to 0 and folds away.
    sym = normalized((1, 8), Call("le", (COL, ROW)))
    assert sym == Symbolic((1, 8), Call("le", (COL, Const(0.0))))
    # Broadcasting aligns right: [8] on [4, 8] is the last coordinate.
    assert broadcast(Symbolic((8,), ROW), (4, 8)) == COL
    assert broadcast(Symbolic((3,), ROW), (4, 8)) is None
    assert fold(Call("select", (Call("lt", (ROW, COL)), Const(1.0), Const(0.0)))) == Call(
        "lt", (ROW, COL)
    )
    assert fold(Call("add", (Const(2.0), Const(3.0)))) == Const(5.0)


def _predicate(sym: Symbolic, kind: MaskKind, scores: tuple[int, ...] = (2, 12, 12)) -> Expr:
    found = mask_predicate(sym, scores, kind)
    assert isinstance(found, MaskPredicate) and found.predicate is not None, found
    return found.predicate


def test_mask_predicate_kinds() -> None:
    # tril(ones): row d0 is the query, column d1 the key.
    tril = Symbolic((12, 12), Call("le", (COL, ROW)))
    assert format_expr(_predicate(tril, MaskKind.VISIBLE)) == "m <= p"
    # triu(ones, 1) as masked_fill's mask: true where hidden.
    triu = Symbolic((12, 12), Call("ge", (Call("sub", (COL, ROW)), Const(1.0))))
    assert format_expr(_predicate(triu, MaskKind.HIDDEN)) == "m <= p"
    # An additive mask of -1e9 hides with a finite value, noted for the caller.
    bias = Symbolic((12, 12), Call("select", (Call("gt", (COL, ROW)), Const(-1e9), Const(0.0))))
    found = mask_predicate(bias, (12, 12), MaskKind.ADDITIVE)
    assert found == MaskPredicate(Call("le", (M, P)), finite_fill=True)


def test_mask_predicate_reasons() -> None:
    varying = Symbolic((2, 12, 12), Call("le", (Coord(axis(2)), Coord(axis(0)))))
    assert "varies over batch" in str(mask_predicate(varying, (2, 12, 12), MaskKind.VISIBLE))
    nothing = Symbolic((12, 12), Const(0.0))
    assert mask_predicate(nothing, (12, 12), MaskKind.VISIBLE) == "the mask hides every key"
    half = Symbolic((12, 12), Call("select", (Call("le", (COL, ROW)), Const(0.0), Const(-1.0))))
    assert "neither keeps nor hides" in str(mask_predicate(half, (12, 12), MaskKind.ADDITIVE))
    assert HIDING_FILL == -1e4


def test_mask_predicate_more_than_four_atoms() -> None:
    atoms = [Call("le", (COL, Call("add", (ROW, Const(float(k)))))) for k in range(5)]
    expr: Expr = atoms[0]
    for atom in atoms[1:]:
        expr = Call("ne", (expr, atom))  # xor keeps every atom
    found = mask_predicate(Symbolic((12, 12), expr), (12, 12), MaskKind.VISIBLE)
    assert found == "the mask compares positions 5 ways (at most 4 are read)"


def test_rows_without_keys() -> None:
    assert rows_without_keys(masks.causal(), 12, 12) is False
    # m < p: query row 0 sees no key.
    assert rows_without_keys(Call("lt", (M, P)), 12, 12) is True
    assert rows_without_keys(masks.sliding_window(4), 12, 12) is False
    # A window ahead of the query: the last rows run past the keys.
    ahead = Call("and", (Call("gt", (M, P)), Call("le", (M, Call("add", (P, Const(3.0)))))))
    assert rows_without_keys(ahead, 12, 12) is True
    # Fewer keys than queries, causal from the end: rows see at least key 0.
    assert rows_without_keys(masks.causal(), 16, 4) is False
    # Long sequences are decided from the predicate, not point by point.
    assert rows_without_keys(masks.causal(), 65536, 65536) is False
    assert rows_without_keys(Call("lt", (M, P)), 65536, 65536) is True
    assert rows_without_keys(masks.sliding_window(128), 65536, 65536) is False


def test_rows_without_keys_undecided() -> None:
    # m * m <= p is not affine: the tile analysis refuses it, so the answer is None, not a guess.
    assert rows_without_keys(Call("le", (Call("mul", (M, M)), P)), 12, 12) is None
