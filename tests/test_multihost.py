"""Multi-process SAE training on CPU matches the single-process result.

- Two plain processes (this file run as a script) join one JAX job with
  `train.distributed.initialize` (gloo), 2 CPU devices each, and train on a 2 × 2 mesh
  whose data axis spans the processes; each process feeds only its own rows of each batch.
- A 2-worker Ray Train `JaxTrainer` (raysae.sweep.jax_trainer) does the same with the
  model axis spanning the processes and every worker reading the global batches.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

B, D, M, STEPS = 16, 8, 64, 4


def _config(**kw):
    from raysae.train import TrainConfig

    base = dict(width=M, batch_size=B, steps=STEPS, lr=3e-3, lr_warmup_steps=2,
                sparsity_warmup_steps=2, sparsity_coefficient=3e-2, log_every=2,
                checkpoint_every=2, threshold_init=0.05)
    return TrainConfig(**{**base, **kw})


def _batches() -> list[np.ndarray]:
    return [np.random.default_rng(100 + i).normal(size=(B, D)).astype(np.float32)
            for i in range(STEPS)]


def _reference():
    from raysae.train import train

    return train(_config(), _batches())


def _process_main(port: int, pid: int, out: str) -> None:
    from jax.sharding import NamedSharding

    from raysae.train import distributed
    from raysae.train.mesh import BATCH_SPEC, make_mesh
    from raysae.train.sharded import local_rows, train_sharded

    info = distributed.initialize(f"127.0.0.1:{port}", 2, pid)
    mesh = make_mesh(2, 2)                                 # data axis across the 2 processes
    rows = local_rows(NamedSharding(mesh, BATCH_SPEC), (B, D))
    batches = [b[rows] for b in _batches()]
    result = train_sharded(_config(), batches, d=D, mesh=mesh, local_batches=True,
                           checkpoint_url=f"file://{out}/ckpt")
    if pid == 0:
        np.savez(f"{out}/params.npz", **result.params._asdict())
    print(json.dumps({"pid": pid, "info": list(info), "rows": [rows.start, rows.stop],
                      "losses": [h["loss"] for h in result.history]}))
    distributed.shutdown()


def test_two_jax_processes_match_single_process(tmp_path):
    from raysae.train import distributed
    from raysae.train.checkpoint import latest_checkpoint, load_checkpoint

    port = distributed.free_port("127.0.0.1")
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2",
               JAX_PLATFORMS="cpu")
    procs = [subprocess.Popen([sys.executable, __file__, str(port), str(i), str(tmp_path)],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for i in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    for p, (_, err) in zip(procs, outs):
        assert p.returncode == 0, err[-3000:]
    reports = sorted((json.loads(o.strip().splitlines()[-1]) for o, _ in outs),
                     key=lambda r: r["pid"])
    assert [r["info"][:4] for r in reports] == [[0, 2, 2, 4], [1, 2, 2, 4]]
    assert [r["rows"] for r in reports] == [[0, B // 2], [B // 2, B]]

    ref = _reference()
    got = np.load(tmp_path / "params.npz")
    for name, value in ref.params._asdict().items():
        np.testing.assert_allclose(got[name], value, rtol=1e-5, atol=1e-6, err_msg=name)
    ref_losses = [h["loss"] for h in ref.history]
    for r in reports:                                      # both processes saw the global loss
        np.testing.assert_allclose(r["losses"], ref_losses, rtol=1e-5)
    # Process 0 wrote a complete checkpoint of the sharded state; it loads unsharded.
    ckpt = load_checkpoint(latest_checkpoint(f"file://{tmp_path}/ckpt"))
    assert ckpt.step == STEPS
    np.testing.assert_allclose(np.asarray(ckpt.state.params.W_dec), ref.params.W_dec,
                               rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_two_worker_jax_trainer_matches_single_process(tmp_path):
    import ray

    from raysae.sae.formats import load_npz
    from raysae.sweep.jax_trainer import fit, scaling_config
    from ray.train.v2.api.config import RunConfig

    batches = _batches()

    def data_fn(process_index: int, process_count: int):
        assert process_count == 2
        return list(batches)                                # global batches on every worker

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        out = fit(_config(model_parallel=4), data_fn, d=D,
                  scaling=scaling_config(2, resources_per_worker={"CPU": 1}),
                  cpu_devices_per_worker=2, output_url=f"file://{tmp_path}/sae",
                  checkpoint_url=f"file://{tmp_path}/ckpt",
                  run_config=RunConfig(name="multihost", storage_path=str(tmp_path / "ray")))
    finally:
        ray.shutdown()
    assert out.metrics["done"] and out.metrics["step"] == STEPS
    assert out.metrics["process_count"] == 2 and out.metrics["global_devices"] == 4
    assert (out.metrics["data_parallel"], out.metrics["model_parallel"]) == (1, 4)
    ref = _reference()
    np.testing.assert_allclose(out.metrics["loss"], ref.history[-1]["loss"], rtol=1e-5)
    got = load_npz(out.params_url)
    in_ckpt = load_npz(os.path.join(out.result.checkpoint.path, "params.npz"))
    np.testing.assert_array_equal(in_ckpt.W_enc, got.W_enc)   # also the Ray Train checkpoint
    for name, value in ref.folded._asdict().items():
        np.testing.assert_allclose(getattr(got, name), value, rtol=1e-5, atol=1e-6, err_msg=name)


if __name__ == "__main__":
    _process_main(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3])
    sys.stdout.flush()
    os._exit(0)  # skip XLA's runtime teardown, which can abort at exit after the work is done
