"""Hypothesis strategies that draw random valid cascades, written through the Python builder.

`cascades()` declares a few small ranks (concrete or symbolic, sometimes one derived as `2*J`
and one partitioned `partition J -> J1, J0`), one to three inputs, and then appends a chain of
Einsums, each reading only tensors that exist already (inputs or earlier Einsums): elementwise
maps, reductions, softmax, coordinate filters, tiled accesses `X[j1*J0+j0]`, running updates
and running updates that step together with another Einsum. The result passes `verify` by
construction; a draw the verifier rejects is a bug in this file or in attncc, never filtered.

`size_bindings(cascade)` draws integers for the symbolic ranks and `random_inputs` makes arrays
of the right shapes, so that the reference interpreter can run what `cascades()` draws.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
from hypothesis import strategies as st

from attncc.frontends.builder import (
    CascadeBuilder,
    Index,
    TensorRef,
    Value,
    exp,
    exp2,
    log,
    maximum,
    minimum,
    rsqrt,
    select,
    sigmoid,
    sqrt,
    tanh,
    value,
)
from attncc.ir import Call, Cascade, DType, bind_sizes, index_name, index_symbol

# Rank names; E is in the pool on purpose: `e` and `E` sit next to numbers such as 1e-05.
RANK_POOL = ("E", "I", "J", "K", "L", "N", "P", "M")
# Names that look like operators or reduction prefixes of the text form but are legal (the
# keywords themselves, `inf`, `where`, `rank`, ..., are not: the verifier rejects them); drawn
# now and then, they test how the printer and the parser tell names from operators.
ODD_RANKS = ("MAX", "SUM", "MIN", "EXP", "SELECT")
ODD_TENSORS = ("max", "sum", "min", "exp", "select", "neg", "K", "M0")
FLOAT_DTYPES = (DType.F16, DType.BF16, DType.F32, DType.F64)
MAX_SIZE = 6
# A rank that another rank's size refers to (J in `L = 2*J`, J0 in `J1 = ceil(J/J0)`) stays
# small so that the derived rank stays small as well.
MAX_REFERRED_SIZE = 3

MODERATE_CONSTANTS = st.one_of(
    st.sampled_from([0.0, 1.0, -1.0, 2.0, 0.5, -2.5, 3.0, 0.125, 1e-3, -0.0]),
    st.floats(-8.0, 8.0, allow_nan=False, allow_infinity=False),
)
# Constants that only the text form has to survive: extremes, subnormals, many digits.
EXTREME_CONSTANTS = st.one_of(
    MODERATE_CONSTANTS,
    st.floats(allow_nan=False, allow_infinity=True),
    st.sampled_from([5e-324, 1e15, 1e16, 123456789.125, -1e-300, math.inf, -math.inf]),
)


@dataclass(frozen=True)
class _Tensor:
    """A tensor the chain may read: its rank names in layout order, and for a tensor written by
    a running update the rank it iterates (it holds one extra entry, coordinate 0, there)."""

    name: str
    ranks: tuple[str, ...]
    running: str | None = None


@dataclass
class _State:
    draw: st.DrawFn
    builder: CascadeBuilder
    constants: st.SearchStrategy[float]
    data_filters: bool
    odd_names: bool
    ranks: list[str] = field(default_factory=list)
    partitions: dict[str, tuple[str, str]] = field(default_factory=dict)
    doubled: dict[str, str] = field(default_factory=dict)
    tensors: list[_Tensor] = field(default_factory=list)
    inputs: set[str] = field(default_factory=set)
    names: set[str] = field(default_factory=set)
    written: int = 0
    budget: int = 0

    def pick(self, options: Sequence):
        """One of `options`; shrinks towards the first."""
        return options[self.draw(_below(len(options)))]

    def chance(self, percent: int) -> bool:
        return self.draw(_below(100)) < percent

    def constant(self) -> float:
        return self.draw(self.constants)

    def fresh(self, prefix: str) -> str:
        """The name of the next Einsum's tensor: `prefix` numbered, or now and then an odd one."""
        self.written += 1
        odd = [n for n in ODD_TENSORS if n not in self.names]
        name = f"{prefix}{self.written}"
        if self.odd_names and odd and self.chance(8):
            name = self.pick(odd)
        self.names.add(name)
        return name


