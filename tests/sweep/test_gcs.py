"""gs:// for real: an LM's weights, an SAE and its evaluation, the caching job, a sweep (storage,
cache, Tune's files, checkpoints, frontier) and its --resume, all on a GCS emulator."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import ray

from raysae import storage
from tests.gcs import BUCKET, emulator

pytestmark = [pytest.mark.slow, pytest.mark.ray, pytest.mark.timeout(900)]
GS = f"gs://{BUCKET}"


@pytest.fixture(scope="module")
def gcs():
    with emulator() as env:
        yield env


def test_lm_weights_an_sae_and_its_eval_on_gs(gcs, tmp_path, capsys):
    from raysae.evals.cli import main as eval_main
    from raysae.lm import load_lm
    from raysae.lm.source import TINY_DIR
    from raysae.sae import init_params
    from raysae.sae.formats import load_npz, save_npz

    for name in os.listdir(TINY_DIR):  # the embedded model, uploaded as a checkpoint dir
        path = os.path.join(TINY_DIR, name)
        if os.path.isfile(path):
            storage.write_bytes_atomic(f"{GS}/models/tiny-2/{name}", open(path, "rb").read())
    here, there = load_lm("tiny"), load_lm(f"{GS}/models/tiny-2")
    assert there.name == "tiny-2"
    np.testing.assert_array_equal(np.asarray(there.params["embed_tokens"]),
                                  np.asarray(here.params["embed_tokens"]))
    import jax

    sae = init_params(jax.random.PRNGKey(0), 128, 256)._replace(
        threshold=np.full(256, 0.3, np.float32))
    url = save_npz(sae, f"{GS}/saes/a")
    np.testing.assert_array_equal(load_npz(url).W_dec, np.asarray(sae.W_dec))
    np.save(tmp_path / "t.npy", np.random.default_rng(0).integers(3, 200, (4, 32)))
    storage.write_bytes_atomic(f"{GS}/toks.npy", (tmp_path / "t.npy").read_bytes())
    code = eval_main(["--sae", url, "--model", f"{GS}/models/tiny-2", "--site", "res:1",
                      "--tokens", f"{GS}/toks.npy", "--num-sequences", "4", "--context-length",
                      "32", "--out", f"{GS}/evals/a", "--no-progress", "--no-plots"])
    assert code == 0
    report = json.loads(storage.read_bytes(f"{GS}/evals/a/eval.json"))
    assert report["summary"]["num_tokens"] > 0 and report["model"] == "tiny-2"
    # one upload per file on an object store: no temporary objects left behind
    assert not [n for n in storage.listdir(f"{GS}/evals/a") if storage.is_temp_name(n)]


def test_a_sweep_cached_trained_and_resumed_on_gs(gcs):
    from raysae.config import from_dict
    from raysae.sweep import SweepConfig
    from raysae.sweep.launch import run_sweep
    from raysae.train import latest_checkpoint

    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    spec = {"name": "g", "storage": f"{GS}/sweeps", "model": "tiny", "sites": ["res:1"],
            "widths": [64], "sparsity": {"grid": [0.01]}, "tokens": 256 * 30,
            "train": {"batch_size": 256, "lr": 0.003, "lr_warmup_steps": 5,
                      "sparsity_warmup_steps": 10, "log_every": 10, "checkpoint_every": 10},
            "data": {"text": "python-stdlib", "cache_url": f"{GS}/cache",
                     "cache": {"max_tokens": 20000, "context_length": 64, "rows_per_shard": 8192,
                               "norm_sample_rows": 4096, "progress": False}},
            "eval": {"num_sequences": 4, "context_length": 64, "frequency_sequences": 8,
                     "per_position": False, "r_l0": False},
            "stream": {"buffer_batches": 8}, "resources": {"cpus": 1}}
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": dict(gcs)})
    try:
        first = run_sweep(from_dict(SweepConfig, spec), verbose=0)
        assert all(r.error is None for r in first.results)
        sweep = f"{GS}/sweeps/g"
        assert storage.exists(f"{GS}/cache/res_1/manifest.json")        # caching to gs://
        (row,) = first.frontier
        assert row["status"] == "done" and row["sae_url"].startswith(sweep)
        ckpt = latest_checkpoint(f"{sweep}/checkpoints/{row['trial']}")    # checkpoints on gs://
        assert ckpt is not None and ckpt.startswith(sweep)
        names = storage.listdir(sweep)
        assert {"frontier.json", "frontier.csv", "sweep.yaml"} <= set(names)
        assert any(n.startswith("experiment_state") for n in names)        # Tune's own files
        done = storage.read_bytes(f"{row['sae_url']}/result.json")
        # --resume from gs:// with one more λ: the finished trial is kept, the new one trained
        spec["sparsity"] = {"grid": [0.01, 0.03]}
        resumed = run_sweep(from_dict(SweepConfig, spec), resume=True, verbose=0)
    finally:
        ray.shutdown()
    assert all(r.error is None for r in resumed.results)
    rows = {r["sparsity_coefficient"]: r for r in resumed.frontier}
    assert set(rows) == {0.01, 0.03} and all(r["status"] == "done" for r in rows.values())
    assert storage.read_bytes(f"{rows[0.01]['sae_url']}/result.json") == done
