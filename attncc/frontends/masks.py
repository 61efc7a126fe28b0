"""The mask library: attention masks as IR predicates over key position m and query position p.

A mask is an `Expr` over `Coord("m")` (the key's flat 0-based position) and `Coord("p")` (the
query's), true where query p may attend key m; it is meant as the filter of the score Einsum
(`QK[m,p] = ... where MASK else -inf`). Every parameter (window, kernel, grid shape) is a Python
int baked into the predicate as a constant, so the predicate is a closed formula that analyses
can reason about exactly. Data masks (`document`, `block_table`) read an input tensor instead.

Multi-dimensional masks (neighborhood attention, HaloNet) lay tokens out row-major on a grid:
a flat position x of a (T, H, W) grid has axis coordinates `(x // W) // H`, `(x // W) % H` and
`x % W`, and a dilation d splits an axis coordinate a into `a // d` and `a % d`. Divisions are
always nested like this, never `x // (H*W)`, so that an exact analysis can peel one axis at a time.
Neighborhood attention follows NATTEN (Hassani et al.; its Flex Attention mask, `get_na_flex_mask`
in natten/backends/flex.py), including its even kernels, dilation groups and strides (GNA).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Sequence

import sympy

from attncc.ir import Access, Call, Const, Coord, Expr, index_symbol

M = Coord("m")
P = Coord("p")

Operand = Expr | int


# -- Building blocks: each reads like the operator it builds; ints become constants. --------


def _c(k: int) -> Const:
    return Const(float(k))


def _e(x: Operand) -> Expr:
    return _c(x) if isinstance(x, int) else x


def _call(op: str, *args: Operand) -> Expr:
    return Call(op, tuple(_e(a) for a in args))


def _add(a: Operand, b: Operand) -> Operand:
    if isinstance(a, int) and isinstance(b, int):
        return a + b
    return a if b == 0 else _call("add", a, b)


def _sub(a: Operand, b: Operand) -> Operand:
    if isinstance(a, int) and isinstance(b, int):
        return a - b
    return a if b == 0 else _call("sub", a, b)


# Operators that build their call as is: `_le(m, p)` is `m <= p`.
_mul, _floordiv, _mod, _max, _min, _abs, _eq, _ne, _lt, _le = (
    functools.partial(_call, op)
    for op in ("mul", "floordiv", "mod", "max", "min", "abs", "eq", "ne", "lt", "le")
)


def _and(*xs: Expr) -> Expr:
    return functools.reduce(lambda a, b: Call("and", (a, b)), xs)


def _or(*xs: Expr) -> Expr:
    return functools.reduce(lambda a, b: Call("or", (a, b)), xs)


def _not(x: Expr) -> Expr:
    return Call("not", (x,))


# -- Parameter checks: every message names the mask and the parameter. ----------------------


def _int(mask: str, name: str, value: object, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        kind = "a positive integer" if low == 1 else f"an integer >= {low}"
        raise ValueError(f"{mask}: {name} must be {kind}, got {value!r}")
    return value


def _per_axis(mask: str, name: str, value: object, ndim: int, low: int) -> tuple[int, ...]:
    """An int for every axis, or a tuple of `ndim` ints, each at least `low`."""
    if isinstance(value, tuple | list):
        if len(value) != ndim:
            raise ValueError(f"{mask}: {name} needs {ndim} values, one per axis, got {value!r}")
        return tuple(_int(mask, name, v, low) for v in value)
    return (_int(mask, name, value, low),) * ndim


def _per_axis_bool(mask: str, name: str, value: object, ndim: int) -> tuple[bool, ...]:
    values = tuple(value) if isinstance(value, tuple | list) else (value,) * ndim
    if len(values) != ndim or not all(isinstance(v, bool) for v in values):
        raise ValueError(f"{mask}: {name} must be a bool or {ndim} bools, got {value!r}")
    return tuple(bool(v) for v in values)


def _shape(mask: str, shape: object, ndim: int) -> tuple[int, ...]:
    if not isinstance(shape, tuple | list) or len(shape) != ndim:
        raise ValueError(f"{mask}: shape must be {ndim} positive integers, got {shape!r}")
    return tuple(_int(mask, "shape", s, 1) for s in shape)


def _pairs(mask: str, name: str, pairs: Iterable[tuple[int, int]]) -> list[tuple[int, int]]:
    checked = set()
    for pair in pairs:
        if not isinstance(pair, tuple | list) or len(pair) != 2:
            raise ValueError(
                f"{mask}: {name} must hold (query_block, key_block) pairs, got {pair!r}"
            )
        checked.add((_int(mask, name, pair[0], 0), _int(mask, name, pair[1], 0)))
    return sorted(checked)


# -- One-dimensional masks. ------------------------------------------------------------------


def causal() -> Expr:
    """Causal attention: m <= p."""
    return _le(M, P)


def sliding_window(window: int, *, causal: bool = True) -> Expr:
    """Sliding-window attention over `window` keys.

    Causal: 0 <= p - m < window (the query and the window - 1 keys before it).
    Symmetric (`causal=False`): |p - m| <= window // 2 (window + 1 keys when window is even).
    """
    _int("sliding_window", "window", window, 1)
    if causal:
        return _and(_le(M, P), _lt(_sub(P, M), window))
    return _le(_abs(_sub(P, M)), window // 2)


def dilated_sliding_window(window: int, dilation: int, *, causal: bool = True) -> Expr:
    """Sliding window of `window` keys `dilation` apart.

    Causal: p - m in {0, d, 2d, ..., (window - 1) d}, written
    m % d == p % d and 0 <= p // d - m // d <= window - 1.
    Symmetric: m % d == p % d and |p // d - m // d| <= window // 2.
    """
    _int("dilated_sliding_window", "window", window, 1)
    d = _int("dilated_sliding_window", "dilation", dilation, 1)
    if d == 1:
        return sliding_window(window, causal=causal)
    # With m % d == p % d, p - m = d (p // d - m // d): the band is a band of group positions,
    # which keeps the predicate in the digits of m and p (see attncc.analysis.predicate).
    m, p = _floordiv(M, d), _floordiv(P, d)
    if causal:
        band = _and(_le(m, p), _le(_sub(p, m), window - 1))
    else:
        band = _le(_abs(_sub(p, m)), window // 2)
    return _and(band, _eq(_mod(M, d), _mod(P, d)))


def prefix_lm(prefix: int) -> Expr:
    """Prefix LM: every query sees the first `prefix` keys, the rest causally:
    m < prefix or m <= p."""
    _int("prefix_lm", "prefix", prefix, 0)
    return _or(_lt(M, prefix), _le(M, P))


def document(key_ids: str = "KDOC", query_ids: str = "QDOC", *, causal: bool = False) -> Expr:
    """Document masking (packed sequences): KDOC[m] == QDOC[p], and m <= p when `causal`.

    A data mask: the inputs `key_ids` (declared over M) and `query_ids` (over P) hold each
    position's document id; for self-attention pass the same array as both. They are two
    tensors because the verifier indexes a rank-M tensor with m only, never with p.
    """
    for name, ids in (("key_ids", key_ids), ("query_ids", query_ids)):
        if not ids or not ids[0].isupper():
            raise ValueError(f"document: {name} must name an input (upper case), got {ids!r}")
    m, p = index_symbol("m"), index_symbol("p")
    same = _eq(Access(key_ids, (m,)), Access(query_ids, (p,)))
    return _and(same, _le(M, P)) if causal else same


def longformer(window: int, global_tokens: int) -> Expr:
    """Longformer: a symmetric window plus global tokens at the start.

    |p - m| <= window // 2 or m < global_tokens or p < global_tokens.
    """
    _int("longformer", "window", window, 1)
    _int("longformer", "global_tokens", global_tokens, 0)
    band = sliding_window(window, causal=False)
    return _or(band, _lt(M, global_tokens), _lt(P, global_tokens))


# -- Block-sparse masks. ---------------------------------------------------------------------


def block_diagonal(block: int) -> Expr:
    """Attention within blocks of `block` positions: m // block == p // block."""
    _int("block_diagonal", "block", block, 1)
    return _eq(_floordiv(M, block), _floordiv(P, block))


