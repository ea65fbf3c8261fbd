"""The Gemma Scope training recipe in pure JAX + optax (no Ray).

`train(config, data, norm_scalar=C)` is the one training path: a notebook, a sweep trial and
every process of a multi-host job call it. Modules: `config` (TrainConfig, the paper's
defaults), `schedules`, `optimizer`, `step` (TrainState, the step), `mesh` (device mesh,
partition rules, the data × model split), `sharded` (the step on a mesh, batch placement,
prefetch), `pack` (K SAEs of one width in one vmapped step), `source` (BatchSource),
`checkpoint`, `loop`, `distributed` (jax.distributed).
"""

from raysae.data.normalize import estimate_norm_scalar
from raysae.train.config import TrainConfig
from raysae.train.step import Knobs, TrainState, StepMetrics, init_state, train_step
from raysae.train.pack import Pack
from raysae.train.checkpoint import (Checkpoint, CheckpointError, latest_checkpoint,
                                     load_checkpoint, save_checkpoint)
from raysae.train.source import Batches, BatchSource, as_source
from raysae.train.loop import TrainResult, TrainingDataError, train
from raysae.train.mesh import MeshSplit, choose_degrees, make_mesh, mesh_for
from raysae.train.sharded import ShardedStep
from raysae.train import distributed

__all__ = [
    "TrainConfig", "estimate_norm_scalar", "Knobs", "Pack", "TrainState", "StepMetrics", "init_state",
    "train_step", "Checkpoint", "CheckpointError", "latest_checkpoint", "load_checkpoint",
    "save_checkpoint", "Batches", "BatchSource", "as_source", "TrainResult",
    "TrainingDataError", "train", "MeshSplit", "choose_degrees", "make_mesh", "mesh_for",
    "ShardedStep", "distributed",
]
