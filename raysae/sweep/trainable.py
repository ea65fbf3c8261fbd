"""The Tune trainable: one JumpReLU SAE per trial, fed by the sweep's shared stream.

`train_sae(params, sweep=..., manifests=...)` is a function trainable (wrap it with
`tune.with_parameters`, as `raysae.sweep.launch` does). `params` is the trial's point:
``site``, ``width``, ``sparsity_coefficient`` (plus any recipe field of TrainConfig a
user's param_space varies, e.g. ``lr``).

Checkpoints go through Tune, so trial restarts (FailureConfig) and `Tuner.restore` both
work on any storage Tune can reach (gs:// included), with nothing trial-local surviving:
the training loop writes its atomic checkpoint to a scratch directory on the worker, and
`on_checkpoint` hands that directory to `tune.report(..., checkpoint=...)`, which persists
it under the trial's directory in the sweep's storage. A restarted trial gets it back from
`tune.get_checkpoint()`, lays it out as the loop's checkpoint layout and calls `train`
with `resume=True`; the stream position stored in the checkpoint restarts the shared stream
at the next batch, so a resumed trial sees exactly the batches an uninterrupted one would
have. A fresh trial joins the shared stream live (see `_data`).

Reports: every `train.log_every` steps the loop's metrics (loss, l0, fvu, dead fraction,
λ, ...) plus the stream's counters and the worker's pid; the last report adds the final
evaluation (``eval/l0``, ``eval/fvu``, ``eval/mse``, ``eval/delta_loss``) and ``sae_url``,
where the folded SAE was saved (Gemma Scope ``params.npz`` and a SAELens directory).
The final metrics are also written to ``<sae_url>/result.json`` last; a trial that finds
it at start (it finished just before a driver was killed, and Tune's experiment snapshot
had not recorded that yet) reports it again instead of evaluating and saving twice.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from typing import Any

from ray import tune

from raysae import storage
from raysae.activations.shards import Manifest
from raysae.config import from_dict
from raysae.sweep.spec import SweepConfig, site_slug

AXES = ("site", "width", "sparsity_coefficient")  # the sweep's axes; other params are recipe fields
RESULT_NAME = "result.json"  # the final metrics, beside the saved SAE


def stream_name(config: SweepConfig, site: str) -> str:
    """The broker group all trials of `site` in this sweep share."""
    return f"{config.name}.{site_slug(site)}"


def trial_name(params: dict) -> str:
    """Short, readable, path-safe trial name: res_1-w256-l0.003."""
    return (f"{site_slug(params['site'])}-w{int(params['width'])}"
            f"-l{float(params['sparsity_coefficient']):.4g}")


def sae_url(config: SweepConfig, params: dict, trial_id: str) -> str:
    return storage.join(config.sweep_url, "saes", site_slug(params["site"]),
                        f"{trial_name(params).split('-', 1)[1]}-{trial_id}")


def _restore_checkpoint(local: str) -> tuple[int, dict]:
    """Lay Tune's checkpoint (if any) out under `local` as the loop expects.

    Returns its step (0 if none) and its `extra` dict (holds the stream position)."""
    ckpt = tune.get_checkpoint()
    if ckpt is None:
        return 0, {}
    with ckpt.as_directory() as d:
        meta = json.loads(open(os.path.join(d, "meta.json")).read())
        name = f"step-{int(meta['step']):09d}"
        shutil.copytree(d, os.path.join(local, name), dirs_exist_ok=True)
    with open(os.path.join(local, "latest"), "w") as f:
        f.write(name)
    return int(meta["step"]), dict(meta.get("extra") or {})


def _data(config: SweepConfig, site: str, manifest_url: str, consumer_id: str, opened: list,
          resume_position: int | None = None):
    """start -> iterator of (global index, raw float32 batch), shared or a private copy.

    Batches are raw (`normalize=False`): a float32 batch is then the object store's buffer
    itself, and the trainer divides by C on device (`_place_normalized`), so the stream
    makes no per-trial copy on the host.

    On the shared stream a fresh trial joins the live stream at the oldest batch still
    buffered (like Gemma Scope's data server), rather than at batch 0: batches are i.i.d.
    shuffled, and a trial that starts after the brokers have moved on would otherwise
    rebuild every batch it missed from storage itself. A resumed trial continues at the
    exact global index its checkpoint recorded (`resume_position`).
    """
    from raysae.stream import BatchStream, LocalStream

    def open_at(start: int):
        if config.shared_stream:
            if resume_position is not None:
                first = resume_position
            else:
                first = None if start == 0 else start
            s = BatchStream(stream_name(config, site), start_index=first, consumer_id=consumer_id,
                            normalize=False)
        else:
            s = LocalStream(manifest_url, config.stream, start_index=start, normalize=False)
        opened.append(s)
        return s

    return open_at


def _place_normalized(norm_scalar: float):
    """host batch (raw) -> device array divided by C: bitwise what the stream's
    normalize=True gives (a float32 division, done on device instead of on the host).

    XLA turns a division by a scalar into a multiply by its reciprocal (1/3 is inexact:
    ~1 in 3 values then differ in the last bit), so it divides by a batch-shaped array of
    C, made once per shape.
    """
    import jax.numpy as jnp
    import numpy as np

    c = np.float32(norm_scalar)
    divisors: dict[tuple, Any] = {}

    def place(batch):
        x = jnp.asarray(batch)
        if x.shape not in divisors:
            divisors[x.shape] = jnp.full(x.shape, c, dtype=jnp.float32)
        return x / divisors[x.shape]

    return place


def train_sae(params: dict, *, sweep: dict, manifests: dict[str, str]) -> None:
    """Tune function trainable; see the module docstring."""
    from raysae.sweep.evaluate import final_evaluation
    from raysae.train import train

    config = from_dict(SweepConfig, sweep)
    site = params["site"]
    extra = {k: v for k, v in params.items() if k not in AXES}
    tc = config.trial_train_config(params["width"], params["sparsity_coefficient"], site=site)
    if extra:  # a user's param_space may vary other recipe knobs (lr, bandwidth, ...)
        tc = from_dict(type(tc), {**_asdict(tc), **extra}, "params")
    manifest_url = manifests[site]
    manifest = Manifest.load(manifest_url)
    ctx = tune.get_context()
    trial_id = ctx.get_trial_id() or "local"
    url = sae_url(config, params, trial_id)
    done_url = storage.join(url, RESULT_NAME)
    if storage.exists(done_url):
        # Finished before a driver restart that Tune's state snapshot did not see yet:
        # report the stored final result instead of evaluating and saving again.
        tune.report(json.loads(storage.read_bytes(done_url)))
        return
    local = tempfile.mkdtemp(prefix=f"raysae-{trial_id}-")
    opened: list = []
    state = {"last": {}, "pending": None, "restored_step": 0}

    def base() -> dict:
        out = {"pid": os.getpid(), "restored_step": state["restored_step"]}
        if opened and hasattr(opened[-1], "metrics"):
            out.update(opened[-1].metrics())
        return out

    def report(row: dict, checkpoint_dir: str | None = None) -> None:
        ckpt = tune.Checkpoint.from_directory(checkpoint_dir) if checkpoint_dir else None
        tune.report({**row, **base()}, checkpoint=ckpt)

    def on_metrics(step: int, row: dict) -> None:
        state["last"] = row
        report(row, state.pop("pending", None))
        state["pending"] = None

    def on_checkpoint(url: str, step: int) -> None:
        if step % tc.log_every == 0 and step < tc.steps:
            state["pending"] = url       # reported with this step's metrics, just after
        elif step < tc.steps:
            report({**state["last"], "step": step}, url)
        else:
            state["pending"] = url       # the final checkpoint rides on the final report

    try:
        if config.resources.distributed:  # a JaxTrainer job inside this trial
            from raysae.sweep.distributed import train_distributed

            result = train_distributed(config, tc, site, manifest, manifest_url, trial_id, url,
                                       stream_name(config, site))
        else:
            state["restored_step"], ckpt_extra = _restore_checkpoint(local)
            data = _data(config, site, manifest_url, trial_id, opened,
                         resume_position=ckpt_extra.get("stream_position"))
            # raw batches, divided on device by `place` (x / C, as the trainer always got;
            # a multiply by 1/C would differ in the last bit): inputs are normalised after it
            result = train(tc, data, d=manifest.d,
                           d_out=manifest.d if tc.transcoder else None,
                           norm_scalar=manifest.norm_scalar, inputs_normalized=True,
                           place=_place_normalized(manifest.norm_scalar),
                           checkpoint_url=local, resume=True, on_metrics=on_metrics,
                           on_checkpoint=on_checkpoint,
                           checkpoint_extra=lambda: ({"stream_position": int(opened[-1].position)}
                                                     if opened else {}))
        final = dict(result.history[-1]) if result.history else dict(state["last"])
        final["step"] = result.steps
        if config.final_eval.enabled:
            final.update(final_evaluation(config, site, manifest_url, result))
        _save(config, site, manifest, result, url, tc)
        final["sae_url"] = url
        report(final, state.get("pending"))
        # Written last: its presence means "this trial is complete" (see the top).
        storage.write_bytes_atomic(done_url, json.dumps({**final, **base()}).encode())
    finally:
        for s in opened:
            if hasattr(s, "close"):
                s.close()
        shutil.rmtree(local, ignore_errors=True)


def _asdict(obj: Any) -> dict:
    from raysae.config import to_dict

    return to_dict(obj)


def _save(config: SweepConfig, site: str, manifest: Manifest, result, url: str, tc) -> None:
    """The folded SAE (raw activation space) in the formats the sweep asks for."""
    from raysae.sae import formats

    if "npz" in config.final_eval.formats:
        formats.save_npz(result.folded, url)
    if "saelens" in config.final_eval.formats:
        formats.save_saelens(
            result.folded, storage.join(url, "saelens"), model_name=config.model,
            site=site, context_size=config.eval.context_length,
            extra={"sweep": config.name, "site": site, "width": tc.width,
                   "sparsity_coefficient": tc.sparsity_coefficient, "steps": result.steps,
                   "tokens": result.steps * tc.batch_size, "norm_scalar": result.norm_scalar,
                   "manifest": manifest.model})
