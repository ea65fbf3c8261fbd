"""The multi-host launcher: a 2-worker Ray Train JaxTrainer (gloo CPU workers, 2 devices each)
trains with the model axis across the processes and matches one process."""

from __future__ import annotations

import pytest

from tests.train.test_multihost import C, D, STEPS, _batches, _config, _reference

pytestmark = [pytest.mark.slow, pytest.mark.ray]


def test_two_worker_jax_trainer_matches_single_process(tmp_path):
    import numpy as np
    import ray
    from ray.train.v2.api.config import RunConfig

    from raysae.sweep.jax_trainer import run_workers, scaling_config

    batches = _batches()
    url = f"file://{tmp_path}/ckpt"

    def work(payload, report):
        import jax

        from raysae.train import train

        splits = []
        result = train(_config(model_parallel=4), payload, norm_scalar=C, d=D,
                       checkpoint_url=url, on_split=splits.append,
                       on_metrics=lambda step, row: report(row))
        report({**result.history[-1], "processes": jax.process_count(),
                "devices": jax.device_count(), "split": [splits[0].data, splits[0].model],
                "W_dec": np.asarray(result.params.W_dec).tolist()}, url)

    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        out = run_workers(work, batches, scaling_config(2, resources_per_worker={"CPU": 1}),
                          cpu_devices_per_worker=2,
                          run_config=RunConfig(name="multihost", storage_path=str(tmp_path / "ray")))
    finally:
        ray.shutdown()
    m = out.metrics
    assert m["step"] == STEPS and m["processes"] == 2 and m["devices"] == 4
    assert m["split"] == [1, 4]
    ref = _reference()
    np.testing.assert_allclose(m["loss"], ref.history[-1]["loss"], rtol=1e-5)
    np.testing.assert_allclose(np.array(m["W_dec"]), ref.params.W_dec, rtol=1e-5, atol=1e-6)
    # rank 0 attached a pointer to the checkpoint on storage as the Ray Train checkpoint
    from raysae.sweep.pointer import read_pointer

    pointed, step = read_pointer(out.checkpoint.path)
    assert pointed == url and step == STEPS
