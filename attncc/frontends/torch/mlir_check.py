"""`attncc import --check`: a site's cascade, run by the reference interpreter on the tensors the
module computed at that point, against the module's own attention output there.

The cascade runs at the module's precision (float32 or float64): a mask that hides keys with a
large finite value stays a tensor where it hides every key of a query row (`mlir_masks`), and
the module's result on such a row is the average its own rounding gives (in float32,
s - 1e9 is -1e9 for every score |s| < 32, so the row's weights are equal); the cascade,
adding the same BIAS in the same precision, rounds alike. (In float64 a fill of -1e9 keeps the
scores' differences, s - 1e9 exact to 1e-7, so masked_fill's equal weights and the cascade's
added fill differ on such rows: the check reports that.)

A query row where every key is hidden with -inf has no softmax: the cascade as written gives
0/0 there (its row maximum is -inf), SDPA gives 0 and a softmax written out NaN. The check sets
the cascade's rows without a key to what the site's module gives (`AttentionSite.empty_row`),
so the module is held to that, and counts them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch_mlir import ir

from attncc.backends.numpy.reference import interpret
from attncc.frontends.torch.import_inputs import DTYPES
from attncc.frontends.torch.mlir_import import Exported
from attncc.frontends.torch.mlir_masks import MaskTerm
from attncc.frontends.torch.mlir_patterns import AttentionSite
from attncc.frontends.torch.position_masks import MaskKind

TOLERANCE = {"f32": 1e-4, "f64": 1e-10}
"""Largest accepted |cascade - module| relative to max(1, max |module|), per dtype."""


@dataclass(frozen=True)
class SiteCheck:
    """max |cascade - module| at a site, the largest error accepted there, and how many query
    rows (over batch and heads) see no key."""

    error: float
    tolerance: float
    empty_rows: int = 0

    @property
    def ok(self) -> bool:
        return self.error <= self.tolerance


def check_site(exported: Exported, site: AttentionSite) -> SiteCheck:
    """The site's cascade on the tensors the module computed there, against its output."""
    dtype = DTYPES[exported.dtype]
    inputs = _cascade_inputs(exported, site, dtype)
    arrays = {name: t.contiguous().numpy() for name, t in inputs.items()}
    run = interpret(site.cascade(), arrays, keep_temporaries=True)
    # GM[b, h, p] is the row's largest score: -inf where no key is visible.
    empty = np.isneginf(run["GM"])
    got = np.where(empty[..., None], site.empty_row, np.swapaxes(run["AV"], -1, -2))
    d = site.dims
    want = _data(exported, site.output, dtype).reshape(d.batch, d.heads, d.queries, d.value_dim)
    want_array = want.numpy()
    finite = np.abs(want_array[np.isfinite(want_array)])
    scale = max(1.0, float(finite.max())) if finite.size else 1.0
    error = _difference(got, want_array)
    return SiteCheck(error, TOLERANCE[exported.dtype] * scale, int(np.count_nonzero(empty)))


def _data(exported: Exported, value: ir.Value, dtype: torch.dtype) -> torch.Tensor:
    return exported.data(value).detach().to(dtype)


def _cascade_inputs(
    exported: Exported, site: AttentionSite, dtype: torch.dtype
) -> dict[str, torch.Tensor]:
    """Q[b,h,e,p], K[b,g,e,m], V[b,g,f,m] and, with mask tensors, BIAS[b,h,p,m]."""
    d = site.dims
    q = _data(exported, site.query, dtype).reshape(d.batch, d.heads, d.queries, d.head_dim)
    k = _data(exported, site.key, dtype)
    k = k.reshape(d.batch, d.kv_heads, *k.shape[-2:])
    v = _data(exported, site.value, dtype).reshape(d.batch, d.kv_heads, d.keys, d.value_dim)
    inputs = {
        "Q": q.transpose(-1, -2),
        "K": k if site.key_transposed else k.transpose(-1, -2),
        "V": v.transpose(-1, -2),
    }
    if site.masks:
        bias = torch.zeros(d.batch, d.heads, d.queries, d.keys, dtype=dtype)
        for term in site.masks:
            added = _added(term, exported.data(term.value), dtype)
            bias += added.broadcast_to(term.scores_shape).reshape(bias.shape)
        inputs["BIAS"] = bias
    return inputs


def _added(term: MaskTerm, mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """What a mask adds to the scores at the softmax: an additive mask times the scale after
    it; a boolean mask's hiding value (its fill times that scale) where it hides."""
    if term.kind is MaskKind.ADDITIVE:
        return mask.to(dtype) * term.scale
    hidden = ~mask.bool() if term.kind is MaskKind.VISIBLE else mask.bool()
    return torch.zeros(hidden.shape, dtype=dtype).masked_fill(hidden, term.hiding)


def _difference(got: np.ndarray, want: np.ndarray) -> float:
    """max |got - want| over finite points; infinite when they are not finite at the same places."""
    finite = np.isfinite(want)
    if not np.array_equal(finite, np.isfinite(got)):
        return float("inf")
    return float(np.abs(got[finite] - want[finite]).max()) if finite.any() else 0.0
