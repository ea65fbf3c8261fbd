"""`train`: batches in, a trained and folded SAE out, on any device mesh (one device is 1×1).

The loop opens its data source at the checkpoint's position (or where the source starts),
places each batch on the mesh in a prefetch thread, runs the step (which divides by C: the
one place the normalisation is applied), logs every `log_every` steps, checkpoints every
`checkpoint_every` steps and resumes from the latest checkpoint under `checkpoint_url`,
reproducing an uninterrupted run exactly when the source is deterministic. In a
multi-process job every process calls `train` with the same arguments. Given a `Pack`
(`raysae.train.pack`) it trains the pack's SAEs together on the same batches: the state is
stacked, history rows hold one value per member, `TrainResult.member(i)` is one SAE's.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import time
from typing import Any, Callable

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding

from raysae import metrics as names
from raysae.sae.fold import fold
from raysae.sae.params import SAEParams
from raysae.train.checkpoint import CheckpointError, host_array, load_latest, save_checkpoint
from raysae.train.config import TrainConfig
from raysae.train.mesh import BATCH_SPEC, MeshSplit, mesh_for
from raysae.train.pack import Pack, member, member_row
from raysae.train.sharded import ShardedStep, local_rows, place_batch, prefetch
from raysae.train.source import as_source, close
from raysae.train.step import TrainState, init_state

log = logging.getLogger(__name__)


class TrainingDataError(ValueError):
    """A batch is unusable (wrong shape, NaN/Inf) or the data ran out before any step."""


@dataclasses.dataclass
class TrainResult:
    """What `train` returns (on every process of a multi-process job)."""

    params: SAEParams            # trained, in normalised space (inputs / C)
    folded: SAEParams            # raw activation space (Gemma Scope App. A)
    norm_scalar: float           # C
    state: TrainState
    history: list[dict[str, float]]  # one row per log step (names in raysae.metrics)
    steps: int
    data_position: int           # the source's position after the last batch trained on
    seconds: float
    truncated: bool = False      # the data ran out before config.steps
    pack: Pack | None = None     # a packed run: params, state and history values per member

    def member(self, i: int) -> "TrainResult":
        """Member `i` of a packed run's result, as a lone run's result."""
        if self.pack is None:
            raise ValueError("member: this result is not a pack's")
        return dataclasses.replace(
            self, params=member(self.params, i), folded=member(self.folded, i),
            state=member(self.state, i), history=[member_row(r, i) for r in self.history],
            pack=None)


def _count(x) -> int:
    """A state's counter (`step`, `first_bad_step`) as an int; a pack's members agree."""
    return int(np.max(host_array(x)))


def _check_batch(batch: Any, width: int | None, where: str, rows: int | None = None) -> None:
    if getattr(batch, "ndim", None) != 2:
        raise TrainingDataError(f"{where}: expected a 2-D array [B, d], got "
                                f"{getattr(batch, 'shape', type(batch).__name__)}")
    if width is not None and batch.shape[1] != width:
        raise TrainingDataError(f"{where}: width {batch.shape[1]} but this SAE expects {width}")
    if rows is not None and batch.shape[0] != rows:
        raise TrainingDataError(f"{where}: {batch.shape[0]} rows but batch_size asks for {rows}"
                                + (" (this process's share)" if jax.process_count() > 1 else ""))


def _agree_on_resume(step: int, position: int | None, where: str | None) -> None:
    """Every process of a job must resume from the same checkpoint (shared storage)."""
    if jax.process_count() == 1:
        return
    from jax.experimental import multihost_utils

    mine = np.array([step, -1 if position is None else position], np.int64)
    first = np.asarray(multihost_utils.broadcast_one_to_all(mine))
    if not np.array_equal(mine, first):
        raise CheckpointError(
            f"{where}: process {jax.process_index()} would resume at step {step}, process 0 at "
            f"step {int(first[0])}: every host must see the same checkpoint storage")


def train(config: TrainConfig | Pack, data: Any, *, norm_scalar: float, d: int | None = None,
          d_out: int | None = None, checkpoint_url: str | None = None, resume: bool = True,
          on_metrics: Callable[[int, dict[str, float]], None] | None = None,
          on_checkpoint: Callable[[str, int], None] | None = None,
          mesh: Mesh | None = None, devices: list | None = None, local_batches: bool = False,
          prefetch_batches: int = 2, state: TrainState | None = None,
          on_split: Callable[[MeshSplit], None] | None = None,
          on_start: Callable[[int, int], None] | None = None,
          write_checkpoints: bool | None = None) -> TrainResult:
    """Train one SAE (or transcoder) per `config`, or every member of a `Pack` at once.

    Args:
        config: the recipe, or a `Pack` of recipes (one SAE each, on the same batches).
        data: a `BatchSource` (e.g. `raysae.data.LocalSource`), a callable `start -> iterable`
            or an iterable of raw [B, d] batches ([B, d_in + d_out] side by side for a
            transcoder; with `local_batches` only this process's rows of each batch).
        norm_scalar: C, by which every input (and a transcoder's target) is divided; pass
            1.0 only for data that is already normalised.
        d, d_out: input and output widths (default: from the first batch).
        checkpoint_url: where checkpoints go (any fsspec URL).
        resume: continue from the latest checkpoint under `checkpoint_url` (every process of
            a multi-process job must see the same one).
        on_metrics: called as (step, row) every `log_every` steps and at the end.
        on_checkpoint: called as (checkpoint URL, step) after each checkpoint.
        mesh / devices: the device mesh, or the devices to choose one over (default: every
            device of the job, split by `mesh.mesh_for`).
        local_batches: each process's source yields only its rows of every global batch.
        prefetch_batches: batches read and placed ahead, in a thread.
        state: a state to start from (e.g. around an unfolded release) instead of the init
            (stacked, for a pack).
        on_split: called with the chosen data × model split.
        on_start: called as (step, position) once training starts (step > 0 after a resume).
        write_checkpoints: whether this process writes (default: process 0 only).
    Returns:
        A `TrainResult`.
    Raises:
        TrainingDataError for a bad batch (NaN/Inf: the parameters never saw it);
        CheckpointError for a checkpoint that does not fit this run.
    """
    if not (isinstance(norm_scalar, (int, float)) and np.isfinite(norm_scalar) and norm_scalar > 0):
        raise ValueError(f"norm_scalar: C must be a positive number, got {norm_scalar!r}")
    norm_scalar = float(norm_scalar)
    pack = config if isinstance(config, Pack) else None
    config = pack.base if pack is not None else config
    t0 = time.perf_counter()
    write = jax.process_index() == 0 if write_checkpoints is None else write_checkpoints
    position: int | None = None
    if checkpoint_url and resume:
        ckpt = load_latest(checkpoint_url, pack or config)  # older ones stand in for a corrupt newest
        if ckpt is not None:
            if not np.isclose(ckpt.norm_scalar, norm_scalar, rtol=1e-6):
                raise CheckpointError(f"{ckpt.url}: trained with C={ckpt.norm_scalar}, but this "
                                      f"run divides by C={norm_scalar} (different data?)")
            state, position, d, d_out = ckpt.state, ckpt.data_position, ckpt.d, ckpt.d_out
            log.info("resuming from %s (step %d, batch %d)", ckpt.url, ckpt.step, position)
        _agree_on_resume(_count(state.step) if state is not None else 0, position,
                         checkpoint_url)

    run = _Run(config, norm_scalar, checkpoint_url, write, on_metrics, on_checkpoint, pack)
    run.describe = None
    if state is not None and _count(state.step) >= config.steps:  # already done
        run.begin(state, d, d_out, position or 0)
        if on_start:
            on_start(run.step0, run.start)
        return run.finish(state, t0)
    batches = as_source(data).open(position)
    run.describe = getattr(batches, "describe", None)  # a stream can say where a batch lies
    try:
        first = next(batches, None)
        if first is None:
            raise TrainingDataError("the data yielded no batches"
                                    + (f" from position {position}" if position else ""))
        first_index = batches.position - 1  # a fresh stream may start anywhere (joined live)
        _check_batch(first, None, f"batch {first_index}")
        if d is None:
            d = first.shape[1] // 2 if config.transcoder else first.shape[1]
        if d_out is None:
            d_out = first.shape[1] - d if config.transcoder else d
        if mesh is None:
            mesh, split = mesh_for(config, d, devices)
            if on_split:
                on_split(split)
        step_fn = ShardedStep(config, mesh, norm_scalar,
                              knobs=pack.knobs() if pack is not None else None)
        sharding = NamedSharding(mesh, BATCH_SPEC)
        rows = config.batch_size if local_batches else None
        width = d + d_out if config.transcoder else d
        want_rows = (local_rows(sharding, (config.batch_size, d)).stop
                     - local_rows(sharding, (config.batch_size, d)).start) if local_batches \
            else config.batch_size

        def place(item):
            pos, batch = item
            _check_batch(batch, width, f"batch {pos - 1}", want_rows)
            if not config.transcoder:
                return pos, place_batch(batch, sharding, rows), None
            return (pos, place_batch(batch[:, :d], sharding, rows),
                    place_batch(batch[:, d:], sharding, rows))

        def items():
            yield batches.position, first
            for batch in batches:  # the position after reading = the next batch's index
                yield batches.position, batch

        if state is None:
            state = init_state(config, d, d_out=d_out) if pack is None else \
                pack.init_state(d, d_out=d_out)
        state = step_fn.place_state(state)
        run.begin(state, d, d_out, first_index)
        if on_start:
            on_start(run.step0, first_index)
        if run.step < config.steps:
            with contextlib.closing(prefetch(items(), place, prefetch_batches)) as placed:
                for pos, x, target in placed:
                    state, step_metrics = step_fn(state, x, target)
                    run.after_step(state, step_metrics, pos)
                    if run.step >= config.steps:
                        break
    finally:
        close(batches)
    return run.finish(state, t0)


class _Run:
    """The loop's bookkeeping: step count, position, history, checkpoints, NaN checks."""

    def __init__(self, config, norm_scalar, checkpoint_url, write, on_metrics, on_checkpoint,
                 pack=None):
        self.config, self.C, self.url, self.write = config, norm_scalar, checkpoint_url, write
        self.pack = pack
        self.on_metrics, self.on_checkpoint = on_metrics, on_checkpoint
        self.history: list[dict[str, float]] = []
        self.step0 = None
        self.metrics = None

    def begin(self, state: TrainState, d: int, d_out: int, position: int) -> None:
        self.step = self.step0 = _count(state.step)
        self.d = state.params.W_enc.shape[-2] if d is None else d
        self.d_out = state.params.W_dec.shape[-1] if d_out is None else d_out
        self.position = self.start = position

    def _sync(self, state: TrainState, metrics, step: int) -> None:
        bad = _count(state.first_bad_step)
        if bad >= 0:
            g = self.start + bad - self.step0
            where = f" ({self.describe(g)})" if self.describe else ""
            raise TrainingDataError(
                f"batch {g}{where} (step {bad}) contains NaN or Inf; the parameters were not "
                "updated with it"
                + (f"; the last checkpoint under {self.url} is intact" if self.url else ""))
        if metrics is not None:
            row = {k: np.asarray(v, np.float64).tolist() for k, v in metrics._asdict().items()}
            row[names.STEP] = step
            row[names.TOKENS] = step * self.config.batch_size
            self.history.append(row)
            if self.on_metrics:
                self.on_metrics(step, row)

    def _checkpoint(self, state: TrainState, step: int) -> None:
        url = save_checkpoint(self.url, state, config=self.pack or self.config,
                              norm_scalar=self.C,
                              d=self.d, d_out=self.d_out, data_position=self.position,
                              write=self.write)
        if self.on_checkpoint:
            self.on_checkpoint(url, step)

    def after_step(self, state: TrainState, metrics, position: int) -> None:
        self.step += 1
        self.position, self.metrics = position, metrics
        # Checkpoint before reporting, so a report (or a crash in it) never outruns the
        # newest checkpoint.
        if self.url and self.step % self.config.checkpoint_every == 0:
            self._sync(state, None, self.step)
            self._checkpoint(state, self.step)
        if self.step % self.config.log_every == 0 or self.step == self.config.steps:
            self._sync(state, metrics, self.step)

    def finish(self, state: TrainState, t0: float) -> TrainResult:
        step = _count(state.step)
        logged = self.history and self.history[-1][names.STEP] == step
        self._sync(state, None if logged else self.metrics, step)
        if self.url and step % self.config.checkpoint_every != 0 and step > self.step0:
            self._checkpoint(state, step)
        truncated = step < self.config.steps
        if truncated:
            log.warning("the data ran out after %d of %d steps", step, self.config.steps)
        # host_array gathers arrays sharded across processes (every process gets here).
        params = jax.tree.map(host_array, state.params)
        bias = not self.config.transcoder
        if self.pack is None:
            folded = fold(params, self.C, pre_encoder_bias=bias)
        else:
            folded = SAEParams(*map(np.stack, zip(*(
                fold(member(params, i), self.C, pre_encoder_bias=bias)
                for i in range(len(self.pack))))))
        return TrainResult(params=params, folded=folded, norm_scalar=self.C, state=state,
                           history=self.history, steps=step, data_position=self.position,
                           seconds=time.perf_counter() - t0, truncated=truncated, pack=self.pack)
