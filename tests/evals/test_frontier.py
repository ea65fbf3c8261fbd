"""The Pareto frontier: non-dominated sets per (site, width), files, table."""

import json

import numpy as np
import pytest

from raysae import storage
from raysae.evals import frontier


def brute(xs, ys):
    n = len(xs)
    return [not any(xs[j] <= xs[i] and ys[j] <= ys[i] and (xs[j] < xs[i] or ys[j] < ys[i])
                    for j in range(n)) for i in range(n)]


def test_non_dominated_matches_brute_force_with_ties():
    rng = np.random.default_rng(0)
    for _ in range(300):
        n = int(rng.integers(0, 15))
        xs = rng.integers(0, 5, n).astype(float)   # small ints: many ties on both axes
        ys = rng.integers(0, 5, n).astype(float)
        assert list(frontier.non_dominated(xs, ys)) == brute(xs, ys)


def test_non_dominated_simple_case():
    # (1, 3) and (2, 1) trade off; (2, 3) is dominated by both; duplicates both stay.
    assert list(frontier.non_dominated([1, 2, 2, 1], [3, 1, 3, 3])) == [True, True, False, True]


def _rows():
    return [
        {"trial": "a", "site": "res:1", "width": 64, "sparsity_coefficient": 0.1, "l0": 5, "fvu": 0.4, "delta_loss": 0.2},
        {"trial": "b", "site": "res:1", "width": 64, "sparsity_coefficient": 0.01, "l0": 20, "fvu": 0.1, "delta_loss": 0.25},
        {"trial": "c", "site": "res:1", "width": 64, "sparsity_coefficient": 0.05, "l0": 25, "fvu": 0.3, "delta_loss": 0.1},
        # another width: judged only against its own group, though it is worse than "a"
        {"trial": "d", "site": "res:1", "width": 128, "sparsity_coefficient": 0.1, "l0": 30, "fvu": 0.9, "delta_loss": 0.9},
        # running trial without delta loss yet: part of the FVU frontier only
        {"trial": "e", "site": "res:1", "width": 128, "sparsity_coefficient": 0.2, "l0": 3, "fvu": 0.95, "delta_loss": None},
        {"trial": "f", "site": "mlp:2", "width": 64, "sparsity_coefficient": 0.1, "l0": float("nan"), "fvu": 0.1},
    ]


def test_frontier_rows_per_site_and_width():
    rows = {r["trial"]: r for r in frontier.frontier_rows(_rows())}
    assert [rows[k]["frontier_fvu"] for k in "abcdef"] == [True, True, False, True, True, False]
    # b is dominated on delta loss by nobody? a: (5, .2), b: (20, .25) -> b dominated by a.
    assert [rows[k]["frontier_delta_loss"] for k in "abcdef"] == [True, False, True, True, False, False]


@pytest.mark.parametrize("base", ["memory://frontier-test", None])
def test_write_and_read_back(tmp_path, base):
    url = base or str(tmp_path / "sweep")
    out = frontier.write_frontier(url, _rows())
    assert storage.exists(storage.join(url, "frontier.png"))
    assert storage.read_bytes(storage.join(url, "frontier.png"))[:4] == b"\x89PNG"
    assert b"<svg" in storage.read_bytes(storage.join(url, "frontier.svg"))
    back = frontier.read_frontier(url)
    assert [r["trial"] for r in back] == [r["trial"] for r in out]
    # NaN/None become JSON null, and the file is strict JSON
    text = storage.read_bytes(storage.join(url, "frontier.json")).decode()
    json.loads(text)
    assert "NaN" not in text
    csv_lines = storage.read_bytes(storage.join(url, "frontier.csv")).decode().splitlines()
    assert csv_lines[0].split(",") == list(frontier.COLUMNS)
    assert len(csv_lines) == 1 + len(_rows())
    # no temp files left behind by the atomic writes
    assert not [n for n in storage.listdir(url) if storage.is_temp_name(n)]


def test_table_marks_frontier_points():
    table = frontier.format_table(frontier.frontier_rows(_rows()))
    cells = {tuple(l.split()[:3]): l.split()[6:] for l in table.splitlines()[2:-1]}
    assert cells[("res:1", "64", "0.1")][0] == "LF"        # trial a: on both frontiers
    assert cells[("res:1", "64", "0.01")][0] == "F"        # trial b: FVU only
    assert cells[("res:1", "64", "0.05")][0] == "L"        # trial c: delta loss only
    assert cells[("mlp:2", "64", "0.1")] == []              # no L0: on neither


