"""The sweep engine on a real local Ray cluster: trials, frontier, saved SAEs, failures, resume.

Trials train on a synthetic activation cache (a known sparse dictionary) so these tests do
not depend on the LM; tests/test_sweep_tiny.py runs sweeps/tiny.yaml itself (LM, caching,
delta loss).
"""

import json
import os
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import ray
import yaml

from raysae import storage
from raysae.config import from_dict
from raysae.evals import frontier
from raysae.sae import formats
from raysae.sae.saelens import load_saelens
from raysae.sweep import SweepConfig
from raysae.sweep.launch import run_sweep
from raysae.sweep.pointer import read_pointer
from raysae.train import latest_checkpoint, load_checkpoint
from tests.helpers import read_events, write_cache

pytestmark = [pytest.mark.ray, pytest.mark.timeout(900)]
# Tests checkpoint every few steps; real sweeps do so minutes apart. Keep Tune's
# "snapshotting often" warning out of the logs.
os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")


@pytest.fixture(scope="module")
def cluster():
    os.environ["RAY_DEDUP_LOGS"] = "0"
    # one logical GPU (none is here): fractional-GPU trials are scheduled and get their env
    ray.init(address="local", num_cpus=2, num_gpus=1, include_dashboard=False,
             log_to_driver=False)
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


def spec(tmp_path, name, **kw):
    cache = tmp_path / "cache"
    if not (cache / "manifest.json").exists():
        write_cache(str(cache), shards=4, rows=4096)
    data = {"name": name, "storage": str(tmp_path / "runs"), "model": "tiny", "sites": ["res:1"],
            "widths": [64, 128], "sparsity": {"grid": [0.003, 0.03, 0.3]}, "tokens": 256 * 60,
            "train": {"batch_size": 256, "lr": 0.003, "lr_warmup_steps": 5, "sparsity_warmup_steps": 20,
                      "log_every": 10, "checkpoint_every": 20},
            "stream": {"shuffle_window": 1024, "buffer_batches": 16},
            "data": {"manifest": str(cache)}, "final_eval": {"activation_batches": 2},
            "resources": {"cpus": 1}, "failure": {"max_failures": 2}}
    for k, v in kw.items():
        node = data
        *path, last = k.split("__")
        for p in path:
            node = node.setdefault(p, {})
        node[last] = v
    return data


def final_results(result):
    return {r.metrics["trial"]: r.metrics for r in result.results}


