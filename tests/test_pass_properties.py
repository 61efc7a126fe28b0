"""Properties every pass must keep, on random cascades, and the refusals of each pass.

For each generated cascade, every pass that can apply (dce, defer-div, canonicalize, fuse,
`partition(rank=R,tile=T)` for each rank R followed by running-reduce, and the
`flash` pipeline) must give a cascade that verifies, round-trips through the text form and
computes what the original computes (`attncc.differential`, float64, small random sizes). A pass
that leaves a cascade unchanged where it was asked to rewrite it must say why in a remark.
`pass_strategies.softmax_cases()` draws what defer-div and running-reduce rewrite; after `flash`
each softmax that running-reduce accepts needs one pass over the tiles.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from hypothesis import given, note, settings
from hypothesis import strategies as st
from pass_strategies import SoftmaxCase, softmax_cases
from strategies import cascades

from attncc.analysis.passes import analyze_passes
from attncc.backends.numpy.reference import interpret
from attncc.differential import mismatches
from attncc.errors import PassError, VerifyError
from attncc.frontends.library import attention_1pass, attention_3pass
from attncc.ir import (
    Access,
    Call,
    Cascade,
    ReduceOp,
    parse,
    print_cascade,
    product_factors,
    verify,
)
from attncc.passes import PASSES, CascadePass, PassManager, PassResult, parse_pipeline, run_pipeline
from attncc.passes.partition import PartitionRank

# Small tiles, so that the differential sizes (up to 3 tiles and a partial one) stay small.
TILES = (1, 2, 3)
# Two runs per rewritten cascade: the whole file has to run in well under 90 s on 2 cores.
TRIALS = 2
GENERATED = settings(max_examples=200, deadline=None)
DOMAIN = settings(max_examples=100, deadline=None)


# ---------------------------------------------------------------------------------------------
# Helpers


# Passes that take no options and apply to any cascade.
STANDALONE = ("dce", "defer-div", "canonicalize", "fuse")


def flash(tile: int) -> tuple[CascadePass, ...]:
    """The `flash` pipeline with a small tile (its default, 64, would make the differential
    sizes of a tiled rank reach 195)."""
    return tuple(
        replace(p, tile=tile) if isinstance(p, PartitionRank) else p
        for p in parse_pipeline("flash")
    )


def _division_feeds_sum(cascade: Cascade) -> bool:
    """Some sum of products has a factor that reads an elementwise division: defer-div's
    candidates, which it either rewrites or explains."""
    for consumer in cascade.einsums:
        if consumer.reduce is not ReduceOp.SUM or consumer.filter or consumer.init is not None:
            continue
        for factor in product_factors(consumer.expr):
            writer = cascade.writer(factor.tensor) if isinstance(factor, Access) else None
            if (
                writer is not None
                and writer.reduce is None
                and writer.filter is None
                and writer.init is None
                and isinstance(writer.expr, Call)
                and writer.expr.op == "div"
            ):
                return True
    return False


def _must_rewrite(step: CascadePass, cascade: Cascade) -> bool:
    """Whether `step` was asked to rewrite `cascade`, so that leaving it alone is a refusal."""
    if step.name in ("partition", "running-reduce"):
        return True
    return step.name == "defer-div" and _division_feeds_sum(cascade)


class Checker:
    """Applies passes and checks each result once (a cascade already compared to the original
    is not run again: many partitions refuse, and running-reduce often finds nothing)."""

    def __init__(self, original: Cascade) -> None:
        self.original = original
        self.checked: set[Cascade] = {original}

    def apply(self, step: CascadePass, cascade: Cascade) -> PassResult:
        result = step.apply(cascade)
        after = result.cascade
        label = f"{step} on\n{print_cascade(cascade)}"
        if after == cascade and _must_rewrite(step, cascade):
            assert result.remarks, f"{label}\nleft it unchanged without a remark"
        self.check(after, label)
        return result

    def check(self, after: Cascade, label: str) -> None:
        if after in self.checked:
            return
        text = print_cascade(after)
        note(f"{label}\ngave\n{text}")
        try:
            verify(after)
        except VerifyError as error:
            raise AssertionError(f"{label}\ngave invalid IR:\n{text}\n{error}") from error
        assert parse(text) == after, f"{label}\ndoes not round-trip:\n{text}"
        found = mismatches(self.original, after, trials=TRIALS)
        assert not found, f"{label}\ngave\n{text}\nwhich differs: {[str(m) for m in found]}"
        self.checked.add(after)


def _check_every_pass(cascade: Cascade, tiles: list[int]) -> None:
    """Every standalone pass, partition(rank, tile) + running-reduce for each rank, and flash."""
    checker = Checker(cascade)
    for name in STANDALONE:
        (step,) = parse_pipeline(name)
        checker.apply(step, cascade)
    running = PASSES["running-reduce"]()
    for rank, tile in zip(cascade.all_ranks(), tiles, strict=False):
        partitioned = checker.apply(PartitionRank(rank=rank.name, tile=tile), cascade).cascade
        result = checker.apply(running, partitioned)
        if result.cascade != partitioned:
            # A second running-reduce finds no full max left to run: idempotent.
            assert checker.apply(running, result.cascade).cascade == result.cascade
    after, _ = PassManager(flash(tiles[0])).run(cascade)
    checker.check(after, f"flash(tile={tiles[0]}) on\n{print_cascade(cascade)}")


TILE_LISTS = st.lists(st.sampled_from(TILES), min_size=12, max_size=12)


# ---------------------------------------------------------------------------------------------
# Properties on random cascades


@GENERATED
@given(cascades(max_einsums=6, extreme_constants=False), TILE_LISTS)
def test_every_pass_preserves_generated_cascades(cascade: Cascade, tiles: list[int]) -> None:
    _check_every_pass(cascade, tiles)


@DOMAIN
@given(softmax_cases(), TILE_LISTS)
def test_every_pass_preserves_softmax_cascades(case: SoftmaxCase, tiles: list[int]) -> None:
    _check_every_pass(case.cascade, tiles)


@DOMAIN
@given(softmax_cases(), st.sampled_from(TILES))
def test_flash_runs_each_softmax_in_one_pass(case: SoftmaxCase, tile: int) -> None:
    cascade = case.cascade
    checker = Checker(cascade)
    steps = flash(tile)
    records = []
    for step in steps:
        result = checker.apply(step, cascade)
        records.append(result)
        cascade = result.cascade
    deferred, _, running, _ = records
    if case.deferrable:
        assert deferred.cascade != case.cascade, "defer-div left a deferrable division"
    if case.varying:
        assert any("varies with" in r for r in deferred.remarks), deferred.remarks
    if all(s.runnable for s in case.softmaxes):
        assert not running.remarks, f"running-reduce refused: {running.remarks}"
    if not running.remarks:
        outer = {p.outer for p in cascade.partitions}
        counts = {r.rank: r.passes for r in analyze_passes(cascade) if r.rank in outer}
        assert counts == dict.fromkeys(outer, 1), f"{counts}\n{print_cascade(cascade)}"


# ---------------------------------------------------------------------------------------------
# Refusals: the cascade comes back unchanged, and the remark says why

SOFTMAX = """
cascade softmax
rank F, M, N, P
input X[m,p]
input V[f,m]
input W[m]
output AV[f,p]