def _sweep_rows():
    """3 widths x 6 λ with L0 from 2 to 300, as a real sweep spans."""
    rows = []
    for wi, w in enumerate((16384, 65536, 262144)):
        for li, lam in enumerate((3e-4, 6e-4, 1e-3, 2e-3, 4e-3, 8e-3)):
            l0 = 300 * (2 / 300) ** (li / 5)
            rows.append({"trial": f"{w}-{lam}", "site": "res:12", "width": w, "sparsity_coefficient": lam,
                         "l0": l0, "fvu": 0.05 * (300 / l0) ** 0.45 * (1 - 0.1 * wi),
                         "delta_loss": 0.02 * (300 / l0) ** 0.6 * (1 - 0.1 * wi)})
    return frontier.frontier_rows(rows)


def test_plot_axes_scales_labels_and_title():
    from raysae.evals import style

    fig = frontier.figure(_sweep_rows(), title="gemma2-2b-res12")
    try:
        dl, fvu = fig.axes[:2]
        assert [a.get_xscale() for a in (dl, fvu)] == ["log", "log"]   # L0 spans 2 decades
        assert [a.get_yscale() for a in (dl, fvu)] == ["log", "log"]   # 0.02..0.5 spans > 10x
        assert "res:12" in dl.get_title() and "gemma2-2b-res12" in fig._suptitle.get_text()
        labels = {t.get_text() for t in dl.texts}
        assert {"3e-4", "6e-4", "1e-3", "2e-3", "4e-3", "8e-3"} <= labels   # λ beside the points
        assert len(dl.texts) == 18
        # widths differ in colour and in marker
        lines = [l for l in dl.lines if l.get_label().startswith("width")]
        assert len({l.get_color() for l in lines}) == len({l.get_marker() for l in lines}) == 3
    finally:
        style.close(fig)
    # a narrow range, or one with negative delta losses, stays linear
    narrow = [dict(r, l0=10 + i, delta_loss=-0.01 + 0.002 * i, fvu=0.2 + 0.01 * i)
              for i, r in enumerate(_sweep_rows())]
    fig = frontier.figure(frontier.frontier_rows(narrow))
    try:
        assert [fig.axes[0].get_xscale(), fig.axes[0].get_yscale(), fig.axes[1].get_yscale()] == \
            ["log", "linear", "linear"]
    finally:
        style.close(fig)


def test_labels_do_not_overlap_where_there_is_room():
    from raysae.evals import style

    fig = frontier.figure(_sweep_rows()[:6], title="one width")   # one width: room for every label
    try:
        renderer = fig.canvas.get_renderer()
        for ax in fig.axes[:2]:
            boxes = [t.get_window_extent(renderer) for t in ax.texts]
            assert len(boxes) == 6
            assert not any(a.overlaps(b) for i, a in enumerate(boxes) for b in boxes[i + 1:])
    finally:
        style.close(fig)


def test_png_resolution_and_svg(tmp_path):
    from PIL import Image

    from raysae.evals import style

    rows = _sweep_rows()
    frontier.write_frontier(str(tmp_path / "my-sweep"), rows)
    png = tmp_path / "my-sweep" / "frontier.png"
    fig = frontier.figure(frontier.frontier_rows(rows))
    w_in, h_in = fig.get_size_inches()
    style.close(fig)
    assert style.DPI >= 150
    width, height = Image.open(png).size
    assert width >= int(style.DPI * w_in) and height >= int(style.DPI * h_in)
    svg = (tmp_path / "my-sweep" / "frontier.svg").read_text()
    assert svg.lstrip().startswith("<?xml") and "<svg" in svg
    assert "my-sweep" in svg   # the default title is the sweep's name


def test_format_lambda():
    from raysae.evals.style import format_lambda

    assert [format_lambda(v) for v in (0.002, 1.5e-4, 9.96e-4, 0.05, 0.0)] == ["2e-3", "1.5e-4", "1e-3", "0.05", "0"]