def test_sweep_end_to_end(cluster, tmp_path):
    # two trials share the (logical) GPU: each JAX may take 0.5 x 0.9 of its memory
    config = from_dict(SweepConfig, spec(tmp_path, "e2e", resources__gpus=0.5))
    result = run_sweep(config, verbose=0)
    finals = final_results(result)
    assert len(finals) == 6 and all(r.error is None for r in result.results)
    for m in finals.values():
        env = m["device_env"]
        assert env["XLA_PYTHON_CLIENT_MEM_FRACTION"] == "0.450", env
        assert env["XLA_PYTHON_CLIENT_PREALLOCATE"] == "true" and env["CUDA_VISIBLE_DEVICES"] == "0"
    assert {(m["config"]["width"], m["config"]["sparsity_coefficient"]) for m in finals.values()} == \
        {(w, l) for w in (64, 128) for l in (0.003, 0.03, 0.3)}
    for m in finals.values():
        assert m["step"] == 60 and m["restored_step"] == 0
        assert 0 < m["eval/l0"] <= m["config"]["width"] and 0 < m["eval/fvu"] < 1
    # larger λ -> sparser SAEs, per width
    for w in (64, 128):
        l0 = [m["eval/l0"] for _, m in sorted((m["config"]["sparsity_coefficient"], m)
                                              for m in finals.values() if m["config"]["width"] == w)]
        assert l0[0] > l0[1] > l0[2]
    # the frontier files hold every trial, flagged with the true non-dominated set per width
    rows = frontier.read_frontier(result.sweep_url)
    assert {r["trial"] for r in rows} == set(finals) and all(r["status"] == "done" for r in rows)
    for w in (64, 128):
        group = [r for r in rows if r["width"] == w]
        for r in group:
            m = finals[r["trial"]]
            assert r["l0"] == pytest.approx(m["eval/l0"]) and r["fvu"] == pytest.approx(m["eval/fvu"])
            dominated = any(o["l0"] <= r["l0"] and o["fvu"] <= r["fvu"] and
                            (o["l0"] < r["l0"] or o["fvu"] < r["fvu"]) for o in group)
            assert r["frontier_fvu"] == (not dominated)
            assert r["frontier_delta_loss"] is False  # no LM eval in an activation-only sweep
    for name in ("frontier.csv", "frontier.png", "sweep.yaml"):
        assert storage.exists(storage.join(result.sweep_url, name))
    # saved SAEs load in both formats, folded (raw space) and of the trial's width
    for m in finals.values():
        npz = formats.load_npz(m["sae_url"])
        lens, cfg = load_saelens(storage.join(m["sae_url"], "saelens"))
        assert npz.W_enc.shape == (32, m["config"]["width"])
        np.testing.assert_array_equal(npz.threshold, lens.threshold)
        assert cfg["raysae"]["train"]["sparsity_coefficient"] == m["config"]["sparsity_coefficient"]
    # ... and in the public Gemma Scope release's layout, by layer, width and rounded L0
    from raysae.sae.release import list_release
    release = list_release(storage.join(result.sweep_url, "release", "res"))
    assert {(e.layer, e.width) for e in release} == {(1, "64"), (1, "128")}
    for e in release:  # each is one of the sweep's SAEs, at its rounded L0
        m = next(m for m in finals.values() if storage.read_bytes(
            e.url.rsplit("/", 1)[0] + "/trial").decode() == m["trial"])
        assert e.average_l0 == round(m["eval/l0"]) and int(e.width) == m["config"]["width"]
    # One checkpoint location: the loop's checkpoints on the sweep's storage; Tune holds a
    # pointer to the newest, and the newest holds the stream position the trial reached.
    for r in result.results:
        tid = r.metrics["trial"]
        pointed, step = read_pointer(r.checkpoint.path)
        assert pointed == storage.join(result.sweep_url, "checkpoints", tid, "step-000000060")
        assert step == 60 and not os.path.exists(os.path.join(r.checkpoint.path, "state.npz"))
        ck = load_checkpoint(latest_checkpoint(storage.join(result.sweep_url, "checkpoints", tid)))
        assert ck.norm_scalar == pytest.approx(1.3)
        # joined the live stream at some batch and trained on the 60 after it
        assert ck.step == 60 and ck.data_position == r.metrics["stream/start"] + 60
    # TensorBoard: each trial's own events, by optimiser step, under <sweep>/tensorboard/<trial>
    for tid, m in finals.items():
        events = read_events(os.path.join(result.sweep_url, "tensorboard", tid))
        assert [s for s, _ in events["l0"]] == list(range(10, 61, 10))  # log_every=10, 60 steps
        assert events["tokens"][-1] == (60, 60 * 256)
        assert events["eval/fvu"] == [(60, pytest.approx(m["eval/fvu"], rel=1e-6))]
        hparams = os.listdir(os.path.join(result.sweep_url, "tensorboard", tid, "hparams"))
        assert any("tfevents" in f for f in hparams)  # the HPARAMS tab's run


def test_killed_trial_restarts_from_its_checkpoint(cluster, tmp_path):
    config = from_dict(SweepConfig, spec(tmp_path, "kill", widths=[64], sparsity={"grid": [0.03]},
                                         tokens=256 * 12000,
                                         train__checkpoint_every=100, train__log_every=50))
    sweep_dir = str(tmp_path / "runs" / "kill")
    killed = {}

    def killer():
        deadline = time.time() + 600
        while time.time() < deadline and not killed:
            for d in (os.listdir(sweep_dir) if os.path.isdir(sweep_dir) else []):
                tdir = os.path.join(sweep_dir, d)
                try:  # Tune's JSON logger writes result.json in the driver, maybe a bit later
                    lines = open(os.path.join(tdir, "result.json")).read().splitlines()
                    last = json.loads(lines[-1])
                except (OSError, ValueError, IndexError):
                    continue
                # any persisted checkpoint (Tune prunes old ones, so not just the first)
                if any(n.startswith("checkpoint_") for n in os.listdir(tdir)):
                    if 200 <= last["step"] < 11000:  # long enough to catch on a fast machine
                        os.kill(last["pid"], signal.SIGKILL)
                        killed.update(pid=last["pid"], step=last["step"])
                        return
            time.sleep(0.1)

    t = threading.Thread(target=killer, daemon=True)
    t.start()
    result = run_sweep(config, verbose=0)
    t.join(timeout=5)
    assert killed, "the trial finished before it could be killed"
    (m,) = final_results(result).values()
    assert result.results[0].error is None
    assert m["pid"] != killed["pid"]                    # a new worker process finished it
    # From a checkpoint, not from scratch (the step seen in Tune's result.json lags the
    # trial, so the checkpoint it restored may be newer than the step the killer read).
    assert killed["step"] >= 200 and 100 <= m["restored_step"] < 12000
    assert m["restored_step"] % 100 == 0
    # the restarted trial went on reading the shared stream where its checkpoint had left it
    ck = load_checkpoint(latest_checkpoint(storage.join(result.sweep_url, "checkpoints",
                                                        m["trial"])))
    assert ck.step == 12000 and ck.data_position == m["stream/start"] - m["restored_step"] + 12000
    assert m["step"] == 12000 and "eval/fvu" in m


