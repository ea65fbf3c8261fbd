"""A trial that needs several hosts runs as a JaxTrainer job inside the Tune trial (2 CPU
workers joined by jax.distributed/gloo), reports through Tune and saves its SAE."""

import os

import pytest
import ray

from raysae.config import from_dict
from raysae.sae import formats
from raysae.sweep import SweepConfig
from raysae.sweep.launch import run_sweep
from tests.sweep.test_sweep import spec

pytestmark = [pytest.mark.slow, pytest.mark.ray, pytest.mark.timeout(900)]


def test_two_host_trial_through_jax_trainer(tmp_path):
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    ray.init(address="local", num_cpus=4, include_dashboard=False, log_to_driver=False)
    try:
        config = from_dict(SweepConfig, spec(tmp_path, "dist", widths=[64], sparsity={"grid": [0.03]},
                                             tokens=256 * 40, resources={"cpus": 1, "hosts": 2}))
        result = run_sweep(config, verbose=0)
    finally:
        ray.shutdown()
    (r,) = list(result.results)
    assert r.error is None, r.error
    m = r.metrics
    assert m["step"] == 40 and "eval/fvu" in m, sorted(m)
    assert m.get("processes") == 2 and m.get("devices") == 2   # a mesh over both processes
    sae = formats.load_npz(m["sae_url"])
    assert sae.W_enc.shape == (32, 64)
    # one checkpoint location, shared by the processes; Tune holds a pointer to it
    from raysae import storage
    from raysae.sweep.pointer import read_pointer
    from raysae.train import latest_checkpoint

    root = storage.join(result.sweep_url, "checkpoints", m["trial"])
    assert read_pointer(r.checkpoint.path)[0] == latest_checkpoint(root)
