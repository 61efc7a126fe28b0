"""Hypothesis strategies for cascades in the domain of the softmax passes (`defer-div`,
`partition`, `running-reduce`), which `strategies.cascades()` only rarely draws.

`softmax_cases()` draws one or two softmaxes, each over a random reduced rank, kept for random
batch-like ranks and a query-like rank, with its scores read from an input or contracted from
two inputs over a head rank (a second reduced rank), scaled by a random constant and sometimes
masked by a coordinate filter (`where m <= p else -inf` and friends). Each softmax is read by
one or two of: a sum of products with a division by a value that does not vary with the reduced
rank (defer-div applies), the same with a divisor that does vary (defer-div must refuse), the
division already deferred, the softmax itself as an output, and a log-sum-exp `GM + log(SD)`.
The draw records which of these it made, so that tests know what each pass should do.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from hypothesis import strategies as st
from strategies import idx

from attncc.frontends.builder import CascadeBuilder, Index, TensorRef, Value, exp, log
from attncc.ir import Cascade

# Rank names: single letters, so that partition's M1/M0 never collide with a declared rank.
# No rank is named like a tensor of the draw (S, V, W, X) or like a tile rank.
RANK_NAMES = ("B", "E", "F", "G", "H", "K", "L", "M", "N", "P", "Q", "R", "T")
SCALES = (1.0, 0.5, 0.125, 2.0, -1.0, 0.3535533905932738)
FILTERS = ("none", "causal", "anticausal", "window", "band", "parity", "bound")
# How a softmax is read. `deferrable`: sum_m (SN / D) * V with D independent of m;
# `varying`: the same with D depending on m; `deferred`: (sum_m SN * V) / SD, already 2-pass;
# `probabilities`: the softmax itself is an output; `lse`: GM + log(SD); `max_out`, `sum_out`:
# the max GM or the sum SD is itself an output (FlashAttention returns such statistics).
READERS = ("deferrable", "varying", "deferred", "probabilities", "lse", "max_out", "sum_out")
# Readers after which running-reduce can turn the softmax into a single pass over the tiles.
RUNNABLE_READERS = frozenset({"deferrable", "deferred", "lse", "max_out", "sum_out"})


@dataclass(frozen=True)
class SoftmaxSpec:
    """What was drawn for one softmax: its reduced rank's name and how it is read."""

    rank: str
    readers: tuple[str, ...]
    filter: str

    @property
    def runnable(self) -> bool:
        """running-reduce should rewrite this softmax's max (after defer-div)."""
        return set(self.readers) <= RUNNABLE_READERS


@dataclass(frozen=True)
class SoftmaxCase:
    cascade: Cascade
    softmaxes: tuple[SoftmaxSpec, ...]

    @property
    def deferrable(self) -> bool:
        return any("deferrable" in s.readers for s in self.softmaxes)

    @property
    def varying(self) -> bool:
        return any("varying" in s.readers for s in self.softmaxes)

    def __repr__(self) -> str:  # hypothesis prints this for a failing example
        from attncc.ir import print_cascade

        return f"SoftmaxCase({self.softmaxes!r})\n{print_cascade(self.cascade)}"


@dataclass
class _Draw:
    draw: st.DrawFn
    builder: CascadeBuilder
    free: list[str]
    used: set[str] = field(default_factory=set)
    filters: tuple[str, ...] = FILTERS
    readers: tuple[str, ...] = READERS

    def pick(self, options: tuple | list):
        return self.draw(st.sampled_from(options))

    def chance(self, percent: int) -> bool:
        return self.draw(st.integers(0, 99)) < percent

    def new_rank(self, *, small: bool = False) -> str:
        """Declare one more rank: symbolic, or a small constant size."""
        name = self.free.pop(0)
        size = None if self.chance(60) else self.draw(st.integers(1, 3 if small else 5))
        self.builder.rank(name, size)
        return name

    def name(self, base: str) -> str:
        """`base`, or `base2`, `base3`, ... when it is taken (two softmaxes, two readers)."""
        name, suffix = base, 2
        while name in self.used:
            name, suffix = f"{base}{suffix}", suffix + 1
        self.used.add(name)
        return name

    def shuffled(self, ranks: list[str]) -> list[str]:
        return list(self.draw(st.permutations(ranks)))


