"""The training loop: any iterator of numpy batches in, a trained (and folded) SAE out.

`train` runs the jitted step over `data`, logs metrics every `log_every` steps, writes
checkpoints every `checkpoint_every` steps to any fsspec URL, and resumes from the latest
checkpoint there, reproducing an uninterrupted run exactly when `data` is deterministic.

`data` is either an iterable of batches or a callable `start -> iterable` that begins at
batch index `start` (how the shared stream resumes without re-reading). A batch is an array
[B, d] (raw activations: the loop divides by C on device unless `inputs_normalized`), a
`(global_index, array)` pair as the stream yields, or for transcoders an array
[B, d_in + d_out] with input and target side by side (as transcoder caches store them).

Extension points used by the sharded trainer: `step_fn` (a jitted step over the state)
and `place` (host batch -> device array, e.g. a global sharded array).
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import time
from typing import Any, Callable, Iterable

import jax
import jax.numpy as jnp
import numpy as np

from raysae.sae.fold import fold
from raysae.sae.params import SAEParams
from raysae.train.checkpoint import _host, latest_checkpoint, load_checkpoint, save_checkpoint
from raysae.train.config import TrainConfig
from raysae.train.step import TrainState, init_state, jit_train_step

log = logging.getLogger(__name__)

DataSource = Iterable[Any] | Callable[[int], Iterable[Any]]


class TrainingDataError(ValueError):
    """A batch is unusable (wrong width, NaN/Inf) or the data ran out before any step."""


@dataclasses.dataclass
class TrainResult:
    params: SAEParams            # trained, in normalised space (inputs / C)
    folded: SAEParams            # raw activation space (Gemma Scope App. A)
    norm_scalar: float
    state: TrainState
    history: list[dict[str, float]]
    steps: int
    data_position: int
    seconds: float


def _unpack(item: Any) -> np.ndarray:
    if isinstance(item, tuple) and len(item) == 2 and np.isscalar(item[0]):
        return item[1]
    return item


def _check_batch(batch: np.ndarray, width: int | None, index: int) -> None:
    if getattr(batch, "ndim", None) != 2:
        raise TrainingDataError(f"batch {index}: expected a 2-D array [B, d], got "
                                f"shape {getattr(batch, 'shape', type(batch).__name__)}")
    if width is not None and batch.shape[1] != width:
        raise TrainingDataError(f"batch {index}: width {batch.shape[1]} but this SAE expects "
                                f"{width}")


def _open(data: DataSource, start: int) -> Iterable[Any]:
    if callable(data):
        return data(start)
    return itertools.islice(data, start, None)


def train(config: TrainConfig, data: DataSource, *, d: int | None = None,
          d_out: int | None = None, norm_scalar: float = 1.0, inputs_normalized: bool = False,
          checkpoint_url: str | None = None, resume: bool = True,
          on_metrics: Callable[[int, dict[str, float]], None] | None = None,
          on_checkpoint: Callable[[str, int], None] | None = None,
          checkpoint_extra: Callable[[], dict] | None = None,
          step_fn: Callable | None = None, place: Callable[[np.ndarray], jax.Array] | None = None,
          state: TrainState | None = None, write_checkpoints: bool = True) -> TrainResult:
    """Train one SAE (or transcoder) per `config` on `data`. See the module docstring."""
    t0 = time.perf_counter()
    place = place or jnp.asarray
    start = 0
    if checkpoint_url and resume:
        ckpt_url = latest_checkpoint(checkpoint_url)
        if ckpt_url is not None:
            ckpt = load_checkpoint(ckpt_url, config)
            state, start = ckpt.state, ckpt.data_position
            norm_scalar, d, d_out = ckpt.norm_scalar, ckpt.d, ckpt.d_out
            log.info("resuming from %s (step %d, batch %d)", ckpt_url, ckpt.step, start)

    iterator = iter(_open(data, start))
    consumed = start
    history: list[dict[str, float]] = []
    scale = 1.0 if inputs_normalized else 1.0 / norm_scalar

    def split(batch: np.ndarray):
        if not config.transcoder:
            return batch, None
        return batch[:, :d], batch[:, d:]

    def sync(state: TrainState, metrics, step: int) -> None:
        bad = int(state.first_bad_step)
        if bad >= 0:
            raise TrainingDataError(
                f"batch {start + bad - step0} (step {bad}) contains NaN or Inf; the parameters were not updated with it"
                + (f"; the last checkpoint under {checkpoint_url} is intact" if checkpoint_url else ""))
        if metrics is not None:
            row = {k: float(v) for k, v in metrics._asdict().items()}
            row["step"] = step
            history.append(row)
            if on_metrics:
                on_metrics(step, row)

    def checkpoint(state: TrainState, step: int, consumed: int) -> None:
        url = save_checkpoint(checkpoint_url, state, config=config, norm_scalar=norm_scalar,
                              d=d, d_out=d_out, data_position=consumed,
                              extra=checkpoint_extra() if checkpoint_extra else None,
                              write=write_checkpoints)
        if on_checkpoint:
            on_checkpoint(url, step)

    step = step0 = int(state.step) if state is not None else 0
    metrics = None
    while step < config.steps:
        try:
            item = next(iterator)
        except StopIteration:
            break
        batch = _unpack(item)
        _check_batch(batch, None, consumed)
        if state is None:
            if d is None:
                d = batch.shape[1] // 2 if config.transcoder else batch.shape[1]
            if d_out is None:
                d_out = (batch.shape[1] - d) if config.transcoder else d
            state = init_state(config, d, d_out=d_out)
        width = d + d_out if config.transcoder else d
        _check_batch(batch, width, consumed)
        if step_fn is None:
            step_fn = jit_train_step(config, transcoder_target=config.transcoder)
        x, target = split(batch)
        x = place(x) * scale
        if target is None:
            state, metrics = step_fn(state, x)
        else:
            state, metrics = step_fn(state, x, place(target) * scale)
        consumed += 1
        step += 1
        # Checkpoint before reporting, so a report (or a crash in it) never outruns the
        # newest checkpoint.
        if checkpoint_url and (step % config.checkpoint_every == 0):
            sync(state, None, step)
            checkpoint(state, step, consumed)
        if step % config.log_every == 0 or step == config.steps:
            sync(state, metrics, step)
    if state is None:
        raise TrainingDataError("the data yielded no batches" + (f" after batch {start}" if start else ""))
    step = int(state.step)
    if metrics is not None and (not history or history[-1]["step"] != step):
        sync(state, metrics, step)
    else:
        sync(state, None, step)
    if checkpoint_url and step % config.checkpoint_every != 0 and step > 0:
        checkpoint(state, step, consumed)
    # _host gathers arrays sharded across processes (every process must get here).
    params = jax.tree.map(_host, state.params)
    return TrainResult(params=params,
                       folded=fold(params, norm_scalar, pre_encoder_bias=not config.transcoder),
                       norm_scalar=norm_scalar, state=state, history=history, steps=step,
                       data_position=consumed, seconds=time.perf_counter() - t0)
