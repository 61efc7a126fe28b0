"""HiLo attention (Pan et al. 2022, "Fast Vision Transformers with HiLo Attention", LITv2):
the heads of a layer in two groups over an image of `shape` = (height, width) tokens, laid out
row-major.

- Hi-Fi heads (HH of them) attend within non-overlapping s x s windows: the high frequencies.
  The mask is `masks.halo_2d(shape, s, 0)`: query and key in the same window.
- Lo-Fi heads (HL) attend, from every token, the keys and values average-pooled over each
  s x s window: the low frequencies, with (height/s) * (width/s) keys in all. HiLo pools the input x
  and then projects it to keys and values; a projection is linear (a bias included), so pooling
  the projected K and V, as here, gives the same keys and values.

Each group has its own Q, K and V (HiLo's `h_qkv` and `l_q`, `l_kv` projections) and its own
key/value groups under GQA; the outputs AVH[b,hh,f,p] and AVL[b,hl,f,p] are concatenated along
the heads before the output projection. Pooling is an Einsum over the window offsets (SY, SX):

    PK[b,gl,e,n] = sum(sy,sx) KL[b,gl,e,((n//W')*s + sy)*width + (n%W')*s + sx] * (1/s^2)

with W' = width/s. Windows and pooling need height and width divisible by s; the cascade fixes
P = M = height*width and the pooled key rank N = (height/s)*(width/s).

The cascade holds both attentions and the pooling, so the reference interpreter runs HiLo as
defined and `attncc analyze hilo` reports each. A loop nest of the tiled backends has one key
loop over one partitioned rank, without reductions over windows in it: `hilo_stages` runs the
pooling first (the reference interpreter, O(height*width*E)), then each attention as a kernel.
"""

from __future__ import annotations

from dataclasses import replace

from attncc.frontends import masks
from attncc.frontends.builder import CascadeBuilder, TensorRef, Value
from attncc.frontends.library import declare_heads, softmax_3pass
from attncc.frontends.zoo.softmax import declare_operands
from attncc.frontends.zoo.stages import Cut, staged
from attncc.ir import Cascade


def hilo(
    *,
    shape: tuple[int, int] | str = (16, 16),
    window: int = 2,
    gqa_group: int | None = None,
    head_dim: int | None = None,
    value_dim: int | None = None,
) -> Cascade:
    """HiLo attention (module docstring) on a `shape` grid of tokens ((height, width) or
    `HxW`) with `window` x `window` windows; `gqa_group` query heads per key/value head in
    both groups."""
    height, width = _grid(shape, window)
    b = CascadeBuilder("hilo")
    batch = b.rank("B")
    hi = declare_heads(b, batch=batch, heads="HH", groups="GH", gqa_group=gqa_group)
    lo = declare_heads(b, batch=batch, heads="HL", groups="GL", gqa_group=gqa_group)
    e, f = b.rank("E", head_dim), b.rank("F", value_dim)
    m, p = b.rank("M", height * width), b.rank("P", height * width)
    n = b.rank("N", (height // window) * (width // window))
    sy, sx = b.rank("SY", window), b.rank("SX", window)
    high = declare_operands(b, hi, e=e, f=f, m=m, p=p, group="H")
    low = declare_operands(b, lo, e=e, f=f, m=m, p=p, group="L")
    b.output("AVH", [*hi.query, f, p])
    b.output("AVL", [*lo.query, f, p])
    window_mask = Value(masks.halo_2d((height, width), window, 0))
    softmax_3pass(high, output="AVH", suffix="H", also=window_mask)
    # Key n is window (n // W', n % W') of the pooled grid; (sy, sx) a token inside it.
    pooled_width = width // window
    token = ((n // pooled_width) * window + sy) * width + (n % pooled_width) * window + sx
    # The mean: a constant factor of the sum, applied once per pooled key.
    share = 1.0 / (window * window)
    for name, source, dim in (("PK", "KL", e), ("PV", "VL", f)):
        b.let(name, [*lo.kv, dim, n], TensorRef(source)[(*lo.kv, dim, token)] * share)
    pooled = replace(low, k=TensorRef("PK"), v=TensorRef("PV"), m=n)
    softmax_3pass(pooled, output="AVL", suffix="L")
    return b.build()


def _grid(shape: tuple[int, int] | str, window: int) -> tuple[int, int]:
    """(height, width) from `shape` ((16, 16), or `16x16` as the CLI's -O gives it), checked
    against the window."""
    if isinstance(window, bool) or not isinstance(window, int) or window < 1:
        raise ValueError(f"hilo: window must be a positive integer, got {window!r}")
    if window == 1:
        raise ValueError(
            "hilo: window 1 has no high frequencies to separate: LITv2 then makes every head "
            "Lo-Fi (plain attention over all tokens); use window >= 2, or softmax attention"
        )
    if isinstance(shape, str):
        parts = shape.lower().split("x")
        shape = tuple(int(p) if p.isdigit() else p for p in parts)  # type: ignore[assignment]
    if not isinstance(shape, tuple | list) or len(shape) != 2:
        raise ValueError(f"hilo: shape must be (height, width) or HxW, got {shape!r}")
    height, width = shape
    for name, length in (("height", height), ("width", width)):
        if isinstance(length, bool) or not isinstance(length, int) or length < 1:
            raise ValueError(f"hilo: {name} must be a positive integer, got {length!r}")
        if length % window:
            raise ValueError(
                f"hilo: the {name} {length} is not a multiple of the window {window}; HiLo's "
                "windows and pooling tile the image exactly (pad the image)"
            )
    return height, width


hilo_stages = staged(
    hilo, Cut(("PK", "PV"), kernel=False), Cut(("AVH",)), Cut(("AVL",), given=("PK", "PV"))
)
"""`hilo(**options)` as it runs on the tiled backends: the pooling (the reference
interpreter), then the Hi-Fi and the Lo-Fi attention, each a kernel."""
