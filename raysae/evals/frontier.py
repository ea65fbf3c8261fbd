"""The Pareto frontier of a sweep: L0 against delta LM loss and against FVU.

A sweep trains many SAEs that trade sparsity (L0, lower is sparser) against fidelity
(delta LM loss with the SAE spliced in, or fraction of variance unexplained; lower is
better). The useful ones are the non-dominated ones: no other SAE of the same site and
width is at least as good on both axes and better on one. This module computes that set
per (site, width) and writes it as ``frontier.csv``, ``frontier.json`` and
``frontier.png`` / ``frontier.svg`` (every trial on log L0 axes, frontier points joined
and labelled with λ, colour and marker by width; `raysae.evals.style`) under the sweep's
directory, each file atomically (a reader never sees a torn file).

Pure numpy + matplotlib, no Ray: the sweep's Tune callback (raysae/sweep/callbacks.py)
calls `write_frontier` after every result, and a notebook can call it on any rows.

A row is a dict with at least ``trial`` (its key), ``site``, ``width``, ``l0`` and one of
``delta_loss`` / ``fvu`` (missing or NaN: the row takes no part on that axis).
"""

from __future__ import annotations

import csv
import io
import json
import math
from typing import Any, Iterable, Sequence

import numpy as np

from raysae import metrics as names
from raysae import storage
from raysae.evals import style

AXES = (names.DELTA_LOSS, names.FVU)   # the fidelity axes, each against l0
COLUMNS = ("trial", "site", "width", "sparsity_coefficient", "status", "step", names.L0,
           names.FVU, names.DELTA_LOSS, names.MSE, "frontier_delta_loss", "frontier_fvu",
           names.SAE_URL)
CSV_NAME, JSON_NAME, PNG_NAME, SVG_NAME = ("frontier.csv", "frontier.json", "frontier.png",
                                           "frontier.svg")


def make_row(**fields: Any) -> dict:
    """A frontier row; its keys must be `COLUMNS` (the frontier flags are computed later)."""
    unknown = set(fields) - set(COLUMNS)
    if unknown:
        raise ValueError(f"frontier row: unknown fields {sorted(unknown)} (columns: {COLUMNS})")
    return fields


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float, np.floating, np.integer)) and math.isfinite(float(v))


def non_dominated(xs: Sequence[float], ys: Sequence[float]) -> np.ndarray:
    """Boolean mask of the points not dominated by another (both axes minimised).

    q dominates p when q.x <= p.x and q.y <= p.y with one strict. Equal points do not
    dominate each other, so duplicates are all kept.
    """
    x, y = np.asarray(xs, float), np.asarray(ys, float)
    n = len(x)
    keep = np.ones(n, bool)
    # Sort by x then y: a point can only be dominated by one earlier in this order.
    order = np.lexsort((y, x))
    best_y = math.inf          # lowest y among points with strictly smaller x
    i = 0
    while i < n:
        j = i
        while j < n and x[order[j]] == x[order[i]]:
            j += 1
        group = order[i:j]
        gmin = y[group].min()
        for k in group:
            # dominated by a smaller-x point with y <= ours, or a same-x point with lower y
            keep[k] = not (best_y <= y[k] or gmin < y[k])
        best_y = min(best_y, gmin)
        i = j
    return keep


def frontier_rows(rows: Iterable[dict]) -> list[dict]:
    """Copies of `rows` with ``frontier_delta_loss`` / ``frontier_fvu`` flags set per (site, width)."""
    out = [dict(r) for r in rows]
    groups: dict[tuple, list[int]] = {}
    for i, r in enumerate(out):
        groups.setdefault((str(r.get("site")), int(r.get("width", 0))), []).append(i)
    for idx in groups.values():
        for axis in AXES:
            members = [i for i in idx if _finite(out[i].get("l0")) and _finite(out[i].get(axis))]
            mask = non_dominated([out[i]["l0"] for i in members], [out[i][axis] for i in members])
            for i in idx:
                out[i][f"frontier_{axis}"] = False
            for i, m in zip(members, mask):
                out[i][f"frontier_{axis}"] = bool(m)
    out.sort(key=lambda r: (str(r.get("site")), int(r.get("width", 0)),
                            float(r.get("sparsity_coefficient") or 0.0), str(r.get("trial"))))
    return out


