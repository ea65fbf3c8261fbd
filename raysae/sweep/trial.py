"""One trial of a sweep, the same code whatever its resources: train, evaluate, save.

`run_trial(plan, reporter)` runs in the trial's own process (one host) or in every process
of a JaxTrainer job (several hosts, a TPU slice); `raysae.train.train` puts the SAE on a
mesh over every device of the job either way. Checkpoints go to the plan's URL on the
sweep's storage and the reporter hands Tune a pointer to each one. Process 0 then evaluates
the folded SAE, saves it (Gemma Scope npz, SAELens) and writes ``result.json`` beside it
last: its presence means the SAE is complete. A packed trial (`pack: K`) trains its SAEs
as one `raysae.train.Pack` and then does the same for each of them, under each SAE's own
key (TensorBoard run, saved SAE, result.json); its reports carry one row per SAE under
``members``. No Ray here: the reporter is Tune's or Ray Train's, given by the caller.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from typing import Protocol

import jax

from raysae import metrics as names
from raysae import storage
from raysae.config import to_dict
from raysae.data.local import LocalSource
from raysae.data.shards import Manifest
from raysae.sites import SAESite
from raysae.sweep.board import TrialBoard, board_url
from raysae.sweep.spec import SweepConfig
from raysae.train.config import TrainConfig

RESULT_NAME = "result.json"  # the final metrics, beside the saved SAE
log = logging.getLogger(__name__)


class Reporter(Protocol):
    def __call__(self, metrics: dict, checkpoint_url: str | None = None) -> None:
        """Report metrics (every process, at the same steps), with the newest checkpoint."""


@dataclasses.dataclass(frozen=True)
class SAEPlan:
    """One SAE of a trial: its recipe, its stable key and where it is saved."""

    trial_id: str                # the SAE's stable key (the name it has as a trial of its own)
    sae_url: str                 # where the saved SAE and result.json go
    train: TrainConfig

    @property
    def result_url(self) -> str:
        return storage.join(self.sae_url, RESULT_NAME)


@dataclasses.dataclass(frozen=True)
class TrialPlan:
    """Everything a trial's processes need; picklable."""

    sweep: SweepConfig
    site: str                    # the SAESite, as a string
    saes: tuple[SAEPlan, ...]    # the SAE it trains, or a pack's members
    manifest_url: str
    trial_id: str                # the trial's stable key (its only SAE's, or the pack's)
    checkpoint_url: str          # the training checkpoints, on the sweep's storage
    stream: str | None           # the shared stream's name (None: read the cache directly)
    join_at: int | None = None   # where a fresh trial joins the shared stream

    @property
    def packed(self) -> bool:
        return len(self.saes) > 1

    @property
    def train(self) -> TrainConfig:
        """The recipe (a pack's shared one: its members differ only in λ, lr and seed)."""
        return self.saes[0].train

    def recipe(self):
        """What `raysae.train.train` trains: the TrainConfig, or the members' Pack."""
        from raysae.train.pack import Pack

        return Pack(tuple(s.train for s in self.saes)) if self.packed else self.train


def final_report(plan: TrialPlan) -> dict:
    """The trial's last report from its SAEs' result.json files (all must exist)."""
    rows = [json.loads(storage.read_bytes(s.result_url)) for s in plan.saes]
    if not plan.packed:
        return rows[0]
    return _pack_row(plan, rows, {})


def _pack_row(plan: TrialPlan, rows: list[dict], extras: dict) -> dict:
    """A packed trial's report: its step and counters, and each SAE's row under its key."""
    step = max(int(r.get(names.STEP, 0) or 0) for r in rows)
    return {names.STEP: step, names.TOKENS: step * plan.train.batch_size, **extras,
            names.MEMBERS: {s.trial_id: r for s, r in zip(plan.saes, rows)}}


