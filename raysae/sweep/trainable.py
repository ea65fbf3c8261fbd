"""The Tune trainable: one JumpReLU SAE per trial, or a pack of them (`train_sae`).

It turns the trial's point (``site``, ``width``, ``sparsity_coefficient``, plus any recipe
field a user's param_space varies; a packed trial has ``sparsity_coefficients``, one SAE
per value, each keyed as it would be alone) into a `TrialPlan` and runs `trial.run_trial` in its own
process, or in every process of a JaxTrainer job for multi-host / TPU-slice resources.
Checkpoints live under ``<sweep>/checkpoints/<trial id>/``; Tune holds a pointer to the
newest (for a multi-host trial, with its final result: Ray Train forwards only metrics), and
a restarted trial's loop resumes from the newest checkpoint there. A fresh trial joins the
shared stream live. A trial whose SAEs all have their ``result.json`` (it finished just
before a driver restart) reports them again.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil

import ray
from ray import tune

from raysae import metrics as names
from raysae import storage
from raysae.sites import SAESite
from raysae.sweep.pointer import pointer_dir, read_pointer
from raysae.sweep.spec import SweepConfig
from raysae.sweep.trial import SAEPlan, TrialPlan, final_report, run_trial

PACK_AXIS = "sparsity_coefficients"  # a packed trial's λ values, one SAE each
# the sweep's axes; other params are recipe fields
AXES = ("site", "width", "sparsity_coefficient", PACK_AXIS)


def members_of(params: dict) -> list[dict]:
    """The points of the SAEs a trial trains: its own, or one per λ of a packed trial (each
    the point that SAE would have as a trial of its own)."""
    if PACK_AXIS not in params:
        return [params]
    rest = {k: v for k, v in params.items() if k != PACK_AXIS}
    return [{**rest, "sparsity_coefficient": float(lam)} for lam in params[PACK_AXIS]]


def stream_name(config: SweepConfig, site: str) -> str:
    """The broker group all trials of `site` in this sweep share."""
    return f"{config.name}.{SAESite.parse(site).slug}"


def trial_name(params: dict) -> str:
    """Short, readable, path-safe trial name: res_1-w256-l0.003 (a pack: -l0.001+0.003)."""
    lams = params[PACK_AXIS] if PACK_AXIS in params else [params["sparsity_coefficient"]]
    return (f"{SAESite.parse(params['site']).slug}-w{int(params['width'])}"
            f"-l{'+'.join(f'{float(lam):.4g}' for lam in lams)}")


def trial_key(params: dict, tune_id: str | None = None) -> str:
    """A trial's stable name, the same on every run of the sweep: its results and checkpoints
    are found by it after a restart, whatever Tune's own state (res_1-w256-l0.003-1a2b3c4d).
    A searcher may propose one point twice, so its trials also key on Tune's trial id."""
    what = {**params, "_tune_id": tune_id} if tune_id else params
    digest = hashlib.sha1(json.dumps(what, sort_keys=True, default=str).encode()).hexdigest()
    return f"{trial_name(params)}-{digest[:8]}"


def sae_url(config: SweepConfig, key: str) -> str:
    site, rest = key.split("-", 1)
    return storage.join(config.sweep_url, "saes", site, rest)


def checkpoint_root(config: SweepConfig, key: str) -> str:
    return storage.join(config.sweep_url, "checkpoints", key)


JOIN_NAME = "join.json"  # where a trial first joined the shared stream


def join_position(plan: TrialPlan) -> int:
    """Where this trial reads the shared stream from when it has no checkpoint: recorded at
    its first start, so a restart before the first checkpoint reads exactly the same data."""
    url = storage.join(plan.checkpoint_url, JOIN_NAME)
    if storage.exists(url):
        return int(json.loads(storage.read_bytes(url))["join_at"])
    from raysae.stream import get_brokers
    from raysae.stream import join_position as live

    at = live(get_brokers(plan.stream))
    storage.write_bytes_atomic(url, json.dumps({"join_at": at}).encode())
    return at


def tune_report(metrics: dict, checkpoint_url: str | None = None) -> None:
    """`tune.report` with the trial's process and node, and a pointer to `checkpoint_url`."""
    row = {**metrics, names.PID: os.getpid(), names.NODE: ray.get_runtime_context().get_node_id()}
    if checkpoint_url is None:
        tune.report(row)
        return
    d = pointer_dir(checkpoint_url, metrics)
    try:
        tune.report(row, checkpoint=tune.Checkpoint.from_directory(d))
    finally:
        shutil.rmtree(d, ignore_errors=True)


