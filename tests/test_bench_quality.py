"""bench/quality.py's system specs and its point-by-point comparison (no training): a system's
own λ grid is not a TrainConfig override, and the reference is found with or without its grid."""

import importlib.util
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def quality():
    spec = importlib.util.spec_from_file_location("bench_quality",
                                                  os.path.join(ROOT, "bench", "quality.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_a_systems_own_grid_is_not_an_override(quality):
    spec = "small-budget:bandwidth=0.02,lams=0.007/0.003,norm=none"
    assert quality.parse_system(spec) == ("small-budget", {"bandwidth": 0.02, "norm": "none"})
    assert quality.system_lambdas(spec, "0.1,0.2") == [0.007, 0.003]
    assert quality.system_lambdas("small-budget:bandwidth=0.02", "0.1,0.2") == [0.1, 0.2]
    assert quality.system_lambdas("saelens", None) == quality.LAMBDAS["saelens"]
    assert quality.system_lambdas("saelens", None, "realistic")[0] == 0.2  # the problem's grid


def test_each_point_is_compared_with_the_reference_at_its_own_l0(quality, capsys):
    # reference FVU falls linearly in log L0 from 0.3 at L0 4 to 0.1 at L0 16
    ref = [{"l0": 4.0, "fvu": 0.3}, {"l0": 16.0, "fvu": 0.1}]
    ours = [{"lambda": 0.01, "l0": 8.0, "fvu": 0.19}, {"lambda": 0.001, "l0": 40.0, "fvu": 0.05}]
    out = quality.versus({"saelens:lams=0.2/0.05": ref, "small-budget": ours})
    (row8, row40) = out["small-budget"]
    assert row8["reference_fvu"] == pytest.approx(0.2)
    assert row8["difference"] == pytest.approx(-0.01)
    assert row40["reference_fvu"] is None and row40["difference"] is None  # outside its range
    assert "diff=-0.0100" in capsys.readouterr().out
    assert quality.versus({"small-budget": ours}) == {}