def _block_pairs(pairs: Sequence[tuple[int, int]], block: int) -> list[Expr]:
    """p // block == i and m // block == j, for each (i, j)."""
    return [_and(_eq(_floordiv(P, block), i), _eq(_floordiv(M, block), j)) for i, j in pairs]


def block_list(pairs: Iterable[tuple[int, int]], block: int) -> Expr:
    """A fixed list of allowed (query block, key block) pairs (BigBird-style):
    the or over (i, j) in `pairs` of p // block == i and m // block == j."""
    _int("block_list", "block", block, 1)
    checked = _pairs("block_list", "pairs", pairs)
    if not checked:
        raise ValueError("block_list: pairs must hold at least one (query_block, key_block) pair")
    return _or(*_block_pairs(checked, block))


def block_table(block: int, tensor: str = "BLOCKS") -> Expr:
    """A block table read at run time: BLOCKS[p // block, m // block] != 0.

    A data mask for large or runtime block lists (top-k block choices): `tensor` is an input of
    ceil(P / block) x ceil(M / block) entries, nonzero where the query block may attend the key
    block.
    """
    _int("block_table", "block", block, 1)
    if not tensor or not tensor[0].isupper():
        raise ValueError(f"block_table: tensor must name an input (upper case), got {tensor!r}")
    m, p = index_symbol("m"), index_symbol("p")
    entry = Access(tensor, (sympy.floor(p / block), sympy.floor(m / block)))
    return _ne(entry, 0)


