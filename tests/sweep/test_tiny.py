"""sweeps/tiny.yaml end to end (reduced steps): caching from python-stdlib with the tiny LM,
6 trials on a local Ray cluster, delta LM loss with the SAE spliced in, frontier files."""

import os

import pytest
import ray

from raysae import storage
from raysae.cli import main, sweep_file
from raysae.evals import frontier
from raysae.sae import formats
from raysae.sae.saelens import load_saelens

pytestmark = [pytest.mark.slow, pytest.mark.ray, pytest.mark.timeout(1200)]


def test_tiny_sweep_end_to_end(tmp_path, capsys):
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        code = main(["sweep", "tiny", "--set", f"storage={tmp_path}",
                     "--set", "tokens=32768", "--set", "data.cache.max_tokens=60000",
                     "--set", "eval.num_sequences=8"])
    finally:
        ray.shutdown()
    out = capsys.readouterr().out
    assert code == 0
    sweep_url = str(tmp_path / "tiny")
    assert f"frontier: {sweep_url}/frontier.png" in out
    rows = frontier.read_frontier(sweep_url)
    assert len(rows) == 6 and all(r["status"] == "done" for r in rows)
    for w in {r["width"] for r in rows}:
        group = [r for r in rows if r["width"] == w]
        assert len(group) == 3
        for r in group:
            # delta loss measured with the SAE spliced into the tiny LM; positive for a lossy SAE
            assert r["delta_loss"] is not None and r["delta_loss"] > 0
            dominated = any(o["l0"] <= r["l0"] and o["delta_loss"] <= r["delta_loss"] and
                            (o["l0"] < r["l0"] or o["delta_loss"] < r["delta_loss"]) for o in group)
            assert r["frontier_delta_loss"] == (not dominated)
        assert any(r["frontier_delta_loss"] for r in group)
    sae = formats.load_npz(rows[0]["sae_url"])
    assert sae.W_enc.shape[0] == 128   # the tiny model's d_model at res:2
    # the cache was made under the sweep and holds the site's manifest
    assert storage.exists(storage.join(sweep_url, "cache", "res_2", "manifest.json"))
    assert sweep_file("tiny").endswith("sweeps/tiny.yaml")


def test_transcoder_sweep_end_to_end(tmp_path, capsys):
    """A transcoder site (App. B): cached as aligned mlp_in/mlp pairs, trained with
    transcoder=True, evaluated by splicing it in place of the layer's MLP, saved in the
    Gemma Scope and SAELens (jumprelu_transcoder) layouts."""
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        code = main(["sweep", "tiny", "--set", f"storage={tmp_path}",
                     "--set", "name=tc", "--set", "sites=[transcoder:1]", "--set", "widths=[256]",
                     "--set", "sparsity.grid=[0.003]", "--set", "tokens=16384",
                     "--set", "data.cache.max_tokens=30000", "--set", "eval.num_sequences=4"])
    finally:
        ray.shutdown()
    assert code == 0, capsys.readouterr().err
    (row,) = frontier.read_frontier(str(tmp_path / "tc"))
    assert row["status"] == "done" and row["site"] == "transcoder:1" and row["delta_loss"] > 0
    npz = formats.load_npz(row["sae_url"])
    assert npz.W_enc.shape == (128, 256) and npz.W_dec.shape == (256, 128)
    lens, cfg = load_saelens(storage.join(row["sae_url"], "saelens"))
    assert cfg["architecture"] == "jumprelu_transcoder"
    assert cfg["metadata"]["hook_name_out"] == "blocks.1.hook_mlp_out"
    assert storage.exists(storage.join(str(tmp_path / "tc"), "cache", "transcoder_1", "manifest.json"))