def _at(tensor: str | TensorRef, ranks: list[str]) -> Value:
    ref = tensor if isinstance(tensor, TensorRef) else TensorRef(tensor)
    return ref[tuple(idx(r) for r in ranks)]


def _indices(ranks: list[str]) -> list[Index]:
    return [idx(r) for r in ranks]


@dataclass(frozen=True)
class _Frame:
    """The ranks of one softmax: kept batch-like ranks, an optional query rank (kept too, last),
    the reduced rank, an optional head rank contracted into the scores and a value rank."""

    batch: tuple[str, ...]
    query: str | None
    reduced: str
    heads: str | None
    value: str | None

    @property
    def kept(self) -> list[str]:
        return [*self.batch, *([self.query] if self.query else [])]


def _predicate(d: _Draw, kind: str, f: _Frame) -> Value | None:
    """A coordinate filter between the reduced rank r and the query rank q. `anticausal`,
    `window`, `band` and `parity` can mask whole leading tiles of r; `bound` trailing ones."""
    r, width = idx(f.reduced), d.draw(st.integers(1, 3))
    if kind == "bound":
        return r < width
    if kind == "none" or f.query is None:
        return None
    q = idx(f.query)
    return {
        "causal": r <= q,
        "anticausal": r >= q,
        "window": r + width > q,
        "band": (r <= q) & (r + width > q),
        "parity": (r + q) % 2 == 0,
    }[kind]


def _scores(d: _Draw, f: _Frame) -> tuple[Value, list[str] | None]:
    """The scores over kept + reduced ranks (an input, or a contraction over the head rank),
    maybe scaled; with the input's layout when they are that input, read as it is."""
    if f.heads is None:
        x = d.name("X")
        layout = d.shuffled([*f.kept, f.reduced])
        d.builder.input(x, _indices(layout))
        scale = d.pick(SCALES)
        if scale == 1.0 and d.chance(50):
            return _at(x, layout), layout
        return _at(x, layout) * scale, None
    q, k = d.name("QI"), d.name("KI")
    q_layout = d.shuffled([*f.kept, f.heads])
    k_layout = d.shuffled([r for r in f.batch if d.chance(50)] + [f.heads, f.reduced])
    d.builder.input(q, _indices(q_layout))
    d.builder.input(k, _indices(k_layout))
    return _at(q, q_layout) * _at(k, k_layout) * d.pick(SCALES), None


def _values(d: _Draw, f: _Frame) -> Value:
    """V over the reduced rank, the value rank if any, and some of the batch ranks."""
    v = d.name("V")
    ranks = [r for r in f.batch if d.chance(50)] + [f.reduced]
    if f.value is not None:
        ranks.append(f.value)
    layout = d.shuffled(ranks)
    d.builder.input(v, _indices(layout))
    return _at(v, layout)


def _divisor(d: _Draw, reader: str, sd: Value, f: _Frame) -> Value:
    """What SN is divided by: independent of the reduced rank unless `reader` is `varying`."""
    if reader == "varying":
        w = d.name("W")
        d.builder.input(w, [idx(f.reduced)])
        wm = _at(w, [f.reduced])
        return sd + exp(wm) if d.chance(50) else sd * (1.0 + wm * wm)
    kind = d.pick(("sd", "sd", "scaled", "other"))
    if kind == "sd":
        return sd
    if kind == "scaled" or not f.kept:
        return sd * d.pick((2.0, 0.25, 3.0))
    w, rank = d.name("W"), d.pick(f.kept)
    d.builder.input(w, [idx(rank)])
    return 1.0 + exp(_at(w, [rank]))


def _fill(d: _Draw, where: Value | None) -> float | None:
    if where is None:
        return None
    return -float("inf") if d.chance(85) else d.pick((-30.0, 0.0))


