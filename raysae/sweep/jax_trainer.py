"""Ray Train launcher for work that spans several JAX processes: hosts, or a TPU slice.

`run_workers(fn, payload, scaling)` runs ``fn(payload, report)`` in every worker of a
`ray.train.v2.jax.JaxTrainer`, after `setup_worker` joined the workers into one JAX job
(Ray 2.60 initialises `jax.distributed` itself only on TPU and GPU; CPU workers join over
gloo with a coordinator address rank 0 broadcasts). `report(metrics, checkpoint_url)` is
`ray.train.report`, with rank 0 attaching a checkpoint pointer; a wrapping Tune trial gets
the reports through Ray's TuneReportCallback. JAX is imported inside the workers.
"""

from __future__ import annotations

import os
import shutil
from typing import Any, Callable

import ray.train
from ray.train import ScalingConfig
from ray.train.v2.api.config import RunConfig
from ray.train.v2.jax import JaxTrainer

from raysae.sweep.pointer import pointer_dir

WorkerFn = Callable[[Any, Callable[..., None]], Any]


def setup_worker(cpu_devices: int | None = None, cpu_collectives: str = "gloo"):
    """Join this Ray Train worker to the job's JAX runtime; returns a ProcessInfo.

    Args:
        cpu_devices: CPU only: expose that many host devices in this worker (so a CPU job
            exercises real multi-device meshes). Must run before any JAX computation.
        cpu_collectives: the CPU collectives implementation.
    """
    from ray.train.collective import broadcast_from_rank_zero

    if cpu_devices:
        flag = f"--xla_force_host_platform_device_count={cpu_devices}"
        os.environ["XLA_FLAGS"] = " ".join(
            f for f in os.environ.get("XLA_FLAGS", "").split()
            if not f.startswith("--xla_force_host_platform_device_count")) + " " + flag
    from raysae.train import distributed

    ctx = ray.train.get_context()
    world, rank = ctx.get_world_size(), ctx.get_world_rank()
    if distributed.is_initialized() or world == 1:
        return distributed.process_info()
    address = None
    if rank == 0:
        address = f"{ray.util.get_node_ip_address()}:{distributed.free_port()}"
    address = broadcast_from_rank_zero(address)
    return distributed.initialize(address, world, rank, cpu_collectives=cpu_collectives)


def train_report(metrics: dict, checkpoint_url: str | None = None) -> None:
    """`ray.train.report` from every worker; rank 0 attaches the checkpoint pointer."""
    rank = ray.train.get_context().get_world_rank()
    if checkpoint_url is None or rank != 0:
        ray.train.report(metrics)
        return
    d = pointer_dir(checkpoint_url, metrics)
    try:
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(d))
    finally:
        shutil.rmtree(d, ignore_errors=True)


def _worker(cfg: dict) -> None:
    """What each worker runs (the JaxTrainer's train_loop_per_worker)."""
    setup_worker(cfg["cpu_devices_per_worker"])
    cfg["fn"](cfg["payload"], train_report)


def scaling_config(num_workers: int = 1, *, use_tpu: bool = False, use_gpu: bool = False,
                   topology: str | None = None, accelerator_type: str | None = None,
                   resources_per_worker: dict | None = None) -> ScalingConfig:
    """Ray Train scaling: one worker per host (TPU: per TPU VM of the slice)."""
    kwargs: dict[str, Any] = dict(num_workers=num_workers, use_tpu=use_tpu, use_gpu=use_gpu)
    if topology:
        kwargs["topology"] = topology
    if accelerator_type:
        kwargs["accelerator_type"] = accelerator_type
    if resources_per_worker:
        kwargs["resources_per_worker"] = resources_per_worker
    return ScalingConfig(**kwargs)


def run_workers(fn: WorkerFn, payload: Any, scaling: ScalingConfig, *,
                run_config: RunConfig | None = None,
                cpu_devices_per_worker: int | None = None):
    """Run ``fn(payload, report)`` in every worker; returns the `ray.train.Result`.

    Raises:
        The workers' error, if one failed.
    """
    trainer = JaxTrainer(_worker, scaling_config=scaling, run_config=run_config,
                         train_loop_config={"fn": fn, "payload": payload,
                                            "cpu_devices_per_worker": cpu_devices_per_worker})
    result = trainer.fit()
    if result.error is not None:
        raise result.error
    return result


__all__ = ["setup_worker", "train_report", "scaling_config", "run_workers"]