def _report_callback():
    """Ray's TuneReportCallback minus the workers' ``done`` flag (the trial is not done when
    its JaxTrainer is) and minus the final row, which the trial reports with its pointer."""
    from ray.tune.integration.ray_train import TuneReportCallback

    class _Report(TuneReportCallback):
        def after_report(self, run_context, metrics, checkpoint):
            if names.SAE_URL in metrics[0] or any(
                    names.SAE_URL in m for m in metrics[0].get(names.MEMBERS, {}).values()):
                return
            metrics = [{k: v for k, v in m.items() if k != "done"} for m in metrics]
            super().after_report(run_context, metrics, checkpoint)

    return _Report()


def _run_workers(config: SweepConfig, plan: TrialPlan) -> None:
    """The trial as a JaxTrainer job: one JAX process per host (or TPU VM)."""
    from ray.train.v2.api.config import RunConfig

    from raysae.sweep.jax_trainer import run_workers, scaling_config

    from raysae.train.checkpoint import latest_checkpoint

    r = config.resources
    gpu = r.gpus > 0 and r.tpu_topology is None
    per_worker = None if r.tpu_topology else {"CPU": r.cpus, **({"GPU": r.gpus} if gpu else {})}
    scaling = scaling_config(
        num_workers=r.hosts, use_tpu=r.tpu_topology is not None, use_gpu=gpu,
        topology=r.tpu_topology, accelerator_type=r.tpu_accelerator,
        resources_per_worker=per_worker)
    path, fs = storage.pyarrow_filesystem(storage.join(config.sweep_url, "train-runs"))
    run_workers(run_trial, plan, scaling,
                run_config=RunConfig(name=f"train-{plan.trial_id}", storage_path=path,
                                     storage_filesystem=fs, callbacks=[_report_callback()]))
    # Process 0 wrote the final rows last; report them from here, with Tune's pointer.
    tune_report(final_report(plan), latest_checkpoint(plan.checkpoint_url))


def train_sae(params: dict, *, sweep: SweepConfig, manifests: dict[str, str],
              searched: bool = False) -> None:
    """The Tune function trainable of one trial (wrap it with `tune.with_parameters`).

    Args:
        params: the trial's point: site, width, sparsity_coefficient (a pack:
            sparsity_coefficients), maybe recipe fields.
        sweep: the sweep's config (the object: it knows which recipe values were derived).
        manifests: {site: activation cache URL}.
        searched: a user's search algorithm proposes the points (see `trial_key`).
    """
    from raysae.train.checkpoint import checkpoints

    config = sweep
    site = str(SAESite.parse(params["site"]))
    tune_id = tune.get_context().get_trial_id() if searched else None
    saes = []
    for point in members_of(params):
        tc = config.trial_train_config(point["width"], point["sparsity_coefficient"], site)
        extra = {k: v for k, v in point.items() if k not in AXES}
        if extra:  # a user's param_space may vary other recipe knobs (lr, bandwidth, ...)
            tc = tc.with_(**extra)
        key = trial_key(point, tune_id)  # stable across driver restarts
        saes.append(SAEPlan(trial_id=key, sae_url=sae_url(config, key), train=tc))
    # a pack's checkpoints and stream position are the trial's, under its own key
    trial_id = saes[0].trial_id if len(saes) == 1 else trial_key(params)
    ckpt_url = checkpoint_root(config, trial_id)
    pointer = tune.get_checkpoint()
    if pointer is not None:  # the same root unless the sweep's storage moved
        with pointer.as_directory() as d:
            ckpt_url = read_pointer(d)[0].rsplit("/", 1)[0]
    plan = TrialPlan(sweep=config, site=site, saes=tuple(saes),
                     manifest_url=manifests[params["site"]], trial_id=trial_id,
                     checkpoint_url=ckpt_url,
                     stream=stream_name(config, site) if config.shared_stream else None)
    if all(storage.exists(s.result_url) for s in plan.saes):
        # Finished before a driver restart that Tune's state snapshot did not see yet.
        tune.report(final_report(plan))
        return
    if plan.stream is not None and not checkpoints(ckpt_url):
        # A fresh trial joins the live stream; every process of the trial at the same batch.
        plan = dataclasses.replace(plan, join_at=join_position(plan))
    if config.resources.multi_process:
        _run_workers(config, plan)
    else:
        run_trial(plan, tune_report)
