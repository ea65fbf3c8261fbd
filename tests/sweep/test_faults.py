"""Fault injection on the tiny model: a disk that fills up mid-sweep, then frees, and the
caching job on a disk that fills up; both finish with `--resume` / a rerun to exactly what an
uninterrupted run gives."""

from __future__ import annotations

import os

import numpy as np
import pytest
import ray

from raysae import storage
from raysae.config import from_dict
from raysae.sae.formats import load_npz
from raysae.sweep import SweepConfig
from tests import faultfs

pytestmark = [pytest.mark.slow, pytest.mark.ray, pytest.mark.timeout(900)]
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="module")
def full_disk(tmp_path_factory):
    """A private Ray cluster whose every process knows the `full://` filesystem."""
    budget = str(tmp_path_factory.mktemp("budget") / "budget.json")
    faultfs.set_budget(budget, None)
    faultfs.register()
    os.environ[faultfs.ENV] = budget
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"worker_process_setup_hook": "tests.faultfs.register",
                          "env_vars": {faultfs.ENV: budget, "PYTHONPATH": REPO}})
    yield budget
    ray.shutdown()
    os.environ.pop(faultfs.ENV, None)


def _spec(storage_url: str, cache_url: str, name: str) -> SweepConfig:
    return from_dict(SweepConfig, {
        "name": name, "storage": storage_url, "model": "tiny", "sites": ["res:1"],
        "widths": [64], "sparsity": {"grid": [0.01, 0.03]}, "tokens": 256 * 60,
        "train": {"batch_size": 256, "lr": 0.003, "lr_warmup_steps": 5,
                  "sparsity_warmup_steps": 20, "log_every": 10, "checkpoint_every": 10},
        "data": {"text": "python-stdlib", "cache_url": cache_url,
                 "cache": {"max_tokens": 30000, "context_length": 64, "rows_per_shard": 8192,
                           "norm_sample_rows": 4096, "progress": False}},
        "shared_stream": False, "concurrency": 1,
        "eval": {"num_sequences": 4, "context_length": 64, "frequency_sequences": 8,
                 "per_position": False, "r_l0": False},
        "final_eval": {"formats": ["npz"]}, "failure": {"max_failures": 0},
        "resources": {"cpus": 1}})


def _saes(sweep_url: str) -> dict[str, np.ndarray]:
    root = storage.join(sweep_url, "saes", "res_1")
    return {name: load_npz(storage.join(root, name)) for name in storage.listdir(root)}


def test_a_full_disk_mid_sweep_then_resume_gives_the_uninterrupted_result(full_disk, tmp_path):
    from raysae.sweep.launch import SweepError, run_sweep

    cache = str(tmp_path / "cache")
    reference = run_sweep(_spec(str(tmp_path / "ref"), cache, "s"), verbose=0)
    want = _saes(reference.sweep_url)
    assert len(want) == 2

    # The same sweep on a disk with room for ~1.5 checkpoints of one trial plus Tune's files.
    faultfs.set_budget(full_disk, 400_000)
    config = _spec("full://" + str(tmp_path / "full"), cache, "s")
    try:
        first = run_sweep(config, verbose=0)
        failed = [r for r in first.results if r.error is not None]
        assert failed, "the disk never filled up"
    except (SweepError, OSError) as e:  # Tune itself could not write: one clear error
        assert "rerun with --resume" in str(e) or "No space left" in str(e)
    assert faultfs.read_budget(full_disk)["left"] < 100_000  # it really ran out

    faultfs.set_budget(full_disk, None)  # space freed
    resumed = run_sweep(config, resume=True, verbose=0)
    assert all(r.error is None for r in resumed.results)
    got = _saes(resumed.sweep_url)
    assert set(got) == set(want)
    for name in want:  # bit for bit what the uninterrupted sweep trained
        for a, b in zip(got[name], want[name]):
            np.testing.assert_array_equal(a, b)
    rows = [r for r in resumed.frontier if r["status"] == "done"]
    assert len(rows) == 2 and len({r["trial"] for r in rows}) == 2


def test_the_caching_job_on_a_full_disk_resumes_to_identical_shards(full_disk, tmp_path):
    from raysae.activations.cache import build_cache
    from raysae.activations.config import CacheConfig

    def job(output):
        return CacheConfig(inputs=["python-stdlib"], output=output, sites=["res:1"],
                           max_tokens=30000, context_length=64, rows_per_shard=4096,
                           norm_sample_rows=4096, progress=False, write_from="driver")

    ref = job(str(tmp_path / "ref"))
    build_cache(ref)
    faultfs.set_budget(full_disk, 5_500_000)  # room for two of the 8 shards of 2 MiB
    full = job("full://" + str(tmp_path / "full"))
    with pytest.raises(OSError, match="No space left"):
        build_cache(full)
    faultfs.set_budget(full_disk, None)
    summary = build_cache(full)
    assert 0 < summary.shards_written < 8  # it kept the shards written before the disk filled
    from raysae.data import Manifest

    a, b = (storage.join(c.output, "res_1") for c in (ref, full))
    ma, mb = Manifest.load(a), Manifest.load(b)
    assert ma.shards == mb.shards and ma.norm_scalar == mb.norm_scalar
    for info in ma.shards:  # byte for byte the uninterrupted job's shards
        assert storage.read_bytes(storage.join(a, info.name)) == \
            storage.read_bytes(storage.join(b, info.name)), info.name
