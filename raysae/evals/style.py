"""The look of raysae's plots (the sweep's frontier, the eval report): one style for a paper.

Colour-blind-safe colours (Okabe & Ito) paired with distinct markers, so widths stay apart
in greyscale too; log axes where the data span decades; small labels placed beside their
points without overlapping each other where a free spot exists; PNG at `DPI` and SVG.
Headless (Agg) matplotlib, no Ray.
"""

from __future__ import annotations

import io
import math
from typing import Sequence

DPI = 160
# Okabe & Ito (2008), without yellow (unreadable on white) and black (kept for text).
PALETTE = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#000000")
MARKERS = ("o", "s", "^", "D", "v", "P", "X")
DECADE = 10.0   # max / min above which a positive axis is drawn in log scale


def pyplot():
    """matplotlib.pyplot on the headless Agg backend."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def series_style(i: int) -> dict:
    """Colour and marker of the i-th series (e.g. the i-th width), cycling."""
    return {"color": PALETTE[i % len(PALETTE)], "marker": MARKERS[i % len(MARKERS)]}


def spans_decades(values: Sequence[float], ratio: float = DECADE) -> bool:
    """Whether all `values` are positive and max / min exceeds `ratio` (log scale pays off)."""
    vals = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    return bool(vals) and min(vals) > 0 and max(vals) / min(vals) > ratio


def set_scale(ax, axis: str, values: Sequence[float], ratio: float = DECADE) -> str:
    """Log scale on `axis` ("x" or "y") of `ax` when `values` span more than `ratio`; returns it."""
    scale = "log" if spans_decades(values, ratio) else "linear"
    (ax.set_xscale if axis == "x" else ax.set_yscale)(scale)
    plain_log_ticks(ax, axis)
    return scale


def format_lambda(v: float) -> str:
    """A sparsity coefficient, short: 0.002 -> "2e-3", 1.5e-4 -> "1.5e-4", 0.5 -> "0.5"."""
    v = float(v)
    if v == 0 or not math.isfinite(v) or 0.01 <= abs(v) < 1000:
        return f"{v:.3g}"
    exp = math.floor(math.log10(abs(v)))
    mantissa = float(f"{v / 10 ** exp:.2g}")
    if abs(mantissa) >= 10:   # rounding carried into the next decade
        mantissa, exp = mantissa / 10, exp + 1
    return f"{mantissa:g}e{exp}"


def _plain_log_formatter(minor: bool):
    from matplotlib import ticker

    class Plain(ticker.Formatter):
        """0.02 rather than 2x10^-2 (what a reader compares with a table). Minor ticks: all
        labelled within a decade, those at 2x and 5x up to three decades, none beyond."""

        def __call__(self, x, pos=None):
            if x <= 0:   # symlog axes (positions) start at 0
                return "0" if x == 0 and not minor else ""
            if minor:
                lo, hi = sorted(self.axis.get_view_interval())
                decades = math.log10(hi / lo) if lo > 0 else math.inf
                mantissa = round(x / 10 ** math.floor(math.log10(x) + 1e-9), 6)
                if decades > 3 or (decades > 1 and mantissa not in (2, 5)):
                    return ""
            return f"{x:g}"

    return Plain()


def plain_log_ticks(ax, axis: str) -> None:
    """Plain decimal tick labels (0.02, 10, 300) on a log or symlog `axis` ("x"/"y") of `ax`."""
    a = ax.xaxis if axis == "x" else ax.yaxis
    if a.get_scale() in ("log", "symlog"):
        a.set_major_formatter(_plain_log_formatter(False))
        a.set_minor_formatter(_plain_log_formatter(True))


def style_axes(ax) -> None:
    """Light grid, no top/right spines: the rest is matplotlib's defaults."""
    ax.grid(True, which="major", alpha=0.3, lw=0.6)
    ax.grid(True, which="minor", alpha=0.12, lw=0.4)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)


# Offsets (points) tried in order for a label beside its point.
_OFFSETS = ((5, 4), (5, -10), (-5, 4), (-5, -10), (8, 12), (8, -18), (-8, 12), (-8, -18),
            (0, 14), (0, -20))


def _obstacles(ax):
    """Display positions a label should not cover: every marker, and points along every line."""
    import numpy as np

    out = []
    for artist in list(ax.lines) + list(ax.collections):
        pts = artist.get_xydata() if hasattr(artist, "get_xydata") else artist.get_offsets()
        if len(pts) == 0:
            continue
        disp = ax.transData.transform(np.asarray(pts, float))
        out.extend(disp)
        if hasattr(artist, "get_xydata"):   # a line: its segments too, every few pixels
            for a, b in zip(disp[:-1], disp[1:]):
                n = int(np.hypot(*(b - a)) // 4)
                out.extend(a + (b - a) * t for t in np.linspace(0, 1, n + 2)[1:-1])
    return out


def label_points(ax, xs: Sequence[float], ys: Sequence[float], labels: Sequence[str],
                 colors: Sequence | str = "0.25", fontsize: float = 6.5) -> list:
    """Write `labels` beside the points, each at the first offset where it covers no earlier
    label, marker or line of the axes (else at the first offset); returns the Text artists.

    Call after every series is drawn and the scales are set: placement uses drawn positions.
    """
    fig = ax.figure
    fig.canvas.draw()   # fixes the limits, so data -> display transforms are final
    renderer = fig.canvas.get_renderer()
    obstacles = _obstacles(ax)
    colors = [colors] * len(labels) if isinstance(colors, str) else list(colors)
    taken, texts = [], []
    for x, y, text, color in zip(xs, ys, labels, colors):
        placed = None
        for dx, dy in _OFFSETS:
            t = ax.annotate(text, (x, y), textcoords="offset points", xytext=(dx, dy),
                            fontsize=fontsize, color=color, ha="left" if dx >= 0 else "right",
                            va="bottom")
            box = t.get_window_extent(renderer).expanded(1.05, 1.1)
            if not any(box.overlaps(b) for b in taken) and not any(
                    box.x0 - 1 <= ox <= box.x1 + 1 and box.y0 - 1 <= oy <= box.y1 + 1
                    for ox, oy in obstacles):
                placed = t
                break
            t.remove()
        if placed is None:  # no free spot: the first one, overlapping
            placed = ax.annotate(text, (x, y), textcoords="offset points", xytext=_OFFSETS[0],
                                 fontsize=fontsize, color=color, va="bottom")
        taken.append(placed.get_window_extent(renderer))
        texts.append(placed)
    return texts


def render(fig, fmt: str = "png") -> bytes:
    """The figure as PNG (at `DPI`) or SVG bytes; the figure stays open (call `close`)."""
    buf = io.BytesIO()
    fig.savefig(buf, format=fmt, dpi=DPI, metadata={"Date": None} if fmt == "svg" else None)
    return buf.getvalue()


def close(fig) -> None:
    pyplot().close(fig)
