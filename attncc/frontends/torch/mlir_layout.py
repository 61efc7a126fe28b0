"""Where a site's queries, keys and values come from, and the sizes that follow.

The tensors an attention multiplies are often reached through layout no-ops: copies, dtype
conversions, identity expands and slices, and the reshapes of leading dims with which a bmm
flattens batch and heads. `chain` and `peel` look through them. `key_value` finds keys and
values repeated per query head (LLaMA's repeat_kv: unsqueeze, expand, reshape; or
repeat_interleave) and returns the tensors before the repeat, which makes the site
grouped-query attention; `site_dims` checks that queries, keys and values multiply as attention
and folds leading dims into batch and heads. `product` reads a matmul, a bmm or an einsum
such as `bhqd,bhkd->bhqk` as one matrix product of its operands.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from torch_mlir import ir

from attncc.frontends.torch.mlir_ops import (
    SAME_DATA,
    Use,
    constant_or,
    normalize_dim,
    permutation,
    producer,
    shape,
    users,
)


class NoMatch(Exception):
    """The pattern does not apply; the message says why, for the report."""


@dataclass(frozen=True)
class SiteDims:
    """Sizes of a site: the last leading dim of the queries is the heads H (1 without leading
    dims), the others fold into one batch B; key/value heads G (H / group under GQA), P queries,
    M keys, head dimensions E and F."""

    batch: int
    heads: int
    kv_heads: int
    queries: int
    keys: int
    head_dim: int
    value_dim: int


MATMUL = ("torch.aten.matmul", "torch.aten.bmm")
EINSUM = "torch.aten.einsum"

# Reshapes that keep the last two dimensions (what a bmm's batch flattening does).
_BATCH_VIEWS = {"torch.aten.view", "torch.aten.reshape", "torch.aten._unsafe_view"}


def swaps_last_two(op: ir.Operation) -> bool:
    """Whether `op` transposes the last two dims of its operand (k.transpose(-2, -1), k.mT,
    a permute that does only that)."""
    rank = len(shape(op.operands[0]) or ())
    if rank < 2 or op.name not in (
        "torch.aten.transpose.int",
        "torch.aten.permute",
        "torch.aten.t",
        "torch.aten.numpy_T",
    ):
        return False
    order = permutation(op, rank)
    return order == [*range(rank - 2), rank - 1, rank - 2]


def looks_through(op: ir.Operation, *, views: bool = True) -> bool:
    """Copies, dtype conversions, identity expands and slices, and (with `views`) reshapes of
    the leading dims."""
    if not op.operands or len(op.results) != 1:
        return False
    before, after = shape(op.operands[0]), shape(op.result)
    if op.name in SAME_DATA:
        return before == after
    if op.name == "torch.aten.expand":
        return before == after
    if op.name == "torch.aten.slice.Tensor":
        return _identity_slice(op)
    if views and op.name in _BATCH_VIEWS and before is not None and after is not None:
        return len(before) >= 2 and len(after) >= 2 and before[-2:] == after[-2:]
    return False


def _identity_slice(op: ir.Operation) -> bool:
    start, step = constant_or(op.operands[2], None), constant_or(op.operands[4], None)
    return shape(op.operands[0]) == shape(op.result) and start in (0, None) and step == 1


def chain(x: ir.Value, *, views: bool = True) -> list[ir.Value]:
    """`x`, and what it is a copy (or, with `views`, a batch reshape) of, one step at a time."""
    found = [x]
    for _ in range(64):
        op = producer(found[-1])
        if op is None or not looks_through(op, views=views):
            break
        found.append(op.operands[0])
    return found


def peel(x: ir.Value, *, views: bool = True) -> ir.Value:
    """The tensor `x` is a copy (or, with `views`, a batch reshape) of, as far back as that goes."""
    return chain(x, views=views)[-1]


def shape_of(x: ir.Value) -> tuple[int, ...]:
    """`x`'s static shape; NoMatch when it has none."""
    dims = shape(x)
    if dims is None:
        raise NoMatch("a tensor on the way has no static shape")
    return dims


def key_value(
    q: ir.Value, k: ir.Value, v: ir.Value, *, key_transposed: bool
) -> tuple[ir.Value, ir.Value]:
    """The key and value tensors before a repeat over the head dimension that both went
    through with the same factor (grouped-query attention); otherwise, of each, the tensor
    furthest back through copies and batch reshapes whose leading dims pair with the queries'
    (always correct: the cascade then reads the repeated heads)."""
    q_lead = shape_of(q)[:-2]
    if not key_transposed:
        k_source, v_source = _first_repeat(k), _first_repeat(v)
        if k_source is not None and v_source is not None and k_source[1] == v_source[1]:
            return k_source[0], v_source[0]
    return _pairing(k, q_lead), _pairing(v, q_lead)


def _pairing(x: ir.Value, q_lead: tuple[int, ...]) -> ir.Value:
    paired = [c for c in chain(x) if (s := shape(c)) and len(s) >= 2 and _pairs(q_lead, s[:-2])]
    return paired[-1] if paired else x


def _pairs(lead: tuple[int, ...], kv_lead: tuple[int, ...]) -> bool:
    """Whether keys with leading dims `kv_lead` serve queries with `lead`: the same batch, and
    key/value heads dividing the query heads."""
    if len(kv_lead) != len(lead) or kv_lead[:-1] != lead[:-1]:
        return False
    return not lead or lead[-1] % kv_lead[-1] == 0


def _first_repeat(x: ir.Value) -> tuple[ir.Value, int] | None:
    for candidate in chain(x):
        found = _repeat_source(candidate)
        if found is not None:
            return found
    return None


