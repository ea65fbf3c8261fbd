"""The Pareto frontier of a sweep: L0 against delta LM loss and against FVU.

A sweep trains many SAEs that trade sparsity (L0, lower is sparser) against fidelity
(delta LM loss with the SAE spliced in, or fraction of variance unexplained; lower is
better). The useful ones are the non-dominated ones: no other SAE of the same site and
width is at least as good on both axes and better on one. This module computes that set
per (site, width) and writes it as ``frontier.csv``, ``frontier.json`` and
``frontier.png`` (every trial, frontier points joined, colour by width) under the sweep's
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

AXES = (names.DELTA_LOSS, names.FVU)   # the fidelity axes, each against l0
COLUMNS = ("trial", "site", "width", "sparsity_coefficient", "status", "step", names.L0,
           names.FVU, names.DELTA_LOSS, names.MSE, "frontier_delta_loss", "frontier_fvu",
           names.SAE_URL)
CSV_NAME, JSON_NAME, PNG_NAME = "frontier.csv", "frontier.json", "frontier.png"


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


def plot(rows: list[dict]) -> bytes:
    """PNG: per site, L0 vs delta loss and L0 vs FVU; all trials, frontier joined, colour by width."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sites = sorted({str(r.get("site")) for r in rows}) or ["(no trials yet)"]
    widths = sorted({int(r.get("width", 0)) for r in rows})
    cmap = plt.get_cmap("viridis", max(len(widths), 2))
    colour = {w: cmap(i) for i, w in enumerate(widths)}
    fig, axes = plt.subplots(len(sites), 2, figsize=(10, 3.8 * len(sites)), squeeze=False)
    for si, site in enumerate(sites):
        for ai, axis in enumerate(AXES):
            ax = axes[si][ai]
            for w in widths:
                pts = [r for r in rows if str(r.get("site")) == site and int(r.get("width", 0)) == w
                       and _finite(r.get("l0")) and _finite(r.get(axis))]
                if not pts:
                    continue
                ax.scatter([p["l0"] for p in pts], [p[axis] for p in pts], color=colour[w],
                           alpha=0.35, s=22)
                front = sorted((p for p in pts if p.get(f"frontier_{axis}")), key=lambda p: p["l0"])
                ax.plot([p["l0"] for p in front], [p[axis] for p in front], "o-", color=colour[w],
                        markersize=6, label=f"width {w}")
            ax.set_xlabel("L0 (active latents per token)")
            ax.set_ylabel("delta LM loss (nats)" if axis == "delta_loss" else "FVU")
            ax.set_title(f"{site}: L0 vs {'delta loss' if axis == 'delta_loss' else 'FVU'}")
            ax.grid(alpha=0.3)
            if ax.get_legend_handles_labels()[0]:
                ax.legend(fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    plt.close(fig)
    return buf.getvalue()


def write_frontier(directory: str, rows: Iterable[dict], png: bool = True) -> list[dict]:
    """Compute the flags and write frontier.csv/json(/png) under `directory` (fsspec URL)."""
    flagged = frontier_rows(rows)
    clean = [{k: _clean(v) for k, v in r.items()} for r in flagged]
    storage.write_bytes_atomic(storage.join(directory, CSV_NAME), to_csv(flagged).encode())
    storage.write_bytes_atomic(storage.join(directory, JSON_NAME),
                               json.dumps({"rows": clean}, indent=1, sort_keys=True).encode())
    if png:
        storage.write_bytes_atomic(storage.join(directory, PNG_NAME), plot(flagged))
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