@functools.cache
def _below(n: int) -> st.SearchStrategy[int]:
    """`integers(0, n - 1)`, built once: a fresh strategy per draw made generation twice slower."""
    return st.integers(0, n - 1)


def idx(rank: str) -> Index:
    """The index variable of rank `rank` as a builder handle (`J1` -> `j1`)."""
    return Index(index_symbol(index_name(rank)))


# ---------------------------------------------------------------------------------------------
# Declarations


def _declare_ranks(s: _State, max_ranks: int) -> None:
    b = s.builder
    names = s.draw(st.permutations(RANK_POOL))[: s.draw(st.integers(1, max_ranks))]
    if s.odd_names and s.chance(10):
        names[0] = s.pick(ODD_RANKS)
    small = []
    for name in names:
        size = None if s.chance(40) else s.draw(st.integers(1, MAX_SIZE))
        b.rank(name, size)
        s.ranks.append(name)
        if size is None or size <= MAX_REFERRED_SIZE:
            small.append(name)
    spare = [n for n in RANK_POOL if n not in names]
    if spare and small and s.chance(25):
        # A derived rank (GQA's H = R*G): read tensors over the base as T[h // 2].
        base = s.pick(small)
        derived = s.pick(spare)
        b.rank(derived, 2 * b.size(base))
        s.ranks.append(derived)
        s.doubled[base] = derived
    if s.chance(45):
        parent = s.pick(names)
        outer, inner = f"{parent}1", f"{parent}0"
        b.rank(inner, None if s.chance(40) else s.draw(st.integers(1, MAX_REFERRED_SIZE)))
        b.partition(parent, outer, inner)
        s.ranks += [inner, outer]
        s.partitions[parent] = (outer, inner)


def _declare_inputs(s: _State, max_inputs: int) -> None:
    for number in range(s.draw(st.integers(1, max_inputs))):
        count = s.draw(st.integers(0, min(3, len(s.ranks))))
        ranks = tuple(s.draw(st.permutations(s.ranks))[:count])
        name = f"X{number}"
        s.builder.input(name, [idx(r) for r in ranks], s.pick(FLOAT_DTYPES))
        s.tensors.append(_Tensor(name, ranks))
        s.inputs.add(name)


def _declare_outputs(s: _State) -> None:
    temporaries = [t for t in s.tensors if t.name not in s.inputs]
    chosen = [temporaries[-1]]
    if len(temporaries) > 1 and s.chance(30):
        chosen.append(s.pick(temporaries[:-1]))
    for tensor in chosen:
        s.builder.output(tensor.name, [idx(r) for r in tensor.ranks], s.pick(FLOAT_DTYPES))


# ---------------------------------------------------------------------------------------------
# Value expressions


def _op(name: str, *operands: object) -> Value:
    """A map operator the builder has no helper for (abs)."""
    return Value(Call(name, tuple(value(o).expr for o in operands)))


def _index(s: _State, tensor: _Tensor, rank: str) -> tuple[Index, set[str]]:
    """How to address `rank` of `tensor`, and the ranks the index iterates."""
    options = ["plain"] * 3
    if rank in s.partitions:
        options.append("tiled")
    if rank in s.doubled:
        options.append("halved")
    if tensor.running == rank:
        options += ["next", "final"]
    kind = s.pick(options)
    if kind == "tiled":
        outer, inner = s.partitions[rank]
        return idx(outer) * s.builder.size(inner) + idx(inner), {outer, inner}
    if kind == "halved":
        derived = s.doubled[rank]
        return idx(derived) // 2, {derived}
    if kind == "next":
        # Coordinate r + 1 of a running tensor: the value after iteration r.
        return idx(rank) + 1, {rank}
    if kind == "final":
        return s.builder.size(rank), set()
    return idx(rank), {rank}


def _access(s: _State, tensor: _Tensor) -> tuple[Value, set[str]]:
    indices, used = [], set()
    for rank in tensor.ranks:
        index, ranks = _index(s, tensor, rank)
        indices.append(index)
        used |= ranks
    return TensorRef(tensor.name)[tuple(indices)], used