def _repeat_source(x: ir.Value) -> tuple[ir.Value, int] | None:
    """(source [b, g, s, d], r) when `x` is [b, g*r, s, d], each head repeated r times in a row:
    repeat_kv's unsqueeze + expand + reshape, or repeat_interleave over dim 1."""
    op = producer(x)
    out = shape(x)
    if op is None or out is None or len(out) != 4:
        return None
    if op.name == "torch.aten.repeat_interleave.self_int":
        repeats, dim = constant_or(op.operands[1], None), constant_or(op.operands[2], None)
        source = op.operands[0]
        if not (isinstance(repeats, int) and isinstance(dim, int) and normalize_dim(dim, 4) == 1):
            return None
        b, g, s, d = shape(source) or (0, 0, 0, 0)
        return (source, repeats) if out == (b, g * repeats, s, d) else None
    if op.name not in _BATCH_VIEWS:
        return None
    expanded = peel(op.operands[0], views=False)
    expand = producer(expanded)
    grid = shape(expanded)
    if expand is None or expand.name != "torch.aten.expand" or grid is None or len(grid) != 5:
        return None
    unsqueezed = peel(expand.operands[0], views=False)
    unsqueeze = producer(unsqueezed)
    if unsqueeze is None or unsqueeze.name != "torch.aten.unsqueeze":
        return None
    if constant_or(unsqueeze.operands[1], None) not in (2, -3):
        return None
    source = unsqueeze.operands[0]
    b, g, r, s, d = grid
    if shape(source) != (b, g, s, d) or out != (b, g * r, s, d):
        return None
    return source, r


# -- Products: matmul, bmm, einsum. -------------------------------------------------------


def product_uses(value: ir.Value) -> list[Use]:
    """The uses of `value`, with an einsum's operand list seen through: (einsum, i) for a
    value that is the i-th tensor of its list."""
    found = []
    for use in users(value):
        if use.op.name == "torch.prim.ListConstruct":
            found += [Use(u.op, use.index) for u in users(use.op.result) if u.op.name == EINSUM]
        else:
            found.append(use)
    return found


def product(op: ir.Operation) -> tuple[ir.Value, ir.Value, bool] | None:
    """(a, b, transposed) when `op` computes a @ b (b [.., k, n]), or with `transposed`
    a @ b^T (b [.., n, k]): a matmul, a bmm, or an einsum such as `bhqd,bhkd->bhqk`."""
    if op.name in MATMUL:
        return op.operands[0], op.operands[1], False
    if op.name != EINSUM:
        return None
    equation, listed = constant_or(op.operands[0], None), producer(op.operands[1])
    if not isinstance(equation, str) or listed is None or len(listed.operands) != 2:
        return None
    transposed = einsum_matmul(equation)
    return None if transposed is None else (listed.operands[0], listed.operands[1], transposed)


def einsum_matmul(equation: str) -> bool | None:
    """Whether an einsum equation is L i c, L c j -> L i j (False: a matmul) or
    L i c, L j c -> L i j (True: a matmul with the second operand transposed); None when it is
    neither (L: the same batch indices, or `...`, on all three)."""
    inputs, arrow, output = equation.replace(" ", "").partition("->")
    terms = [_einsum_term(t) for t in (*inputs.split(","), output)]
    if not arrow or len(terms) != 3 or any(len(t) < 2 for t in terms):
        return None
    (*lead, i, c), b, (*out_lead, i2, j) = terms
    if lead != b[:-2] or lead != out_lead or i != i2 or len({i, c, j, *lead}) != len(lead) + 3:
        return None
    if b[-2:] == [c, j]:
        return False
    return True if b[-2:] == [j, c] else None


def _einsum_term(term: str) -> list[str]:
    """An einsum operand's indices, `...` as one index."""
    return ["...", *term[3:]] if term.startswith("...") else list(term)


# -- Sizes. ---------------------------------------------------------------------------------


def site_dims(q: ir.Value, key: ir.Value, value: ir.Value, *, key_transposed: bool) -> SiteDims:
    """The sizes of attention over queries q [.., p, e], keys [.., m, e] (or [.., e, m] when
    `key_transposed`) and values [.., m, f]; NoMatch when they do not multiply as attention."""
    q_shape, k_shape, v_shape = shape(q), shape(key), shape(value)
    if q_shape is None or k_shape is None or v_shape is None:
        raise NoMatch("queries, keys and values need static shapes")
    if min(len(q_shape), len(k_shape), len(v_shape)) < 2:
        raise NoMatch("queries, keys and values need at least 2 dims")
    lead, k_lead, v_lead = q_shape[:-2], k_shape[:-2], v_shape[:-2]
    p, e_q = q_shape[-2:]
    e, m = k_shape[-2:] if key_transposed else reversed(k_shape[-2:])
    m_v, f = v_shape[-2:]
    if e != e_q or m != m_v:
        raise NoMatch(
            f"queries {list(q_shape)}, keys {list(k_shape)} and values {list(v_shape)} do not "
            "multiply as attention"
        )
    if k_lead != v_lead:
        raise NoMatch(f"keys have leading dims {list(k_lead)} and values {list(v_lead)}")
    batch = math.prod(lead[:-1]) if lead else 1
    heads = lead[-1] if lead else 1
    kv_heads = k_lead[-1] if k_lead else 1
    if not _pairs(lead, k_lead):
        raise NoMatch(
            f"keys with leading dims {list(k_lead)} do not pair with queries' {list(lead)} "
            "(the same batch, and key/value heads dividing the query heads)"
        )
    return SiteDims(batch, heads, kv_heads, p, m, e, f)