def _softmax(d: _Draw, f: _Frame) -> tuple[SoftmaxSpec, list[tuple[str, list[str]]]]:
    """Append one softmax over `f.reduced` and its readers; return the spec and the tensors
    that the readers write, with their ranks."""
    b = d.builder
    scores, layout = _scores(d, f)
    filter_kind = d.pick(d.filters)
    where = _predicate(d, filter_kind, f)
    if where is None:
        filter_kind = "none"
    if layout is None or where is not None:
        layout = d.shuffled([*f.kept, f.reduced])
        name = b.let(d.name("S"), _indices(layout), scores, where=where, fill=_fill(d, where))
        scores = _at(name, layout)
    kept = f.kept
    gm = b.let(d.name("GM"), _indices(kept), scores, reduce="max")
    sn = b.let(d.name("SN"), _indices(layout), exp(scores - _at(gm, kept)))
    sd = b.let(d.name("SD"), _indices(kept), _at(sn, layout))
    count = 2 if d.chance(25) else 1
    readers = tuple(d.draw(st.permutations(d.readers))[:count])
    outputs = [_reader(d, reader, sn, sd, gm, layout, f) for reader in readers]
    return SoftmaxSpec(f.reduced, readers, filter_kind), outputs


def _reader(
    d: _Draw, reader: str, sn: TensorRef, sd: TensorRef, gm: TensorRef, layout: list[str], f: _Frame
) -> tuple[str, list[str]]:
    """Append one reader of the softmax; return the tensor it writes and its ranks."""
    b, kept = d.builder, f.kept
    if reader == "max_out":
        return gm.name, kept
    if reader == "sum_out":
        return sd.name, kept
    if reader == "lse":
        return b.let(d.name("LSE"), _indices(kept), _at(gm, kept) + log(_at(sd, kept))).name, kept
    if reader == "probabilities":
        return b.let(d.name("A"), _indices(layout), _at(sn, layout) / _at(sd, kept)).name, layout
    v = _values(d, f)
    # A second reduced rank: the value rank summed as well (`AV[p] = A[m,p] * V[f,m]`).
    out = [*kept, f.value] if f.value is not None and d.chance(75) else list(kept)
    out = d.shuffled(out)
    if reader == "deferred":
        snv = b.let(d.name("SNV"), _indices(out), _at(sn, layout) * v)
        return b.let(d.name("AV"), _indices(out), _at(snv, out) / _at(sd, kept)).name, out
    divisor = _divisor(d, reader, _at(sd, kept), f)
    a = b.let(d.name("A"), _indices(layout), _at(sn, layout) / divisor)
    product = v * _at(a, layout) if d.chance(30) else _at(a, layout) * v
    return b.let(d.name("AV"), _indices(out), product).name, out


@st.composite
def softmax_cases(
    draw: st.DrawFn,
    *,
    max_batch: int = 2,
    filters: tuple[str, ...] = FILTERS,
    readers: tuple[str, ...] = READERS,
) -> SoftmaxCase:
    """One or two softmaxes (over the same or different ranks) and their readers; `filters`
    and `readers` narrow what is drawn (subsets of `FILTERS` and `READERS`)."""
    d = _Draw(draw, CascadeBuilder("softmaxes"), list(draw(st.permutations(RANK_NAMES))))
    d.filters, d.readers = filters, readers
    batch = tuple(d.new_rank(small=True) for _ in range(draw(st.integers(0, max_batch))))
    query = d.new_rank() if d.chance(85) else None
    reduced = d.new_rank()
    heads = d.new_rank(small=True) if d.chance(40) else None
    value = d.new_rank(small=True) if d.chance(70) else None
    frame = _Frame(batch, query, reduced, heads, value)
    spec, outputs = _softmax(d, frame)
    specs = [spec]
    if d.chance(35):
        second = reduced if d.chance(50) else d.new_rank()
        heads = heads if d.chance(50) else None
        spec, more = _softmax(d, _Frame(batch, query, second, heads, value))
        specs.append(spec)
        outputs += more
    declared: set[str] = set()
    for name, ranks in outputs:
        if name not in declared:  # two readers may name the same tensor (max_out twice)
            declared.add(name)
            d.builder.output(name, _indices(ranks))
    return SoftmaxCase(d.builder.build(), tuple(specs))