def data_source(plan: TrialPlan, process_index: int):
    """The trial's BatchSource: the shared stream (one consumer id per process) or the cache."""
    if plan.stream is None:  # its own copy, read here whatever reader the brokers would use
        config = dataclasses.replace(plan.sweep.stream, reader="memmap")
        return LocalSource(plan.manifest_url, plan.train.batch_size, config)
    from raysae.stream import SharedSource  # the Ray edge: only trials on brokers need it

    return SharedSource(plan.stream, f"{plan.trial_id}-p{process_index}", plan.join_at)


def run_trial(plan: TrialPlan, report: Reporter) -> dict:
    """Train the plan's SAE(s), then (process 0) evaluate and save each; returns the final
    report (a pack's: one row per SAE under ``members``).

    Args:
        plan: the trial.
        report: called as report(metrics, checkpoint_url) at the same steps in every process.
    """
    from raysae.sweep.evaluate import final_evaluation
    from raysae.train import train
    from raysae.train.pack import member_row

    device_env = set_device_env(plan.sweep.resources.jax_env())
    manifest = Manifest.load(plan.manifest_url)
    source = data_source(plan, jax.process_index())
    tc = plan.train
    started = {names.RESTORED_STEP: 0}
    pending: list[str] = []

    def extras() -> dict:  # the step training resumed from and the shared stream's counters
        return {**started, **(source.metrics() if hasattr(source, "metrics") else {})}

    def tune_row(rows: list[dict]) -> dict:  # one SAE's row, or a pack's rows by SAE key
        if not plan.packed:
            return {**rows[0], **extras()}
        return _pack_row(plan, rows, extras())

    def split(row: dict) -> list[dict]:  # a training row -> each SAE's
        return [member_row(row, i) for i in range(len(plan.saes))] if plan.packed else [row]

    boards = [TrialBoard(board_url(plan.sweep.sweep_url, s.trial_id)) for s in plan.saes] \
        if jax.process_index() == 0 else None

    def on_metrics(step: int, row: dict) -> None:
        rows = split(row)
        for board, r in zip(boards or (), rows):
            board.scalars(step, {**r, **extras()})
        report(tune_row(rows), pending.pop() if pending else None)

    def on_checkpoint(url: str, step: int) -> None:
        for board in boards or ():
            board.sync()
        pending[:] = [url]
        if step % tc.log_every and step < tc.steps:  # not riding on a metrics report
            report({names.STEP: step, names.TOKENS: step * tc.batch_size, **extras()},
                   pending.pop())

    result = train(plan.recipe(), source, norm_scalar=manifest.norm_scalar,
                   d=manifest.d, d_out=manifest.d if tc.transcoder else None,
                   checkpoint_url=plan.checkpoint_url, on_metrics=on_metrics,
                   on_checkpoint=on_checkpoint,
                   on_start=lambda step, position: started.update({names.RESTORED_STEP: step}))
    finals = []
    for i, sae in enumerate(plan.saes):
        done = jax.process_index() == 0 and storage.exists(sae.result_url)
        if done:  # a pack resumed after this member was saved: keep what it wrote
            finals.append(json.loads(storage.read_bytes(sae.result_url)))
            boards[i].close()
            continue
        finals.append(_finish_sae(plan, sae, manifest, result.member(i) if plan.packed else result,
                                  device_env, boards[i] if boards else None, final_evaluation))
    report(tune_row(finals), pending.pop() if pending else None)
    if jax.process_index() == 0:
        # Written last: its presence means "this SAE is complete".
        for sae, final in zip(plan.saes, finals):
            if not storage.exists(sae.result_url):
                storage.write_bytes_atomic(sae.result_url,
                                           json.dumps({**final, **extras()}).encode())
    return _pack_row(plan, finals, {}) if plan.packed else finals[0]