def _done_rows(url):
    try:
        return [r for r in frontier.read_frontier(url) if r["status"] == "done"]
    except (json.JSONDecodeError, FileNotFoundError):
        return []


def test_killed_driver_resumes_without_rerunning_finished_trials(cluster, tmp_path):
    data = spec(tmp_path, "resume", widths=[64], tokens=256 * 120, concurrency=1)
    path = tmp_path / "resume.yaml"
    path.write_text(yaml.safe_dump(data))
    sweep_url = str(tmp_path / "runs" / "resume")
    cmd = [sys.executable, "-m", "raysae.cli", "sweep", str(path), "--address", cluster]
    driver = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 600
    while time.time() < deadline and not _done_rows(sweep_url):
        assert driver.poll() is None, driver.stderr.read().decode()[-3000:]
        time.sleep(0.2)
    driver.send_signal(signal.SIGKILL)
    driver.wait()
    first = _done_rows(sweep_url)
    assert 1 <= len(first) < 3
    stamps = {r["trial"]: os.stat(os.path.join(r["sae_url"], "params.npz")).st_mtime_ns for r in first}

    from raysae.sweep import load_sweep

    resumed = run_sweep(load_sweep(str(path)), resume=True, verbose=0)  # as `--resume` does
    assert all(r.error is None for r in resumed.results)
    rows = _done_rows(sweep_url)
    assert len(rows) == 3 and {r["sparsity_coefficient"] for r in rows} == {0.003, 0.03, 0.3}
    for tid, stamp in stamps.items():  # finished trials were not trained again
        sae = next(r["sae_url"] for r in rows if r["trial"] == tid)
        assert os.stat(os.path.join(sae, "params.npz")).st_mtime_ns == stamp
    # The resumed sweep's brokers held no ring for trials that were already done, and sought
    # to where their consumers were instead of producing from batch 0 (their own counters).
    (stats,) = resumed.stream_stats.values()
    assert all(st.expect_consumers == 0 and st.restarted and st.error is None for st in stats)


def test_user_search_algorithm_and_scheduler(cluster, tmp_path):
    """The Python API takes a Tune searcher and scheduler: Optuna multi-objective over λ
    (grid axes become choices it understands) with ASHA stopping on FVU."""
    optuna_search = pytest.importorskip("ray.tune.search.optuna")
    from ray.tune.schedulers import ASHAScheduler

    config = from_dict(SweepConfig, spec(
        tmp_path, "search", widths=[64, 128], tokens=256 * 40,
        sparsity={"distribution": "loguniform", "low": 1e-3, "high": 1e-1, "num_samples": 2}))
    result = run_sweep(
        config, verbose=0,
        search_alg=optuna_search.OptunaSearch(metric=["eval/l0", "eval/fvu"], mode=["min", "min"],
                                              seed=0),
        scheduler=ASHAScheduler(metric="fvu", mode="min", time_attr="step", max_t=40,
                                grace_period=10))
    assert len(result.results) == 4 and all(r.error is None for r in result.results)
    lams = [r.metrics["config"]["sparsity_coefficient"] for r in result.results]
    assert len(set(lams)) == 4 and all(1e-3 <= x <= 1e-1 for x in lams)  # sampled, not a grid
    assert {r.metrics["config"]["width"] for r in result.results} <= {64, 128}
    assert len(frontier.read_frontier(result.sweep_url)) == 4