def _clean(v: Any) -> Any:
    if isinstance(v, (np.floating, float)):
        return float(v) if math.isfinite(float(v)) else None
    if isinstance(v, np.integer):
        return int(v)
    if isinstance(v, np.bool_):
        return bool(v)
    return v


def to_csv(rows: list[dict]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(COLUMNS), extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: ("" if _clean(r.get(k)) is None else _clean(r.get(k))) for k in COLUMNS})
    return buf.getvalue()


_YLABEL = {names.DELTA_LOSS: "Δ LM loss (nats)", names.FVU: "FVU (fraction of variance unexplained)"}
_SHORT = {names.DELTA_LOSS: "Δ LM loss", names.FVU: "FVU"}


def figure(rows: list[dict], title: str | None = None):
    """The frontier figure (matplotlib): one row of panels per site, L0 vs delta loss and
    L0 vs FVU; per width one colour and marker, frontier points joined by a line and
    labelled with λ, dominated points lighter. L0 is log-scaled when positive, a fidelity
    axis when its values span more than a decade (`style.set_scale`).

    Args:
        rows: frontier rows (flags from `frontier_rows`).
        title: the sweep's name, shown above the panels.
    Returns:
        A `matplotlib.figure.Figure` (close it with `style.close`).
    """
    plt = style.pyplot()
    sites = sorted({str(r.get("site")) for r in rows}) or ["(no trials yet)"]
    widths = sorted({int(r.get("width", 0)) for r in rows})
    look = {w: style.series_style(i) for i, w in enumerate(widths)}
    fig, axes = plt.subplots(len(sites), 2, figsize=(11, 4.4 * len(sites)), squeeze=False,
                             layout="constrained")
    for si, site in enumerate(sites):
        for ai, axis in enumerate(AXES):
            ax = axes[si][ai]
            style.style_axes(ax)
            here = [r for r in rows if str(r.get("site")) == site
                    and _finite(r.get("l0")) and _finite(r.get(axis))]
            # L0 spans decades in real sweeps: log whenever it is positive (as the paper plots it)
            style.set_scale(ax, "x", [r["l0"] for r in here], ratio=1.0)
            style.set_scale(ax, "y", [r[axis] for r in here])
            for w in widths:
                pts = [r for r in here if int(r.get("width", 0)) == w]
                if not pts:
                    continue
                front = sorted((p for p in pts if p.get(f"frontier_{axis}")), key=lambda p: p["l0"])
                rest = [p for p in pts if not p.get(f"frontier_{axis}")]
                c, m = look[w]["color"], look[w]["marker"]
                ax.plot([p["l0"] for p in front], [p[axis] for p in front], "-", color=c, lw=1.4,
                        marker=m, markersize=5.5, label=f"width {w:,}", zorder=3)
                if rest:
                    ax.scatter([p["l0"] for p in rest], [p[axis] for p in rest], color=c, marker=m,
                               s=22, alpha=0.3, linewidths=0, zorder=2)
            # after every series is drawn, so that the labels avoid all markers and lines
            named = [r for r in here if _finite(r.get("sparsity_coefficient"))]
            style.label_points(ax, [p["l0"] for p in named], [p[axis] for p in named],
                               [style.format_lambda(p["sparsity_coefficient"]) for p in named],
                               colors=[look[int(p.get("width", 0))]["color"] for p in named])
            ax.set_xlabel("L0 (active latents per token)")
            ax.set_ylabel(_YLABEL[axis])
            ax.set_title(f"{site}: L0 vs {_SHORT[axis]}", fontsize=10)
            if not here:
                ax.text(0.5, 0.5, "no points yet", transform=ax.transAxes, ha="center",
                        color="0.5")
    legend = {}   # one legend for the figure: a width looks the same in every panel
    for ax in axes.flat:
        for h, label in zip(*ax.get_legend_handles_labels()):
            legend.setdefault(label, h)
    if legend:
        fig.legend(list(legend.values()), list(legend), loc="outside lower center",
                   ncols=len(legend), fontsize=9, frameon=False,
                   title="lines: frontier per width; lighter: dominated; labels: λ (sparsity "
                         "coefficient)", title_fontsize=8)
    fig.suptitle(f"{title}: sparsity vs fidelity" if title else "sparsity vs fidelity",
                 fontsize=12)
    return fig


