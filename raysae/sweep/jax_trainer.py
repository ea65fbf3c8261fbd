"""Ray Train launcher for SAE training that spans several processes, hosts or a TPU slice.

`make_trainer(...)` builds a `ray.train.v2.jax.JaxTrainer` whose workers each run
`train.sharded.train_sharded` over one global (data, model) mesh; `fit(...)` runs it and
returns the final metrics and where the trained SAE was written. A Tune trial that needs
several devices wraps a trainer from here (pass Tune's `TuneReportCallback` in
`run_config.callbacks`).

Inside each worker, `setup_worker` joins the JAX job. Ray 2.60's JaxTrainer initialises
`jax.distributed` itself only for TPU and GPU workers; for CPU workers rank 0 picks a
coordinator address, `ray.train.collective.broadcast_from_rank_zero` hands it to the others
and every worker calls `train.distributed.initialize` (gloo collectives). JAX is imported
inside the worker (TPU runtimes must not be grabbed by the driver).

Data: `data_fn(process_index, process_count)` runs in each worker and returns what
`loop.train` takes (an iterable of batches or `start -> iterable`), either the global
batches (every worker reads the same stream) or, with `local_batches=True`, only the rows
this worker's devices hold (`train.sharded.local_rows`). It may call
`ray.train.get_dataset_shard(...)` for datasets passed to `make_trainer`.
Metrics are reported by every worker at the same steps (Ray Train's report is a barrier);
checkpoints go to `checkpoint_url` (written by process 0, resumed by a restarted group).
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
from typing import Any, Callable

from ray.train import ScalingConfig
from ray.train.v2.api.config import RunConfig
from ray.train.v2.jax import JaxTrainer

from raysae.config import from_dict, to_dict
from raysae.train.config import TrainConfig

DataFn = Callable[[int, int], Any]


def setup_worker(cpu_devices: int | None = None, cpu_collectives: str = "gloo"):
    """Join this Ray Train worker to the job's JAX runtime; returns a ProcessInfo.

    `cpu_devices` (CPU only) makes XLA expose that many host devices in this worker, so a
    CPU job can exercise real multi-device meshes. Must run before any JAX computation.
    """
    import ray.train
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


def _train_loop(cfg: dict) -> None:
    """What each worker runs (the JaxTrainer's train_loop_per_worker)."""
    import ray.train

    info = setup_worker(cfg["cpu_devices_per_worker"])
    from raysae.sae.formats import save_npz
    from raysae.train.sharded import train_sharded

    config = from_dict(TrainConfig, cfg["train"])
    data = cfg["data_fn"](info.process_index, info.process_count)
    base = {"process_count": info.process_count, "global_devices": info.global_devices}
    plan: dict = {}

    def on_plan(p) -> None:
        plan.update(data_parallel=p.data, model_parallel=p.model)

    def on_metrics(step: int, row: dict) -> None:
        ray.train.report({**base, **plan, **row, "step": step})

    result = train_sharded(config, data, d=cfg["d"], d_out=cfg["d_out"],
                           norm_scalar=cfg["norm_scalar"],
                           inputs_normalized=cfg["inputs_normalized"],
                           local_batches=cfg["local_batches"],
                           checkpoint_url=cfg["checkpoint_url"], on_metrics=on_metrics,
                           on_plan=on_plan)
    # Process 0 attaches the folded SAE as a Ray Train checkpoint to the last report, so
    # Result.metrics / Result.checkpoint (and a wrapping Tune trial) see the final state.
    url, checkpoint = cfg["output_url"], None
    if info.process_index == 0:
        if url:
            url = save_npz(result.folded, url)
        local = tempfile.mkdtemp(prefix="raysae-sae-")
        save_npz(result.folded, os.path.join(local, "params.npz"))
        checkpoint = ray.train.Checkpoint.from_directory(local)
    ray.train.report({**base, **plan, **(result.history[-1] if result.history else {}),
                      "step": result.steps, "done": True, "params_url": url,
                      "norm_scalar": result.norm_scalar, "seconds": result.seconds},
                     checkpoint=checkpoint)


def scaling_config(num_workers: int = 1, *, use_tpu: bool = False, use_gpu: bool = False,
                   topology: str | None = None, accelerator_type: str | None = None,
                   resources_per_worker: dict | None = None) -> ScalingConfig:
    """Ray Train scaling: one worker per host (TPU: per TPU VM of the slice; GPU: per GPU)."""
    kwargs: dict[str, Any] = dict(num_workers=num_workers, use_tpu=use_tpu, use_gpu=use_gpu)
    if topology:
        kwargs["topology"] = topology
    if accelerator_type:
        kwargs["accelerator_type"] = accelerator_type
    if resources_per_worker:
        kwargs["resources_per_worker"] = resources_per_worker
    return ScalingConfig(**kwargs)


def make_trainer(config: TrainConfig, data_fn: DataFn, *, scaling: ScalingConfig | None = None,
                 d: int | None = None, d_out: int | None = None, norm_scalar: float = 1.0,
                 inputs_normalized: bool = False, local_batches: bool = False,
                 checkpoint_url: str | None = None, output_url: str | None = None,
                 cpu_devices_per_worker: int | None = None, run_config: RunConfig | None = None,
                 datasets: dict | None = None) -> JaxTrainer:
    """A JaxTrainer that trains one SAE per `config` across the workers of `scaling`.

    `output_url`: where process 0 writes the trained, folded SAE (Gemma Scope params.npz).
    The mesh comes from config.data_parallel / model_parallel or the cost model.
    """
    if dataclasses.is_dataclass(config):
        config_dict = to_dict(config)
    else:
        config_dict = to_dict(from_dict(TrainConfig, config))
    loop_config = {"train": config_dict, "data_fn": data_fn, "d": d, "d_out": d_out,
                   "norm_scalar": norm_scalar, "inputs_normalized": inputs_normalized,
                   "local_batches": local_batches, "checkpoint_url": checkpoint_url,
                   "output_url": output_url, "cpu_devices_per_worker": cpu_devices_per_worker}
    return JaxTrainer(_train_loop, train_loop_config=loop_config,
                      scaling_config=scaling or scaling_config(),
                      run_config=run_config, datasets=datasets)


@dataclasses.dataclass
class FitResult:
    metrics: dict[str, Any]       # rank 0's final report (loss, l0, fvu, step, params_url...)
    params_url: str | None        # output_url, else params.npz in the Ray Train checkpoint
    result: Any                   # the ray.train.Result (.checkpoint holds params.npz)


def fit(config: TrainConfig, data_fn: DataFn, **kwargs: Any) -> FitResult:
    """`make_trainer(...).fit()`; raises the workers' error if training failed."""
    result = make_trainer(config, data_fn, **kwargs).fit()
    if result.error is not None:
        raise result.error
    metrics = dict(result.metrics or {})
    url = metrics.get("params_url")
    if url is None and result.checkpoint is not None:
        url = os.path.join(result.checkpoint.path, "params.npz")
    return FitResult(metrics=metrics, params_url=url, result=result)


__all__ = ["setup_worker", "scaling_config", "make_trainer", "fit", "FitResult"]