def _leaf(s: _State) -> tuple[Value, set[str]]:
    kind = s.pick(["access"] * 6 + ["coord", "size", "const"])
    if kind == "coord":
        rank = s.pick(s.ranks)
        return idx(rank).value(), {rank}
    if kind == "size":
        return s.builder.size(s.pick(s.ranks)).value(), set()
    if kind == "const":
        return value(s.constant()), set()
    return _access(s, s.pick(s.tensors))


def _unary(s: _State, x: Value) -> Value:
    """Wrap `x` in a continuous map (float32 and float64 results then stay close)."""
    kind = s.pick(
        ["id"] * 4
        + ["exp", "tanh", "sigmoid", "neg", "abs", "sqrt", "log", "rsqrt", "exp2"]
        + ["scale", "shift", "leaky", "clamp_inf"]
    )
    c = s.constant()
    table: dict[str, Callable[[], Value]] = {
        "id": lambda: x,
        "exp": lambda: exp(x),
        "exp2": lambda: exp2(_op("neg", _op("abs", x))),
        "tanh": lambda: tanh(x),
        "sigmoid": lambda: sigmoid(x),
        "neg": lambda: -x,
        "abs": lambda: _op("abs", x),
        "sqrt": lambda: sqrt(_op("abs", x) + 1.0),
        "log": lambda: log(1.0 + _op("abs", x)),
        "rsqrt": lambda: rsqrt(x * x + 1.0),
        "scale": lambda: x * c,
        "shift": lambda: c + x,
        # Leaky ReLU: the select is continuous at its boundary.
        "leaky": lambda: select(x > 0.0, x, x * 0.25),
        # Infinite constants where they are neutral.
        "clamp_inf": lambda: maximum(x, -math.inf) if s.chance(50) else minimum(math.inf, x),
    }
    return table[kind]()


def _binary(s: _State, a: Value, b: Value) -> Value:
    kind = s.pick(["add", "sub", "mul", "max", "min", "div", "select_max", "select_min"])
    table: dict[str, Callable[[], Value]] = {
        "add": lambda: a + b,
        "sub": lambda: a - b,
        "mul": lambda: a * b,
        "max": lambda: maximum(a, b),
        "min": lambda: minimum(a, b),
        # Divide by something positive, so no 0/0 appears.
        "div": lambda: a / (1.0 + exp(b)),
        "select_max": lambda: select(a >= b, a, b),
        "select_min": lambda: select(a < b, a, b),
    }
    return table[kind]()


def _expr(s: _State, leaves: list[Value]) -> Value:
    """Every leaf used once, combined pairwise in a random shape."""
    items = [_unary(s, leaf) for leaf in leaves]
    while len(items) > 1:
        first = items.pop(s.draw(st.integers(0, len(items) - 1)))
        second = items.pop(s.draw(st.integers(0, len(items) - 1)))
        items.append(_binary(s, first, second))
    return _unary(s, items[0])


# ---------------------------------------------------------------------------------------------
# Filters


def _coordinate_predicate(
    s: _State, candidates: list[str], first: str | None
) -> tuple[Value, set[str]]:
    """A predicate over coordinates of `candidates` that mentions `first` when one is given."""
    a = first or s.pick(candidates)
    others = [r for r in candidates if r != a]
    kind = s.pick(["causal", "window", "bound", "mod"] + (["tile"] if s.partitions else []))
    if first is not None and s.chance(50):
        kind = "bound"  # a predicate of the new rank alone: `q > 0` in `T[q] = X[m] where q > 0`
    if kind == "tile":
        parent = s.pick(sorted(s.partitions))
        outer, inner = s.partitions[parent]
        key = idx(outer) * s.builder.size(inner) + idx(inner)
        return key <= idx(a), {outer, inner, a}
    if kind == "bound" or not others:
        bound = s.draw(st.integers(0, 4))
        return (idx(a) >= bound if s.chance(50) else idx(a) < bound), {a}
    other = s.pick(others)
    if kind == "causal":
        return idx(a) <= idx(other), {a, other}
    if kind == "window":
        width = s.draw(st.integers(0, 3))
        window = idx(a) + width > idx(other)
        return ((idx(a) <= idx(other)) & window if s.chance(50) else window), {a, other}
    return (idx(a) + idx(other)) % 2 == 0, {a, other}


