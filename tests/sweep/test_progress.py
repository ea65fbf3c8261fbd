"""The sweep's terminal display: event lines, plain progress lines for logs, the live table."""

from __future__ import annotations

import io
import types

from raysae.sweep.progress import SweepProgress, duration


def trial(tid, width, lam, last=None):
    return types.SimpleNamespace(trial_id=tid, config={"width": width, "sparsity_coefficient": lam},
                                 last_result=last or {}, path=f"/runs/s/{tid}")


def display(out, **kw):
    return SweepProgress(3, steps_of=lambda c: 100, name_of=lambda c: f"w{c['width']}-l{c['sparsity_coefficient']}",
                         batch_size=256, out=out, **kw)


def test_events_and_plain_progress_lines(monkeypatch):
    clock = [0.0]
    monkeypatch.setattr("raysae.sweep.progress.time.monotonic", lambda: clock[0])
    out = io.StringIO()
    p = display(out, live=False, plain_every_s=10)
    p.setup()
    a, b = trial("a", 64, 0.01), trial("b", 128, 0.01)
    p.on_trial_start(0, [], a)
    p.on_trial_start(0, [], b)
    for t in (1.0, 5.0):  # 10 steps/s for a, 5 for b
        clock[0] = t
        p.on_trial_result(0, [], a, {"step": int(10 * t), "l0": 12.0, "fvu": 0.2})
        p.on_trial_result(0, [], b, {"step": int(5 * t), "l0": 30.0, "fvu": 0.1})
    clock[0] = 11.0
    p.on_trial_result(0, [], a, {"step": 110 - 10, "l0": 11.0, "fvu": 0.19})
    a.last_result = {"step": 100, "eval/l0": 10.5, "eval/fvu": 0.18, "eval/delta_loss": 0.0321}
    p.on_trial_complete(0, [], a)
    p.on_trial_error(0, [], b)
    lines = out.getvalue().splitlines()
    assert lines[:2] == ["started  w64-l0.01 (1/3)", "started  w128-l0.01 (2/3)"]
    (plain,) = [line for line in lines if line.startswith("progress")]
    # a runs at (10 + 8.3) / 2 steps/s (smoothed), b at 5: 14.2 x 256 tokens/s; b is the
    # slowest (75 steps left: 15 s), then the third trial takes a slot for 100 / 5 s: 35 s
    assert plain == ("progress 0/3 done, 2 running, 3.6k tok/s in all; slowest w128-l0.01 "
                     "25/100 L0 30.0 FVU 0.100; ETA 35s")
    assert any(line.startswith("done     w64-l0.01  L0 10.5  FVU 0.180  dLoss 0.0321") and
               line.endswith("1/3 done") for line in lines)
    assert lines[-1] == "failed   w128-l0.01: see /runs/s/b/error.txt; `--resume` retries it"


def test_live_table_and_frontier_lines():
    out = io.StringIO()
    p = display(out, live=True)
    p.setup()
    p.on_trial_start(0, [], trial("a", 64, 0.003))
    p.on_trial_result(0, [], trial("a", 64, 0.003), {"step": 40, "l0": 7.0, "fvu": 0.3})
    rows = [{"trial": "a", "status": "done", "frontier_fvu": True},
            {"trial": "b", "status": "running", "frontier_fvu": True}]
    p.frontier_written(rows, "/runs/s/frontier.png")
    p.frontier_written(rows, "/runs/s/frontier.png")  # unchanged: said once
    p.on_experiment_end([])
    text = out.getvalue()
    assert "w64-l0.003" in text and "40/100" in text and "SAEs done" in text
    assert text.count("frontier 1 of 1 finished SAEs on it: /runs/s/frontier.png") == 1


def test_durations():
    assert [duration(s) for s in (None, 12, 185, 3720)] == ["?", "12s", "3m05s", "1h02m"]


def test_a_packed_trial_says_one_line_per_sae():
    out = io.StringIO()
    p = display(out, live=False)
    pack = trial("p", 64, "0.01+0.1")
    p.on_trial_start(0, [], pack)
    pack.last_result = {"step": 100, "members": {
        "res_1-w64-l0.01-aa": {"step": 100, "eval/l0": 9.5, "eval/fvu": 0.12},
        "res_1-w64-l0.1-bb": {"step": 100, "l0": 2.0, "fvu": 0.3, "eval/delta_loss": 0.5}}}
    p.on_trial_complete(0, [], pack)
    lines = out.getvalue().splitlines()
    assert lines[1].startswith("done     w64-l0.01+0.1  (") and lines[1].endswith("1/3 done")
    assert lines[2:] == ["         res_1-w64-l0.01-aa  L0 9.5  FVU 0.120",
                         "         res_1-w64-l0.1-bb  L0 2.0  FVU 0.300  dLoss 0.5000"]
