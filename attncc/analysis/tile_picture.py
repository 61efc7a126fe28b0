"""A tile map as a picture: a PNG heatmap of EMPTY, PARTIAL and FULL tiles, drawn by matplotlib.

The ASCII form (`TileMap.to_string`) suits a terminal; this one suits a report or a large map.
matplotlib is imported only when a picture is drawn, so `import attncc` stays fast, and the
figure is drawn on the Agg canvas directly (no pyplot), so nothing opens a window or touches
pyplot's global state. Rows are query tiles, columns key tiles, query tile 0 at the top, as in
the ASCII form.
"""

from __future__ import annotations

from pathlib import Path

from attncc.analysis.tile_map import TileClass, TileMap
from attncc.errors import AnalysisError

COLORS = {
    TileClass.EMPTY: "#f2f2f2",
    TileClass.PARTIAL: "#fdae6b",
    TileClass.FULL: "#2171b5",
}
"""One color per tile class, in TileClass order (the colormap indexes it by class value)."""


def write_png(tile_map: TileMap, path: Path | str, title: str) -> Path:
    """Write `tile_map` as a PNG heatmap with a legend and `title` to `path`; returns the path.

    Raises AnalysisError naming the path when it cannot be written (no such directory, no
    permission)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.colors import ListedColormap
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch
    from matplotlib.ticker import MaxNLocator

    path = Path(path)
    rows, cols = tile_map.classes.shape
    # About 6 inches on the longer side, never thinner than 2 inches on the other.
    scale = 6 / max(rows, cols)
    figure = Figure(figsize=(max(2.0, cols * scale) + 2.2, max(2.0, rows * scale) + 1.2))
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    colormap = ListedColormap([COLORS[c] for c in TileClass])
    axes.imshow(
        tile_map.classes,
        cmap=colormap,
        vmin=min(TileClass),
        vmax=max(TileClass),
        interpolation="nearest",
    )
    axes.set_xlabel("key tile")
    axes.set_ylabel("query tile")
    axes.set_title(title, fontsize="medium")
    for axis in (axes.xaxis, axes.yaxis):
        axis.set_major_locator(MaxNLocator(integer=True))
    legend = [Patch(facecolor=COLORS[c], edgecolor="#555555", label=c.name) for c in TileClass]
    axes.legend(handles=legend, loc="upper left", bbox_to_anchor=(1.02, 1.0), frameon=False)
    figure.tight_layout()
    try:
        figure.savefig(path, format="png", dpi=100)
    except OSError as error:
        reason = error.strerror or str(error)
        raise AnalysisError(f"cannot write {path}: {reason}") from None
    return path
