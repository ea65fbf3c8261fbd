"""Packed sweeps (`pack: K`): K grid SAEs per Tune trial, each still an SAE of its own.

A packed sweep must give the same SAEs as one trial per SAE (names, saved SAEs, results,
frontier rows, TensorBoard runs; values equal to float tolerance on the same data), and
`--resume` must treat a pack's members as the SAEs they are.
"""

import os

import numpy as np
import pytest
import ray

from raysae import storage
from raysae.config import from_dict
from raysae.evals import frontier
from raysae.sae import formats
from raysae.sweep import SweepConfig
from raysae.sweep.launch import run_sweep
from raysae.train import latest_checkpoint, load_checkpoint
from tests.helpers import read_events, write_cache

pytestmark = [pytest.mark.ray, pytest.mark.timeout(900)]
os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")

LAMBDAS = [0.003, 0.01, 0.03, 0.3]  # pack 3: one trial of 3 SAEs and one of the last alone


@pytest.fixture(scope="module")
def cluster():
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def config(root, name, pack):
    cache = os.path.join(root, "cache")
    if not os.path.exists(os.path.join(cache, "manifest.json")):
        write_cache(cache, shards=2, rows=4096)
    # each trial reads its own copy of the cache: the same batches whatever the packing
    return from_dict(SweepConfig, {
        "name": name, "storage": os.path.join(root, "runs"), "model": "tiny", "sites": ["res:1"],
        "widths": [64], "sparsity": {"grid": LAMBDAS}, "tokens": 256 * 30, "pack": pack,
        "shared_stream": False,
        "train": {"batch_size": 256, "lr": 0.003, "lr_warmup_steps": 5,
                  "sparsity_warmup_steps": 10, "log_every": 10, "checkpoint_every": 20},
        "stream": {"shuffle_window": 1024}, "data": {"manifest": cache},
        "final_eval": {"activation_batches": 2, "formats": ["npz"]},
        "resources": {"cpus": 1}, "failure": {"max_failures": 0}})


@pytest.fixture(scope="module")
def sweeps(cluster, tmp_path_factory):
    root = str(tmp_path_factory.mktemp("pack"))
    return {pack: run_sweep(config(root, f"p{pack}", pack), verbose=0, progress=False)
            for pack in (3, 1)}


def done_rows(url):
    return {r["trial"]: r for r in frontier.read_frontier(url)}


def test_a_packed_sweep_gives_the_same_saes_as_one_trial_each(sweeps):
    packed, lone = sweeps[3], sweeps[1]
    assert len(packed.results) == 2 and len(lone.results) == 4  # Tune trials
    assert all(r.error is None for r in list(packed.results) + list(lone.results))
    p_rows, l_rows = done_rows(packed.sweep_url), done_rows(lone.sweep_url)
    # the same SAEs under the same names, each a frontier row of its own
    assert set(p_rows) == set(l_rows) and len(p_rows) == 4
    assert sorted(r["sparsity_coefficient"] for r in p_rows.values()) == LAMBDAS
    for key, p in p_rows.items():
        q = l_rows[key]
        assert p["status"] == q["status"] == "done" and p["step"] == q["step"] == 30
        assert p["l0"] == pytest.approx(q["l0"], rel=1e-3, abs=1e-3)
        assert p["fvu"] == pytest.approx(q["fvu"], rel=1e-3, abs=1e-4)
        assert p["frontier_fvu"] == q["frontier_fvu"]
        # saved SAEs and result.json per SAE, at the path it has alone (under its sweep)
        rel = os.path.relpath(p["sae_url"], packed.sweep_url)
        assert rel == os.path.relpath(q["sae_url"], lone.sweep_url)
        a, b = formats.load_npz(p["sae_url"]), formats.load_npz(q["sae_url"])
        for x, y in zip(a, b):
            np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-5)
        assert storage.exists(storage.join(p["sae_url"], "result.json"))
        # its own TensorBoard run, by optimiser step
        events = read_events(os.path.join(packed.sweep_url, "tensorboard", key))
        assert [s for s, _ in events["l0"]] == [10, 20, 30]
        assert events["sparsity_coefficient"][-1][1] == pytest.approx(p["sparsity_coefficient"])
    # the packed trial's report holds each member's final row under its key
    pack_result = next(r for r in packed.results if "members" in r.metrics)
    assert len(pack_result.metrics["members"]) == 3
    assert {m["trial"] for m in pack_result.metrics["members"].values()} <= set(p_rows)
    # one stacked checkpoint for the pack, under the pack's own key
    roots = os.listdir(os.path.join(packed.sweep_url, "checkpoints"))
    assert len(roots) == 2
    packs = [load_checkpoint(latest_checkpoint(os.path.join(packed.sweep_url, "checkpoints", r)))
             for r in roots]
    assert sorted(len(c.pack) if c.pack else 1 for c in packs) == [1, 3]


def test_resume_of_a_packed_sweep_finishes_only_the_missing_saes(sweeps):
    packed = sweeps[3]
    rows = done_rows(packed.sweep_url)
    by_lam = {r["sparsity_coefficient"]: r for r in rows.values()}
    # as if the driver died while the pack was saving its SAEs: the 2nd member's result is gone
    lost = by_lam[0.01]
    os.remove(os.path.join(lost["sae_url"], "result.json"))
    stamps = {k: os.stat(os.path.join(r["sae_url"], "params.npz")).st_mtime_ns
              for k, r in rows.items()}
    before = formats.load_npz(lost["sae_url"])
    cfg = config(os.path.dirname(os.path.dirname(packed.sweep_url)), "p3", 3)
    resumed = run_sweep(cfg, resume=True, verbose=0, progress=False)
    assert all(r.error is None for r in resumed.results)
    after = done_rows(packed.sweep_url)
    assert set(after) == set(rows) and all(r["status"] == "done" for r in after.values())
    assert storage.exists(os.path.join(lost["sae_url"], "result.json"))
    for key, stamp in stamps.items():  # only the lost member was saved again
        now = os.stat(os.path.join(rows[key]["sae_url"], "params.npz")).st_mtime_ns
        assert (now != stamp) == (key == lost["trial"]), key
    # ... from the pack's final checkpoint: the same SAE, not a retrained one
    for x, y in zip(formats.load_npz(lost["sae_url"]), before):
        np.testing.assert_array_equal(x, y)
    assert after[lost["trial"]]["fvu"] == pytest.approx(lost["fvu"])