GM[p] = max(m) X[m,p]
SN[m,p] = exp(X[m,p] - GM[p])
SD[p] = SN[m,p]
{body}
"""


def _softmax(body: str) -> Cascade:
    return parse(SOFTMAX.format(body=body.strip()))


def _refuses(pipeline: str, cascade: Cascade) -> str:
    """Apply the single pass of `pipeline`; it must change nothing; return its remarks."""
    (step,) = parse_pipeline(pipeline)
    result = step.apply(cascade)
    assert result.cascade == cascade
    assert result.remarks
    return " ".join(result.remarks)


def test_defer_div_refuses_a_divisor_that_varies_with_the_sum() -> None:
    cascade = _softmax(
        """
        A[m,p] = SN[m,p] / (SD[p] + exp(W[m]))
        AV[f,p] = A[m,p] * V[f,m]
        """
    )
    remark = _refuses("defer-div", cascade)
    assert "varies with m" in remark and "cannot move past the sum" in remark


def test_defer_div_says_when_there_is_no_sum() -> None:
    cascade = parse("cascade t\nrank M\ninput X[m]\noutput Y[m]\nY[m] = X[m] / 2")
    assert "no sum of products" in _refuses("defer-div", cascade)


def test_partition_refuses_a_partitioned_rank() -> None:
    cascade = attention_1pass(tile=4)
    assert "already partitioned" in _refuses("partition(rank=M,tile=2)", cascade)
    assert "already partitioned" in _refuses("partition(rank=M1,tile=2)", cascade)
    assert "already partitioned" in _refuses("partition(rank=M0,tile=2)", cascade)


def test_partition_refuses_shifted_reads_and_running_updates() -> None:
    shifted = parse("cascade t\nrank M\ninput X[m]\noutput Y[]\nY[] = X[m] * X[M-1-m]")
    assert "not at m" in _refuses("partition(rank=M,tile=2)", shifted)
    running = parse(
        "cascade t\nrank M\ninput X[m]\noutput Y[]\nR[0] = 0\nR[m+1] = R[m] + X[m]\nY[] = R[M]"
    )
    assert "running update over m" in _refuses("partition(rank=M,tile=2)", running)


def test_partition_without_a_reduction_asks_for_a_rank() -> None:
    cascade = parse("cascade t\nrank M\ninput X[m]\noutput Y[m]\nY[m] = X[m] * 2")
    assert "no rank is max-reduced or reduced by an output" in _refuses("partition", cascade)


def test_partition_without_a_max_tiles_what_the_outputs_reduce() -> None:
    cascade = parse("cascade t\nrank M, N\ninput X[m,n]\noutput Y[n]\nY[n] = X[m,n]")
    tiled, _ = run_pipeline(cascade, "partition")
    assert [p.rank for p in tiled.partitions] == ["M"]


def test_running_reduce_needs_a_partition() -> None:
    assert "no partitioned rank" in _refuses("running-reduce", attention_3pass())
    with pytest.raises(PassError, match="partition the rank first"):
        parse_pipeline("running-reduce(rank=M)")[0].apply(attention_3pass())


def test_running_reduce_refuses_an_exp_read_by_a_non_sum() -> None:
    # The probabilities themselves are the output: each needs the final max.
    cascade = _softmax("A[m,p] = SN[m,p] / SD[p]\nAV[f,p] = A[m,p] * V[f,m]")
    tiled = PartitionRank(rank="M", tile=2).apply(cascade).cascade
    remark = _refuses("running-reduce", tiled)
    assert "kept as a full max" in remark and "is not a sum over m1, m0" in remark


def test_running_reduce_refuses_a_max_read_by_a_non_exp() -> None:
    cascade = _softmax("L[m,p] = X[m,p] - GM[p]\nAV[f,p] = L[m,p] * V[f,m] * SD[p]")
    tiled = PartitionRank(rank="M", tile=2).apply(cascade).cascade
    assert "is not an elementwise exp" in _refuses("running-reduce", tiled)


def test_running_reduce_refuses_a_filtered_max_or_one_over_more_ranks() -> None:
    filtered = parse(
        "cascade t\nrank M, P\ninput X[m,p]\noutput Y[p]\n"
        "Y[p] = max(m) X[m,p] where m <= p else -inf"
    )
    tiled = PartitionRank(rank="M", tile=2).apply(filtered).cascade
    assert "no unfiltered max over both m1 and m0" in _refuses("running-reduce", tiled)
    wider = parse("cascade t\nrank M, N\ninput X[m,n]\noutput Y[]\nY[] = max(m, n) X[m,n]")
    tiled = PartitionRank(rank="M", tile=2).apply(wider).cascade
    assert "no unfiltered max over both" in _refuses("running-reduce", tiled)


def test_pass_options_that_make_no_sense_raise() -> None:
    with pytest.raises(PassError, match="no rank Z"):
        PartitionRank(rank="Z", tile=2).apply(attention_3pass())
    with pytest.raises(PassError, match="positive"):
        PartitionRank(rank="M", tile=0).apply(attention_3pass())


# ---------------------------------------------------------------------------------------------
# Bugs found by the properties above (minimal reproducers; they fail until attncc is fixed)


def test_running_reduce_survives_a_fully_masked_first_tile() -> None:
    # Anti-causal mask: for p >= 2 the first tile of m (m = 0, 1) is all -inf, so its running
    # max is -inf and exp(-inf - -inf) is NaN; the rescaling never removes it.
    cascade = parse(
        """
        cascade anticausal
        rank M, P
        input X[m,p]
        output Y[p]

        S[m,p] = X[m,p] where m >= p else -inf
        GM[p] = max(m) S[m,p]
        SN[m,p] = exp(S[m,p] - GM[p])
        SD[p] = SN[m,p]
        Y[p] = GM[p] + log(SD[p])
        """
    )
    after, _ = PassManager(parse_pipeline("partition(rank=M,tile=2),running-reduce")).run(cascade)
    inputs = {"X": np.random.default_rng(0).standard_normal((4, 4))}
    want = interpret(cascade, inputs, {"M": 4, "P": 4})["Y"]
    got = interpret(after, inputs, {"M": 4, "P": 4})["Y"]
    assert np.isfinite(want).all()
    np.testing.assert_allclose(got, want)


@pytest.mark.parametrize("output", ["GM", "SD"])
def test_running_reduce_keeps_a_max_or_sum_that_is_an_output(output: str) -> None:
    cascade = parse(
        f"""
        cascade stats
        rank M, P
        input X[m,p]
        output Y[p]
        output {output}[p]

        GM[p] = max(m) X[m,p]
        SN[m,p] = exp(X[m,p] - GM[p])
        SD[p] = SN[m,p]
        Y[p] = GM[p] + log(SD[p])
        """
    )
    tiled = PartitionRank(rank="M", tile=2).apply(cascade).cascade
    result = PASSES["running-reduce"]().apply(tiled)
    verify(result.cascade)
    assert not mismatches(cascade, result.cascade, trials=TRIALS)


def test_partition_rewrites_the_initial_value_of_a_running_update() -> None:
    # R is tiled along m, but its initial value still reads the coordinate m (or, in other
    # drawn cascades, a tensor over m that is now tiled): the result does not verify.
    cascade = parse(
        """
        cascade init
        rank M, N
        input X[m,n]
        output Y[]

        R[m,0] = m
        R[m,n+1] = R[m,n] + X[m,n]
        Y[] = R[m,N]
        """
    )
    after = PartitionRank(rank="M", tile=2).apply(cascade).cascade
    verify(after)
    assert not mismatches(cascade, after, trials=TRIALS)


def test_partition_of_a_rank_read_through_floor_division_round_trips() -> None:
    # n -> n1*N0 + n0 inside X[n//2] gives floor(N0*n1/2 + n0/2), which prints as
    # X[(1/2*n1*N0+1/2*n0)//1]: text that does not parse.
    cascade = parse(
        """
        cascade gqa
        rank E, N = 2*E
        input X[e]
        output Y[]

        T[n] = X[n//2]
        Y[] = T[n]
        """
    )
    after = PartitionRank(rank="N", tile=3).apply(cascade).cascade
    assert parse(print_cascade(after)) == after
    assert not mismatches(cascade, after, trials=TRIALS)
