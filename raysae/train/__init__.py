"""The Gemma Scope training recipe in pure JAX + optax (no Ray).

- `config`      TrainConfig: every recipe knob with the paper's default
- `schedules`   cosine lr warmup, linear λ warmup
- `optimizer`   the optax chain and the post-update projections
- `normalize`   the dataset scalar C
- `step`        TrainState and the jitted train step
- `checkpoint`  atomic checkpoints on fsspec URLs, resume
- `loop`        `train(config, batches)`: the loop a notebook or a Tune trial calls
- `mesh`        the (data, model) device mesh, partition rules, the data/model split
- `sharded`     the sharded step and `train_sharded` (data × Megatron parallelism)
- `distributed` `jax.distributed` start-up for jobs that span hosts
"""

from raysae.train.config import TrainConfig
from raysae.train.normalize import estimate_norm_scalar
from raysae.train.step import TrainState, StepMetrics, init_state, train_step, jit_train_step
from raysae.train.checkpoint import (Checkpoint, CheckpointError, latest_checkpoint,
                                     load_checkpoint, save_checkpoint)
from raysae.train.loop import TrainResult, TrainingDataError, train
from raysae.train.mesh import choose_degrees, make_mesh
from raysae.train.sharded import ShardedStep, train_sharded
from raysae.train import distributed

__all__ = [
    "TrainConfig", "estimate_norm_scalar", "TrainState", "StepMetrics", "init_state",
    "train_step", "jit_train_step", "Checkpoint", "CheckpointError", "latest_checkpoint",
    "load_checkpoint", "save_checkpoint", "TrainResult", "TrainingDataError", "train",
    "choose_degrees", "make_mesh", "ShardedStep", "train_sharded", "distributed",
]