def bigbird(
    block: int,
    *,
    window_blocks: int,
    global_blocks: int,
    random_pairs: Iterable[tuple[int, int]] = (),
) -> Expr:
    """BigBird (ITC form) at block granularity, with qb = p // block and kb = m // block:

    |qb - kb| <= window_blocks // 2 (the band; window_blocks = 3 is BigBird's) or
    qb < global_blocks or kb < global_blocks (global rows and columns) or
    (qb, kb) in random_pairs (the random blocks, drawn by the caller).

    Global blocks are the first `global_blocks`; a mask does not know the sequence length, so
    a global last block (as in Hugging Face's BigBird) is a `random_pairs` row and column.
    """
    _int("bigbird", "block", block, 1)
    _int("bigbird", "window_blocks", window_blocks, 1)
    _int("bigbird", "global_blocks", global_blocks, 0)
    pairs = _pairs("bigbird", "random_pairs", random_pairs)
    qb, kb = _floordiv(P, block), _floordiv(M, block)
    band = _le(_abs(_sub(qb, kb)), window_blocks // 2)
    parts = [band]
    if global_blocks > 0:
        parts += [_lt(qb, global_blocks), _lt(kb, global_blocks)]
    return _or(*parts, *_block_pairs(pairs, block))


# -- Neighborhood attention (NATTEN) on 1-, 2- and 3-D token grids. --------------------------


def _grid_coords(x: Expr, shape: tuple[int, ...]) -> list[Expr]:
    """Row-major axis coordinates of flat position x, divisions nested: for (T, H, W),
    [(x // W) // H, (x // W) % H, x % W]."""
    coords: list[Expr] = []
    for size in reversed(shape[1:]):
        coords.append(_mod(x, size))
        x = _floordiv(x, size)
    return [x, *reversed(coords)]


def _na_axis(
    i: Expr, j: Expr, *, length: int, kernel: int, stride: int, dilation: int, causal: bool
) -> Expr:
    """NATTEN's rule on one axis of `length`: query coordinate i may attend key coordinate j.

    Dilation groups: j % d == i % d; within the group i' = i // d, j' = j // d, and the group
    holds Lg = (length - i % d + d - 1) // d positions. The stride group's leader is
    min((i' // s) s + s // 2, Lg - 1) (non-causal: its centre, the right one for even s) or
    min((i' // s) s + s - 1, Lg - 1) (causal: its last query); with s = 1 it is i' itself.
    Non-causal: start = clamp(leader - K // 2, 0, Lg - K) and start <= j' < start + K (the window
    is shifted, not cropped, at the borders; an even K spans K/2 left and K/2 - 1 right).
    Causal: j' <= i' and leader - j' < K.
    """
    d, s, k = dilation, stride, kernel
    group_length: Operand = length
    same_group: Expr | None = None
    if d > 1:
        group = _mod(i, d)
        same_group = _eq(_mod(j, d), group)
        i, j = _floordiv(i, d), _floordiv(j, d)
        group_length = _floordiv(_sub(length + d - 1, group), d)
    leader = i
    if s > 1:
        offset = s - 1 if causal else s // 2
        leader = _min(_add(_mul(_floordiv(i, s), s), offset), _sub(group_length, 1))
    if causal:
        window = _and(_le(j, i), _lt(_sub(leader, j), k))
    else:
        start = _max(_min(_sub(leader, k // 2), _sub(group_length, k)), 0)
        window = _and(_le(start, j), _lt(j, _add(start, k)))
    return window if same_group is None else _and(same_group, window)


def _neighborhood(
    mask: str,
    shape: object,
    ndim: int,
    kernel: object,
    stride: object,
    dilation: object,
    causal: object,
) -> Expr:
    """The and over the axes of `_na_axis`, after NATTEN's checks: kernel * dilation <= length
    and stride <= kernel on every axis."""
    lengths = _shape(mask, shape, ndim)
    kernels = _per_axis(mask, "kernel", kernel, ndim, 1)
    strides = _per_axis(mask, "stride", stride, ndim, 1)
    dilations = _per_axis(mask, "dilation", dilation, ndim, 1)
    causals = _per_axis_bool(mask, "causal", causal, ndim)
    for axis, (length, k, s, d) in enumerate(
        zip(lengths, kernels, strides, dilations, strict=True)
    ):
        if k * d > length:
            raise ValueError(
                f"{mask}: kernel * dilation ({k} * {d}) exceeds the length {length} of axis "
                f"{axis}; use a smaller kernel or dilation"
            )
        if s > k:
            raise ValueError(f"{mask}: stride {s} exceeds the kernel {k} of axis {axis}")
    queries, keys = _grid_coords(P, lengths), _grid_coords(M, lengths)
    return _and(
        *(
            _na_axis(i, j, length=length, kernel=k, stride=s, dilation=d, causal=c)
            for i, j, length, k, s, d, c in zip(
                queries, keys, lengths, kernels, strides, dilations, causals, strict=True
            )
        )
    )


def neighborhood_1d(length: int, kernel: int, *, dilation: int = 1, causal: bool = False) -> Expr:
    """Neighborhood attention (NATTEN na1d) over a sequence of `length` tokens.

    Query i attends key j when j % d == i % d and, in group coordinates i' = i // d,
    j' = j // d with Lg = (length - i % d + d - 1) // d keys in the group:
    non-causal, start <= j' < start + kernel with start = clamp(i' - kernel // 2, 0, Lg - kernel);
    causal, i' - kernel < j' <= i'. Requires kernel * dilation <= length.
    """
    _int("neighborhood_1d", "length", length, 1)
    return _neighborhood("neighborhood_1d", (length,), 1, kernel, 1, dilation, causal)


def neighborhood_2d(
    shape: tuple[int, int],
    kernel: int | tuple[int, int],
    *,
    dilation: int | tuple[int, int] = 1,
    causal: bool | tuple[bool, bool] = False,
) -> Expr:
    """Neighborhood attention (NATTEN na2d) on an (H, W) grid, tokens row-major: the and over
    the axes (x // W and x % W) of `neighborhood_1d`'s rule with that axis's kernel, dilation
    and causality."""
    return _neighborhood("neighborhood_2d", shape, 2, kernel, 1, dilation, causal)


def neighborhood_3d(
    shape: tuple[int, int, int],
    kernel: int | tuple[int, int, int],
    *,
    dilation: int | tuple[int, int, int] = 1,
    causal: bool | tuple[bool, bool, bool] = False,
) -> Expr:
    """Neighborhood attention (NATTEN na3d) on a (T, H, W) grid, tokens row-major: the and over
    the axes ((x // W) // H, (x // W) % H, x % W) of `neighborhood_1d`'s rule."""
    return _neighborhood("neighborhood_3d", shape, 3, kernel, 1, dilation, causal)


def generalized_neighborhood_1d(
    length: int, kernel: int, stride: int, *, dilation: int = 1, causal: bool = False
) -> Expr:
    """Generalized neighborhood attention (GNA, Hassani et al. 2025; NATTEN's `stride`) on a
    sequence: queries in a stride group (i' // stride equal, in dilation-group coordinates)
    share the window of the group's leader.

    Non-causal: leader = min((i' // s) s + s // 2, Lg - 1) (the centre query, the right one for
    even s), start = clamp(leader - kernel // 2, 0, Lg - kernel), start <= j' < start + kernel.
    Causal: leader = min((i' // s) s + s - 1, Lg - 1) (the last query); j' <= i' and
    leader - j' < kernel. Dilation groups and Lg as in `neighborhood_1d`; stride <= kernel.
    stride = 1 is neighborhood attention; stride = kernel is blocked (Swin-like) attention.
    """
    _int("generalized_neighborhood_1d", "length", length, 1)
    return _neighborhood(
        "generalized_neighborhood_1d", (length,), 1, kernel, stride, dilation, causal
    )


def generalized_neighborhood_2d(
    shape: tuple[int, int],
    kernel: int | tuple[int, int],
    stride: int | tuple[int, int],
    *,
    dilation: int | tuple[int, int] = 1,
    causal: bool | tuple[bool, bool] = False,
) -> Expr:
    """GNA on an (H, W) grid: the and over the axes of `generalized_neighborhood_1d`'s rule."""
    return _neighborhood("generalized_neighborhood_2d", shape, 2, kernel, stride, dilation, causal)


def generalized_neighborhood_3d(
    shape: tuple[int, int, int],
    kernel: int | tuple[int, int, int],
    stride: int | tuple[int, int, int],
    *,
    dilation: int | tuple[int, int, int] = 1,
    causal: bool | tuple[bool, bool, bool] = False,
) -> Expr:
    """GNA on a (T, H, W) grid: the and over the axes of `generalized_neighborhood_1d`'s rule."""
    return _neighborhood("generalized_neighborhood_3d", shape, 3, kernel, stride, dilation, causal)


def halo_2d(
    shape: tuple[int, int], block: int | tuple[int, int], halo: int | tuple[int, int]
) -> Expr:
    """HaloNet blocked local attention on an (H, W) grid, tokens row-major.

    Queries in a block of block x block tokens attend the keys of that block extended by `halo`
    on each side, cropped at the borders: per axis, with query coordinate i and key coordinate
    j, (i // b) b - halo <= j < (i // b) b + b + halo. The last block of an axis whose length is
    not a multiple of b is ragged.
    """
    lengths = _shape("halo_2d", shape, 2)
    blocks = _per_axis("halo_2d", "block", block, 2, 1)
    halos = _per_axis("halo_2d", "halo", halo, 2, 0)
    axes = []
    for i, j, b, h in zip(
        _grid_coords(P, lengths), _grid_coords(M, lengths), blocks, halos, strict=True
    ):
        first = _mul(_floordiv(i, b), b)
        axes.append(_and(_le(_sub(first, h), j), _lt(j, _add(first, b + h))))
    return _and(*axes)


# -- Combinators. ----------------------------------------------------------------------------


def mask_and(*masks: Expr) -> Expr:
    """Attend where every mask allows: masks[0] and masks[1] and ..."""
    if not masks:
        raise ValueError("mask_and: masks must hold at least one mask")
    return _and(*masks)


def mask_or(*masks: Expr) -> Expr:
    """Attend where any mask allows: masks[0] or masks[1] or ..."""
    if not masks:
        raise ValueError("mask_or: masks must hold at least one mask")
    return _or(*masks)


def mask_not(mask: Expr) -> Expr:
    """Attend where `mask` does not: not mask."""
    return _not(mask)


MASKS: dict[str, Callable[..., Expr]] = {
    f.__name__: f
    for f in (
        causal,
        sliding_window,
        dilated_sliding_window,
        prefix_lm,
        document,
        longformer,
        block_diagonal,
        block_list,
        block_table,
        bigbird,
        neighborhood_1d,
        neighborhood_2d,
        neighborhood_3d,
        generalized_neighborhood_1d,
        generalized_neighborhood_2d,
        generalized_neighborhood_3d,
        halo_2d,
    )
}
"""The public masks by name (combinators excluded), for the CLI's `attncc masks NAME`."""
