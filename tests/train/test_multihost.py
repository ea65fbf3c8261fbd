"""Multi-process SAE training on CPU matches the single-process result.

Two plain processes (this file run as a script) join one JAX job with
`train.distributed.initialize` (gloo), 2 CPU devices each, and train on a 2 × 2 mesh whose
data axis spans the processes; each process feeds only its own rows of each batch. (The
same through Ray Train's JaxTrainer: tests/sweep/test_jax_trainer.py.)
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np

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


C = 2.0


def _reference():
    import jax

    from raysae.train import train

    return train(_config(), _batches(), norm_scalar=C, devices=jax.devices()[:1])


def _process_main(port: int, pid: int, out: str) -> None:
    from jax.sharding import NamedSharding

    from raysae.train import distributed
    from raysae.train.mesh import BATCH_SPEC, make_mesh
    from raysae.train import train
    from raysae.train.sharded import local_rows

    info = distributed.initialize(f"127.0.0.1:{port}", 2, pid)
    mesh = make_mesh(2, 2)                                 # data axis across the 2 processes
    rows = local_rows(NamedSharding(mesh, BATCH_SPEC), (B, D))
    batches = [b[rows] for b in _batches()]
    result = train(_config(), batches, norm_scalar=C, d=D, mesh=mesh, local_batches=True,
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


if __name__ == "__main__":
    _process_main(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3])
    sys.stdout.flush()
    os._exit(0)  # skip XLA's runtime teardown, which can abort at exit after the work is done
