"""Plots of an EvalReport, each as PNG and SVG, written to any fsspec URL (the look of
`raysae.evals.style`, the same as the sweep's frontier plot).

- `frontier_point.png`: the SAE as a point on the L0 vs delta LM loss plane (the axes of the
  paper's Pareto frontiers; the sweep's frontier plot puts many of these together).
- `per_position.png`: FVU and delta loss by sequence position (the paper's Fig. 3 / Fig. 15).
- `frequency_histogram.png`: latents by log10 firing frequency, dead latents noted (Fig. 5).
"""

from __future__ import annotations

from raysae import storage
from raysae.evals import style


def _save(fig, url: str) -> list[str]:
    """Write `fig` as `url` (a .png) and the same name .svg beside it; returns both URLs."""
    svg = url[: -len(".png")] + ".svg"
    try:
        storage.write_bytes_atomic(url, style.render(fig, "png"))
        storage.write_bytes_atomic(svg, style.render(fig, "svg"))
    finally:
        style.close(fig)
    return [url, svg]


def _title(report) -> str:
    return f"{report.model} {report.site} (width {report.width:,})"


def frontier_point(report, url: str) -> list[str]:
    plt = style.pyplot()
    fig, ax = plt.subplots(figsize=(4.5, 3.5), layout="constrained")
    style.style_axes(ax)
    s = report.summary
    ax.set_xscale("log")   # as on the sweep's frontier: comparable by eye
    style.plain_log_ticks(ax, "x")
    ax.scatter([s["l0"]], [s["delta_loss"]], zorder=3, s=30, **style.series_style(0))
    ax.annotate(f"L0={s['l0']:.1f}\nΔloss={s['delta_loss']:.4f}\nFVU={s['fvu']:.3f}", (s["l0"], s["delta_loss"]),
                textcoords="offset points", xytext=(8, 4), fontsize=8)
    ax.set_xlabel("L0 (active latents per token)")
    ax.set_ylabel("Δ LM loss (nats)")
    ax.set_title(_title(report), fontsize=9)
    return _save(fig, url)


def per_position(report, url: str) -> list[str]:
    plt = style.pyplot()
    p = report.per_position
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.5), layout="constrained")
    panels = (("fvu", "token position", "FVU", style.PALETTE[0]),
              ("delta_loss", "token position (predicting the next)", "Δ LM loss (nats)",
               style.PALETTE[1]))
    for a, (key, xlabel, ylabel, color) in zip(axes, panels):
        a.plot(range(len(p[key])), [float("nan") if v is None else v for v in p[key]],
               lw=0.8, color=color)
        a.set_xlabel(xlabel)
        a.set_ylabel(ylabel)
        a.set_xscale("symlog", linthresh=1)
        style.plain_log_ticks(a, "x")
        style.set_scale(a, "y", [v for v in p[key] if v is not None])
        style.style_axes(a)
    fig.suptitle(_title(report), fontsize=9)
    return _save(fig, url)


def frequency_histogram(report, url: str) -> list[str]:
    plt = style.pyplot()
    h = report.frequency_histogram
    edges, counts = h["bin_edges_log10"], h["counts"]
    fig, ax = plt.subplots(figsize=(5, 3.5), layout="constrained")
    style.style_axes(ax)
    ax.bar(edges[:-1], counts, width=[b - a for a, b in zip(edges[:-1], edges[1:])], align="edge",
           edgecolor="none", color=style.PALETTE[0])
    ax.set_xlabel("log10 firing frequency")
    ax.set_ylabel("latents")
    sample = f"; {h['tokens']:,} tokens (resolution {h['resolution']:.0e})" if h.get("tokens") else ""
    ax.set_title(f"{_title(report)}; dead: {h['dead']}{sample}", fontsize=9)
    return _save(fig, url)


def write_plots(report, url: str) -> list[str]:
    """Every plot the report has data for, under directory `url`, as .png and .svg.

    Returns:
        The URLs written (a .png and a .svg per plot).
    """
    out = []
    if report.summary.get("delta_loss") is not None:
        out += frontier_point(report, storage.join(url, "frontier_point.png"))
    if report.per_position:
        out += per_position(report, storage.join(url, "per_position.png"))
    if report.frequency_histogram:
        out += frequency_histogram(report, storage.join(url, "frequency_histogram.png"))
    return out