def _filter(s: _State, space: set[str]) -> tuple[Value | None, float | None, set[str]]:
    """A `where` clause (or none), its `else` fill, and the ranks it adds to the space."""
    if not s.chance(45):
        return None, None, set()
    candidates = sorted(space)
    extra = None
    if not candidates or s.chance(40):
        # A rank only the filter mentions is iterated (and reduced unless kept on the left).
        extra = s.pick([r for r in s.ranks if r not in candidates] or s.ranks)
        candidates.append(extra)
    if s.data_filters and s.chance(25):
        data, ranks = _access(s, s.pick(s.tensors))
        predicate = data > s.draw(MODERATE_CONSTANTS)
    else:
        predicate, ranks = _coordinate_predicate(s, candidates, extra)
    if s.chance(15):
        predicate = ~predicate
    fill = s.draw(st.none() | st.sampled_from([-math.inf, math.inf, 0.0, -1.5]) | s.constants)
    return predicate, fill, ranks


# ---------------------------------------------------------------------------------------------
# Einsums


def _general(s: _State) -> None:
    """`T[lhs] = reduce(reduced) expr where p else fill` over whatever the leaves iterate."""
    leaves = [_leaf(s) for _ in range(s.draw(st.integers(1, 3)))]
    expr = _expr(s, [v for v, _ in leaves])
    space: set[str] = set().union(*(ranks for _, ranks in leaves))
    where, fill, filtered = _filter(s, space)
    order = s.draw(st.permutations(sorted(space)))
    reducing = s.chance(80 if filtered - space else 60)
    reduced_count = s.draw(st.integers(0, min(2, len(order)))) if reducing else 0
    lhs, reduced = order[reduced_count:], order[:reduced_count]
    for rank in sorted(filtered - space):
        # Mostly kept: an output index that only the filter mentions (`T[q] = X[m] where q > 0`)
        # is a corner of its own.
        if s.chance(30):
            reduced.append(rank)
        else:
            lhs.insert(s.draw(st.integers(0, len(lhs))), rank)
    reduce = s.pick(["sum", "sum", "max", "min"]) if reduced else None
    name = s.fresh("T")
    s.builder.let(name, [idx(r) for r in lhs], expr, reduce=reduce, where=where, fill=fill)
    s.tensors.append(_Tensor(name, tuple(lhs)))


def _softmax(s: _State) -> None:
    """Max, exp(x - max), sum, divide: the 3-pass softmax over one rank of a tensor."""
    source = s.pick([t for t in s.tensors if t.ranks])
    rank = s.pick(source.ranks)
    rest = [r for r in source.ranks if r != rank]
    x = TensorRef(source.name)[tuple(idx(r) for r in source.ranks)]
    full, kept = [idx(r) for r in source.ranks], [idx(r) for r in rest]
    gm = s.builder.let(s.fresh("GM"), kept, x, reduce="max")
    sn = s.builder.let(s.fresh("SN"), full, exp(x - gm[tuple(kept)]))
    sd = s.builder.let(s.fresh("SD"), kept, sn[tuple(full)])
    name = s.fresh("SM")
    s.builder.let(name, full, sn[tuple(full)] / sd[tuple(kept)])
    s.tensors += [_Tensor(gm.name, tuple(rest)), _Tensor(sd.name, tuple(rest))]
    s.tensors.append(_Tensor(name, source.ranks))


def _running_frame(s: _State) -> tuple[Value, str, list[str], list[Index]]:
    """The data a running update consumes, the rank it iterates, the other ranks, and its
    left side with `r + 1` at a random position."""
    leaves = [_leaf(s) for _ in range(s.draw(st.integers(1, 2)))]
    data = _expr(s, [v for v, _ in leaves])
    space = sorted(set().union(*(ranks for _, ranks in leaves)))
    # A running update may not run over a partition's inner rank (the ragged last tile).
    inners = {inner for _, inner in s.partitions.values()}
    candidates = [r for r in space if r not in inners] or [r for r in s.ranks if r not in inners]
    rank = s.pick(candidates)
    rest = [r for r in s.draw(st.permutations(space)) if r != rank]
    lhs = [idx(r) for r in rest]
    lhs.insert(s.draw(st.integers(0, len(rest))), idx(rank) + 1)
    return data, rank, rest, lhs


