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
