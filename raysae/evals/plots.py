"""PNG plots of an EvalReport (matplotlib, headless Agg backend), written to any fsspec URL.

- `frontier_point.png`: the SAE as a point on the L0 vs delta LM loss plane (the axes of the
  paper's Pareto frontiers; the sweep's frontier plot puts many of these together).
- `per_position.png`: FVU and delta loss by sequence position (the paper's Fig. 3 / Fig. 15).
- `frequency_histogram.png`: latents by log10 firing frequency, dead latents noted (Fig. 5).
"""

from __future__ import annotations

import io

from raysae import storage


def _figure():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def _save(fig, url: str) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    _figure().close(fig)
    storage.write_bytes_atomic(url, buf.getvalue())
    return url


def _title(report) -> str:
    return f"{report.model} {report.site} (M={report.width})"


def frontier_point(report, url: str) -> str:
    plt = _figure()
    fig, ax = plt.subplots(figsize=(4.5, 3.5))
    s = report.summary
    ax.scatter([s["l0"]], [s["delta_loss"]], color="C0", zorder=3)
    ax.annotate(f"L0={s['l0']:.1f}\nΔloss={s['delta_loss']:.4f}\nFVU={s['fvu']:.3f}", (s["l0"], s["delta_loss"]),
                textcoords="offset points", xytext=(8, 4), fontsize=8)
    ax.set_xlabel("L0 (active latents per token)")
    ax.set_ylabel("delta LM loss (nats)")
    ax.set_title(_title(report), fontsize=9)
    ax.grid(alpha=0.3)
    return _save(fig, url)


def per_position(report, url: str) -> str:
    plt = _figure()
    p = report.per_position
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
    panels = (("fvu", "token position", "FVU", "C0"),
              ("delta_loss", "token position (predicting the next)", "delta LM loss (nats)", "C1"))
    for a, (key, xlabel, ylabel, color) in zip(axes, panels):
        a.plot(range(len(p[key])), [float("nan") if v is None else v for v in p[key]],
               lw=0.8, color=color)
        a.set_xlabel(xlabel)
        a.set_ylabel(ylabel)
        a.set_xscale("symlog", linthresh=1)
        a.grid(alpha=0.3)
    fig.suptitle(_title(report), fontsize=9)
    fig.subplots_adjust(wspace=0.3)
    return _save(fig, url)


def frequency_histogram(report, url: str) -> str:
    plt = _figure()
    h = report.frequency_histogram
    edges, counts = h["bin_edges_log10"], h["counts"]
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.bar(edges[:-1], counts, width=[b - a for a, b in zip(edges[:-1], edges[1:])], align="edge",
           edgecolor="none")
    ax.set_xlabel("log10 firing frequency")
    ax.set_ylabel("latents")
    sample = f"; {h['tokens']:,} tokens (resolution {h['resolution']:.0e})" if h.get("tokens") else ""
    ax.set_title(f"{_title(report)}; dead: {h['dead']}{sample}", fontsize=9)
    ax.grid(alpha=0.3)
    return _save(fig, url)


def write_plots(report, url: str) -> list[str]:
    """Every plot the report has data for, under directory `url`; returns the URLs written."""
    out = []
    if report.summary.get("delta_loss") is not None:
        out.append(frontier_point(report, storage.join(url, "frontier_point.png")))
    if report.per_position:
        out.append(per_position(report, storage.join(url, "per_position.png")))
    if report.frequency_histogram:
        out.append(frequency_histogram(report, storage.join(url, "frequency_histogram.png")))
    return out