def plot(rows: list[dict], title: str | None = None, fmt: str = "png") -> bytes:
    """The frontier figure (`figure`) as PNG (at `style.DPI`) or SVG bytes (`fmt`: "png"/"svg")."""
    fig = figure(rows, title)
    try:
        return style.render(fig, fmt)
    finally:
        style.close(fig)


def _sweep_name(directory: str) -> str:
    return directory.rstrip("/").rsplit("/", 1)[-1]


def write_frontier(directory: str, rows: Iterable[dict], png: bool = True,
                   title: str | None = None) -> list[dict]:
    """Compute the flags and write frontier.csv/json (and, if `png`, frontier.png/svg).

    Args:
        directory: the sweep's directory (any fsspec URL).
        rows: frontier rows (`make_row`).
        png: also draw the plots (PNG and SVG).
        title: the plot's title; default the directory's name (the sweep's name).
    Returns:
        The rows with their frontier flags.
    """
    flagged = frontier_rows(rows)
    clean = [{k: _clean(v) for k, v in r.items()} for r in flagged]
    storage.write_bytes_atomic(storage.join(directory, CSV_NAME), to_csv(flagged).encode())
    storage.write_bytes_atomic(storage.join(directory, JSON_NAME),
                               json.dumps({"rows": clean}, indent=1, sort_keys=True).encode())
    if png:
        fig = figure(flagged, title or _sweep_name(directory))
        try:
            for name, fmt in ((PNG_NAME, "png"), (SVG_NAME, "svg")):
                storage.write_bytes_atomic(storage.join(directory, name), style.render(fig, fmt))
        finally:
            style.close(fig)
    return flagged


def read_frontier(directory: str) -> list[dict]:
    """Rows from an existing frontier.json (empty if there is none yet)."""
    url = storage.join(directory, JSON_NAME)
    if not storage.exists(url):
        return []
    return list(json.loads(storage.read_bytes(url)).get("rows", []))


def format_table(rows: list[dict]) -> str:
    """A plain-text table of the rows, frontier points starred, for the terminal."""
    head = f"{'site':<10}{'width':>8}{'lambda':>11}{'L0':>9}{'FVU':>9}{'dLoss':>9}  front  status"
    lines = [head, "-" * len(head)]
    fmt = lambda v: f"{float(v):9.4g}" if _finite(v) else f"{'-':>9}"  # noqa: E731
    for r in rows:
        star = ("L" if r.get("frontier_delta_loss") else " ") + ("F" if r.get("frontier_fvu") else " ")
        lam = r.get("sparsity_coefficient")
        lines.append(f"{str(r.get('site')):<10}{int(r.get('width', 0)):>8}"
                     f"{(f'{float(lam):11.3g}' if _finite(lam) else f'{chr(45):>11}')}"
                     f"{fmt(r.get('l0'))}{fmt(r.get('fvu'))}{fmt(r.get('delta_loss'))}"
                     f"  {star:^5}  {r.get('status', '')}")
    lines.append("front: L = on the (L0, delta loss) frontier, F = on the (L0, FVU) frontier "
                 "of its site and width")
    return "\n".join(lines)
