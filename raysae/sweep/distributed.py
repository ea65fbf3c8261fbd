"""Trials that need several devices or hosts: a Ray Train JaxTrainer job inside the Tune trial.

When the sweep's `resources` ask for more than one device (hosts > 1, gpus > 1, or a TPU
topology), `train_sae` calls `train_distributed` instead of the single-process loop. It
builds a trainer with `raysae.sweep.jax_trainer.make_trainer` (one worker per host /
GPU, the latent axis split over `resources.model_axis` devices), passes the workers'
reports up to Tune with Ray's `TuneReportCallback`, and returns the trained SAE in the
shape the trial's final evaluation and saving expect.

Checkpoints: the workers' process 0 writes the loop's atomic checkpoints to
``<sweep>/checkpoints/<trial_id>/`` on the sweep's storage (a multi-host job has no single
local disk to hand to Tune), so a restarted trial (FailureConfig) or a `--resume`d sweep
continues from there. Every worker reads the global batches of the site's shared stream.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from raysae import storage
from raysae.sweep.spec import SweepConfig


@dataclasses.dataclass
class DistributedResult:
    params: Any          # normalised space (for activation evals)
    folded: Any          # raw activation space (saved, LM evals)
    norm_scalar: float
    steps: int
    history: list


def _stream_data(name: str, shared: bool, manifest_url: str, stream_config, trial_id: str):
    """data_fn(process_index, process_count) for the workers: start -> global batches.

    The workers of a distributed trial start at global batch 0 and resume at the number of
    batches consumed, which is the global index under the default lag policy ("loop": a
    lagging reader rebuilds what it missed, so it never skips an index). Consumer ids carry
    the trial id: two trials of one site must not share a broker's consumer slot.
    """
    def data_fn(process_index: int, process_count: int):
        from raysae.stream import BatchStream, LocalStream

        def open_at(start: int):
            if shared:
                return BatchStream(name, start_index=start,
                                   consumer_id=f"{trial_id}-p{process_index}")
            return LocalStream(manifest_url, stream_config, start_index=start)
        return open_at
    return data_fn


def _report_callback():
    """Ray's TuneReportCallback, minus the workers' ``done`` flag: the trial is not done when
    the JaxTrainer is; its final evaluation and saving still follow."""
    from ray.tune.integration.ray_train import TuneReportCallback

    class _Report(TuneReportCallback):
        def after_report(self, run_context, metrics, checkpoint):
            metrics = [{k: v for k, v in m.items() if k != "done"} for m in metrics]
            super().after_report(run_context, metrics, checkpoint)

    return _Report()


def train_distributed(config: SweepConfig, tc, site: str, manifest, manifest_url: str,
                      trial_id: str, out_url: str, stream: str) -> DistributedResult:
    from ray.train.v2.api.config import RunConfig

    from raysae.sae.fold import unfold
    from raysae.sae.formats import load_npz
    from raysae.sweep.jax_trainer import fit, scaling_config

    r = config.resources
    scaling = scaling_config(
        num_workers=r.hosts if (r.tpu_topology or r.gpus <= 1) else int(r.gpus),
        use_tpu=r.tpu_topology is not None, use_gpu=r.gpus > 0 and r.tpu_topology is None,
        topology=r.tpu_topology, accelerator_type=r.tpu_accelerator,
        resources_per_worker=None if (r.tpu_topology or r.gpus) else {"CPU": r.cpus})
    ckpt = storage.join(config.sweep_url, "checkpoints", trial_id)
    out = fit(tc, _stream_data(stream, config.shared_stream, manifest_url, config.stream, trial_id),
              scaling=scaling, d=manifest.d, d_out=manifest.d if tc.transcoder else None,
              norm_scalar=manifest.norm_scalar, inputs_normalized=True,
              checkpoint_url=ckpt, output_url=storage.join(out_url, "params.npz"),
              run_config=RunConfig(name=f"train-{trial_id}", callbacks=[_report_callback()]))
    folded = load_npz(out.params_url)
    C = float(out.metrics.get("norm_scalar", manifest.norm_scalar))
    return DistributedResult(params=unfold(folded, C, pre_encoder_bias=not tc.transcoder),
                             folded=folded, norm_scalar=C, steps=int(out.metrics["step"]),
                             history=[{k: v for k, v in out.metrics.items()
                                       if isinstance(v, (int, float)) and k != "done"}])