def _previous(name: str, lhs: list[Index], rank: str) -> Value:
    """`R[..., r, ...]`: the running tensor at the coordinate before the one being written."""
    return TensorRef(name)[tuple(idx(rank) if _is_next(i, rank) else i for i in lhs)]


def _is_next(index: Index, rank: str) -> bool:
    return index.expr == idx(rank).expr + 1


def _init(s: _State, combine: str, rest: list[str]) -> object:
    """A start value: an identity, a constant, a tensor over `rest`, or an expression of the
    coordinates in `rest` (the init of R[r+1,j] may depend on j)."""
    sources = [t for t in s.tensors if t.ranks and set(t.ranks) <= set(rest) and not t.running]
    if sources and s.chance(30):
        source = s.pick(sources)
        return TensorRef(source.name)[tuple(idx(r) for r in source.ranks)]
    if rest and s.chance(60):
        # A map max/min of bare names, first on the line: the text form has to tell it from
        # a reduction prefix there as well.
        first = idx(s.pick(rest)).value()
        second = idx(s.pick(rest)).value() if s.chance(70) else value(s.pick([math.inf, -math.inf]))
        start = (maximum if s.chance(50) else minimum)(first, second)
        return _unary(s, start) if s.chance(20) else start + s.constant()
    identity = {"sum": 0.0, "decay": 0.0, "max": -math.inf, "min": math.inf}[combine]
    return identity if s.chance(60) else s.constant()


def _running(s: _State) -> None:
    """`R[r+1, rest] = combine(R[r, rest], data)` with `R[0, rest] = init`."""
    data, rank, rest, lhs = _running_frame(s)
    name = s.fresh("R")
    previous = _previous(name, lhs, rank)
    combine = s.pick(["sum", "max", "min", "decay"])
    body = {
        "sum": lambda: previous + data,
        "max": lambda: maximum(previous, data),
        "min": lambda: minimum(data, previous),
        "decay": lambda: previous * 0.5 + data,
    }[combine]()
    where, fill, filtered = _filter(s, {rank, *rest})
    if not filtered <= {rank, *rest}:
        where, fill = None, None  # a running update iterates exactly its left side
    init = _init(s, combine, rest)
    s.builder.let(name, lhs, body, where=where, fill=fill, init=init)
    s.tensors.append(_Tensor(name, _written(lhs, rank, rest), running=rank))


def _written(lhs: list[Index], rank: str, rest: list[str]) -> tuple[str, ...]:
    names = iter(rest)
    return tuple(rank if _is_next(i, rank) else next(names) for i in lhs)


def _coupled(s: _State) -> None:
    """`P[r, rest] = g(R[r, rest])` before `R[r+1, rest] = P[r, rest] + data`: two Einsums that
    read each other, one through the previous iteration, so they run as one loop."""
    data, rank, rest, lhs = _running_frame(s)
    step, name = s.fresh("P"), s.fresh("R")
    plain = [idx(rank) if _is_next(i, rank) else i for i in lhs]
    s.builder.let(step, plain, _unary(s, _previous(name, lhs, rank)) * 0.5)
    s.builder.let(name, lhs, TensorRef(step)[tuple(plain)] + data, init=_init(s, "sum", rest))
    written = _written(lhs, rank, rest)
    s.tensors += [_Tensor(step, written), _Tensor(name, written, running=rank)]