def _finish_sae(plan: TrialPlan, sae: SAEPlan, manifest: Manifest, result, device_env: dict,
                board: TrialBoard | None, final_evaluation) -> dict:
    """One trained SAE's final row; process 0 also saves, evaluates and boards it."""
    tc = sae.train
    final = dict(result.history[-1]) if result.history else {}
    final.update({names.STEP: result.steps, names.PROCESSES: jax.process_count(),
                  names.DEVICES: jax.device_count(), names.TRIAL: sae.trial_id,
                  names.DEVICE_ENV: device_env})
    if board is None:
        return final
    save_sae(plan, sae, manifest, result)  # before evaluating: a failed eval loses nothing
    if plan.sweep.final_eval.enabled:
        final.update(final_evaluation(plan.sweep, plan.site, plan.manifest_url, result.folded))
    if "gemma-scope" in plan.sweep.final_eval.formats:
        save_release_copy(plan, sae, result.folded, final.get(names.EVAL_L0, final.get(names.L0)))
    final[names.SAE_URL] = sae.sae_url
    evals = {k: v for k, v in final.items() if k.startswith("eval/")}
    board.scalars(result.steps, evals)
    board.hparams({"site": plan.site, "width": tc.width,
                   "sparsity_coefficient": tc.sparsity_coefficient, "lr": tc.lr,
                   "batch_size": tc.batch_size, "recipe": tc.recipe, "steps": tc.steps},
                  evals or {names.L0: final.get(names.L0), names.FVU: final.get(names.FVU)})
    board.close()
    return final


DEVICE_VARS = ("CUDA_VISIBLE_DEVICES", "XLA_PYTHON_CLIENT_PREALLOCATE",
               "XLA_PYTHON_CLIENT_MEM_FRACTION", "TPU_VISIBLE_CHIPS")


def set_device_env(env: dict[str, str]) -> dict[str, str]:
    """Put `env` in this process's environment before JAX starts its backend; returns the
    device variables the trial runs with (for its result)."""
    from jax._src import xla_bridge

    stale = [k for k, v in env.items() if os.environ.get(k) != v]
    if stale and xla_bridge.backends_are_initialized():
        log.warning("JAX's backend started before %s could be set; this trial keeps %s",
                    ", ".join(stale), {k: os.environ.get(k) for k in stale})
    else:
        os.environ.update(env)
    return {k: os.environ[k] for k in DEVICE_VARS if k in os.environ}


def save_sae(plan: TrialPlan, sae: SAEPlan, manifest: Manifest, result) -> None:
    """The folded SAE (raw activation space) in the formats the sweep asks for."""
    from raysae.lm.source import ModelSource
    from raysae.sae.formats import save_npz
    from raysae.sae.saelens import save_saelens

    sweep, tc = plan.sweep, sae.train
    if "npz" in sweep.final_eval.formats:
        save_npz(result.folded, sae.sae_url)
    if "saelens" in sweep.final_eval.formats:
        context = manifest.config.get("cache", {}).get("context_length") or sweep.eval.context_length
        save_saelens(
            result.folded, storage.join(sae.sae_url, "saelens"),
            model_name=sweep.model_name or ModelSource(sweep.model).model_name(),
            site=SAESite.parse(plan.site), context_size=context,
            dataset_path=sweep.data.text or plan.manifest_url,
            extra={"sweep": sweep.name, "site": plan.site, "trial_id": sae.trial_id,
                   "train": to_dict(tc), "steps": result.steps,
                   "tokens": result.steps * tc.batch_size, "norm_scalar": result.norm_scalar,
                   "activations": plan.manifest_url, "model": sweep.model})


def save_release_copy(plan: TrialPlan, sae: SAEPlan, folded, l0: float | None) -> str:
    """The SAE again in the public release's layout, under <sweep>/release/<site kind>/."""
    from raysae.sae.release import save_release

    from raysae.sae.release import release_dir

    site = SAESite.parse(plan.site)
    kind = "transcoder" if site.is_transcoder else site.input.kind
    root = storage.join(plan.sweep.sweep_url, "release", kind)
    l0 = l0 if l0 is not None else 0.0
    owner = storage.join(release_dir(root, site.layer, folded.width, l0), "trial")
    if storage.exists(owner) and storage.read_bytes(owner).decode() != sae.trial_id:
        log.warning("release layout: %s already holds another SAE of this width and average "
                    "L0; %s is only under saes/", owner.rsplit("/", 1)[0], sae.trial_id)
        return None
    storage.write_bytes_atomic(owner, sae.trial_id.encode())
    return save_release(folded, root, site.layer, l0)
