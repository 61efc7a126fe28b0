"""The masks of one attention site in a torch-mlir module: which become a predicate over key
position m and query position p (an IR filter, whose empty tiles are skipped), and which stay
tensors (the cascade's BIAS input).

A `MaskTerm` is one mask the pattern matcher met between the product of queries and keys and
the softmax. `read_masks` evaluates each symbolically (`mlir_symbolic`); one computed from
positions alone is proved a predicate by `position_masks.mask_predicate`, and the rest stay
tensors. A mask that hides keys with a large finite value (-1e9, finfo.min) in place of -inf
is the same as its predicate on every query row that sees some key, but on a row where it
hides every key the module averages over the hidden keys, where -inf leaves no key (0 from
SDPA, NaN from a softmax written out). So such a mask becomes a predicate only when
`rows_without_keys` proves that no row is left without a key, and no data mask that the
analysis cannot see could hide the rest of a row.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from torch_mlir import ir

from attncc.frontends.torch.mlir_symbolic import symbolic
from attncc.frontends.torch.position_masks import (
    MaskKind,
    MaskPredicate,
    Symbolic,
    fold,
    mask_predicate,
    rows_without_keys,
)
from attncc.frontends.torch.spec import MaskTensor
from attncc.ir import Call, Const, Coord, Expr

CAUSAL = Call("le", (Coord("m"), Coord("p")))


@dataclass(frozen=True)
class MaskTerm:
    """A mask that acts on scores of shape `scores_shape` as `kind` says. `scale` is the scale
    applied to the scores after the mask, which scales an additive mask and a fill too. A
    boolean mask puts `fill` in place of a hidden score: SDPA's boolean mask -inf, masked_fill
    and where their constant, which may be a large finite value (-1e9, finfo.min)."""

    value: ir.Value
    kind: MaskKind
    scores_shape: tuple[int, ...]
    scale: float = 1.0
    fill: float = -math.inf

    @property
    def hiding(self) -> float:
        """A hidden key's score at the softmax, for a boolean mask."""
        return self.fill * self.scale

    @property
    def finite_fill(self) -> bool:
        return self.kind is not MaskKind.ADDITIVE and math.isfinite(self.hiding)


@dataclass(frozen=True)
class SiteMasks:
    """What a site's masks hide: `causal` (m <= p), a `predicate` over m and p, and the
    masks that stay tensors, with notes on the choices for the report."""

    causal: bool
    predicate: Expr | None
    tensors: tuple[MaskTerm, ...]
    notes: tuple[str, ...]

    @property
    def mask_tensor(self) -> MaskTensor:
        """BOOLEAN when every tensor mask hides with -inf (the cascade's additive form of a
        boolean mask); a finite fill enters as its value, so ADDITIVE."""
        if not self.tensors:
            return MaskTensor.NONE
        boolean = all(t.kind is not MaskKind.ADDITIVE and not t.finite_fill for t in self.tensors)
        return MaskTensor.BOOLEAN if boolean else MaskTensor.ADDITIVE


def read_masks(terms: list[MaskTerm], *, causal: bool, queries: int, keys: int) -> SiteMasks:
    """The masks `terms` of a site with `queries` x `keys` scores (and SDPA's `causal`)."""
    exact: list[Expr] = [CAUSAL] if causal else []
    finite: list[tuple[MaskTerm, list[Expr]]] = []
    tensors: list[MaskTerm] = []
    notes: list[str] = []
    for term in terms:
        found = _predicate(term)
        if isinstance(found, MaskPredicate):
            conjuncts = [] if found.predicate is None else _conjuncts(found.predicate)
            if conjuncts and (found.finite_fill or term.finite_fill):
                finite.append((term, conjuncts))
            else:
                exact.extend(conjuncts)
            continue
        if found is not None:
            notes.append(f"a mask computed from positions stays a tensor: {found}")
        tensors.append(term)
    if finite:
        every = exact + [c for _, conjuncts in finite for c in conjuncts]
        reason = _finite_stays(every, bool(tensors), queries, keys)
        if reason is None:
            exact = every
            notes.append(
                "a mask hides keys with a large finite value where the cascade uses -inf: the "
                "same result, as every query row sees a key"
            )
        else:
            tensors.extend(term for term, _ in finite)
            notes.append(f"a mask computed from positions stays a tensor: {reason}")
    # A causal conjunct is said as `causal`; the rest, in order, is the predicate.
    rest = [p for i, p in enumerate(exact) if p != CAUSAL and p not in exact[:i]]
    predicate = None
    for p in rest:
        predicate = p if predicate is None else Call("and", (predicate, p))
    return SiteMasks(CAUSAL in exact, predicate, tuple(tensors), tuple(notes))


def _finite_stays(every: list[Expr], data_masks: bool, queries: int, keys: int) -> str | None:
    """Why masks that hide with a finite value cannot be predicates (None when they can):
    a query row may be left without a key, where the module averages over the hidden keys."""
    if data_masks:
        return (
            "it hides keys with a large finite value, and a tensor mask beside it may hide the "
            "rest of a query row, where the module averages over the keys the fill hides"
        )
    if not every:
        return None
    predicate = every[0]
    for p in every[1:]:
        predicate = Call("and", (predicate, p))
    empty = rows_without_keys(predicate, queries, keys)
    if empty is False:
        return None
    seen = "hides every key of some query row" if empty else "may hide every key of a query row"
    return (
        f"it {seen} with a large finite value, where the module averages over the hidden "
        "keys and -inf would leave none"
    )


def _conjuncts(predicate: Expr) -> list[Expr]:
    if isinstance(predicate, Call) and predicate.op == "and":
        return [c for arg in predicate.args for c in _conjuncts(arg)]
    return [predicate]


def _predicate(term: MaskTerm) -> MaskPredicate | str | None:
    """The predicate a mask computes from positions; a reason when it is computed from
    positions but is not a predicate; None when it depends on data."""
    sym = symbolic(term.value)
    if sym is None:
        return None
    if term.kind is MaskKind.ADDITIVE and term.scale != 1.0:
        sym = Symbolic(sym.shape, fold(Call("mul", (sym.expr, Const(term.scale)))))
    return mask_predicate(sym, term.scores_shape, term.kind)