def _online_softmax(s: _State) -> None:
    """A running max RM and a running sum RS rescaled by exp(RM[r] - RM[r+1]), as in the
    one-pass attention cascade, and their log-sum-exp from the final values."""
    data, rank, rest, lhs = _running_frame(s)
    rm, rs = s.fresh("RM"), s.fresh("RS")
    b = s.builder
    b.let(rm, lhs, maximum(_previous(rm, lhs, rank), data), init=-math.inf)
    updated = TensorRef(rm)[tuple(lhs)]
    rescale = exp(_previous(rm, lhs, rank) - updated)
    b.let(rs, lhs, _previous(rs, lhs, rank) * rescale + exp(data - updated), init=0.0)
    written = _written(lhs, rank, rest)
    s.tensors += [_Tensor(rm, written, running=rank), _Tensor(rs, written, running=rank)]
    if s.written < s.budget:
        final = tuple(b.size(rank) if _is_next(i, rank) else i for i in lhs)
        lse = s.fresh("LSE")
        b.let(lse, [idx(r) for r in rest], log(TensorRef(rs)[final]) + TensorRef(rm)[final])
        s.tensors.append(_Tensor(lse, tuple(rest)))


# Each kind of step and the most Einsums it appends (the chain stops at its budget).
_KINDS: dict[str, tuple[Callable[[_State], None], int]] = {
    "general": (_general, 1),
    "softmax": (_softmax, 4),
    "running": (_running, 1),
    "coupled": (_coupled, 2),
    "online_softmax": (_online_softmax, 2),
}
_WEIGHTS = {"general": 6, "softmax": 2, "running": 2, "coupled": 1, "online_softmax": 1}


@st.composite
def cascades(
    draw: st.DrawFn,
    *,
    max_einsums: int = 8,
    max_ranks: int = 4,
    max_inputs: int = 3,
    data_filters: bool = True,
    extreme_constants: bool = False,
    odd_names: bool = True,
) -> Cascade:
    """A random cascade that passes `verify`; see the module docstring.

    `data_filters` allows `where X[...] > c` (discontinuous in the data, so a float32 run may
    differ from a float64 one); `extreme_constants` draws constants from the whole float range;
    `odd_names` now and then names a rank or a tensor like an operator (`MAX`, `exp`).
    """
    s = _State(
        draw,
        CascadeBuilder(draw(st.sampled_from(["generated", "g", "cascade_x"]))),
        EXTREME_CONSTANTS if extreme_constants else MODERATE_CONSTANTS,
        data_filters,
        odd_names,
    )
    _declare_ranks(s, max_ranks)
    _declare_inputs(s, max_inputs)
    s.budget = draw(st.integers(1, max_einsums))
    while s.written < s.budget:
        room = s.budget - s.written
        kinds = [k for k, (_, cost) in _KINDS.items() if cost <= room]
        if not any(t.ranks for t in s.tensors):
            kinds = [k for k in kinds if k != "softmax"]
        kind = s.pick([k for k in kinds for _ in range(_WEIGHTS[k])])
        _KINDS[kind][0](s)
    _declare_outputs(s)
    return s.builder.build()


# ---------------------------------------------------------------------------------------------
# Running what was drawn


def free_ranks(cascade: Cascade) -> list[str]:
    """Declared ranks whose size is their own symbol: the sizes a run has to be given."""
    return [r.name for r in cascade.ranks if r.size.is_Symbol and r.size.name == r.name]


def _referred(cascade: Cascade) -> set[str]:
    names = {s.name for r in cascade.ranks for s in r.size.free_symbols if s.name != r.name}
    return names | {p.inner for p in cascade.partitions}


@st.composite
def size_bindings(draw: st.DrawFn, cascade: Cascade) -> dict[str, int]:
    """Small integers for the symbolic ranks of `cascade` (to pass as `sizes=`)."""
    referred = _referred(cascade)
    return {
        name: draw(st.integers(1, MAX_REFERRED_SIZE if name in referred else MAX_SIZE))
        for name in free_ranks(cascade)
    }


def random_inputs(cascade: Cascade, sizes: Mapping[str, int], seed: int) -> dict[str, np.ndarray]:
    """Standard-normal float64 inputs shaped by the cascade's declarations and `sizes`."""
    bound = bind_sizes(cascade, sizes)
    rng = np.random.default_rng(seed)
    return {
        decl.name: rng.standard_normal(tuple(bound[r] for r in decl.ranks))
        for decl in cascade.inputs
    }
