"""The training state and one optimisation step on a normalised batch.

`TrainState` (a NamedTuple pytree) holds params, the optax state, the step counter, the step
each latent last fired (for the dead fraction over a window) and `first_bad_step`. A batch
with NaN/Inf leaves the state untouched and records its step there, so the host loop raises
a clear error at its next sync without a device-to-host sync on every step. The loss runs
through the dense or the sparse decoder path (`decoder_path`, TrainConfig.decoder).
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from raysae.sae.model import loss_fn
from raysae.sae.params import SAEParams, init_params
from raysae.sae.sparse import choose_decoder, sparse_loss_fn
from raysae.train.config import TrainConfig
from raysae.train.optimizer import make_optimizer, project_params
from raysae.train.schedules import linear_warmup, lr_schedule


class TrainState(NamedTuple):
    """Everything a training run carries from step to step (a pytree, checkpointed whole)."""

    params: SAEParams
    opt_state: optax.OptState
    step: jax.Array            # int32 scalar: updates applied so far
    last_fired: jax.Array      # int32 [M]: last step each latent fired (-1: never)
    first_bad_step: jax.Array  # int32 scalar: first step with a non-finite batch (-1: none)


class Knobs(NamedTuple):
    """The recipe scalars that may differ between the SAEs of a pack (`raysae.train.pack`):
    arrays in the step, in place of the config's values."""

    sparsity_coefficient: jax.Array  # λ
    lr: jax.Array                    # peak learning rate


class StepMetrics(NamedTuple):
    """One step's scalars (named as in `raysae.metrics`)."""

    loss: jax.Array
    mse: jax.Array
    fvu: jax.Array
    l0: jax.Array
    sparsity_loss: jax.Array
    sparsity_coefficient: jax.Array
    lr: jax.Array
    dead_window_fraction: jax.Array  # fired on no row in the last dead_window_steps steps


def compute_dtype(config: TrainConfig):
    return None if config.compute_dtype == "float32" else jnp.dtype(config.compute_dtype)


def decoder_path(config: TrainConfig, batch: int, d: int) -> str:
    """The decoder path a step of this shape takes: "dense" or "sparse".

    Args:
        config: the recipe (`decoder`, `decoder_capacity`, the dead-latent loss).
        batch, d: the step's batch rows and input width.
    Returns:
        `config.decoder` when it is not "auto"; else the cost model's choice
        (`sae.sparse.choose_decoder`), dense whenever the dead-latent loss is on.
    """
    if config.decoder != "auto":
        return config.decoder
    if config.dead_preact_coefficient > 0:
        return "dense"
    return choose_decoder(batch, d, config.width, config.decoder_capacity)


def init_state(config: TrainConfig, d: int, *, d_out: int | None = None,
               key: jax.Array | None = None, params: SAEParams | None = None) -> TrainState:
    """A fresh training state.

    Args:
        config: the recipe (width, transcoder, θ₀, optimiser).
        d, d_out: input and output widths (d_out defaults to d).
        key: the init's PRNG key (default: from `config.seed`).
        params: start from these (e.g. an unfolded release) instead of the paper's init.
    Returns:
        A `TrainState` at step 0.
    """
    if params is None:
        key = jax.random.PRNGKey(config.seed) if key is None else key
        params = init_params(key, d, config.width, d_out=d_out, transcoder=config.transcoder,
                             threshold=config.threshold_init,
                             decoder_norm=config.decoder_init_norm,
                             encoder_norm=config.encoder_init_norm)
    params = SAEParams(*(jnp.asarray(p, jnp.float32) for p in params))
    opt_state = make_optimizer(config).init(params)
    return TrainState(params=params, opt_state=opt_state, step=jnp.zeros((), jnp.int32),
                      last_fired=jnp.full((params.width,), -1, jnp.int32),
                      first_bad_step=jnp.full((), -1, jnp.int32))


def train_step(state: TrainState, x: jax.Array, target: jax.Array | None,
               config: TrainConfig, knobs: Knobs | None = None) -> tuple[TrainState, StepMetrics]:
    """One optimisation step (pure; jit it, or use `ShardedStep`, which divides by C first).

    Args:
        state: the state before the step.
        x: [B, d_in] inputs, already divided by C.
        target: [B, d_out] transcoder targets (divided by the input's C), or None for an SAE.
        config: the recipe.
        knobs: λ and lr for this SAE instead of the config's (one member of a pack).
    Returns:
        (the new state, this step's `StepMetrics`); a non-finite batch leaves the state as
        it was and records its step in `first_bad_step`.
    """
    peak_lam, peak_lr = (config.sparsity_coefficient, None) if knobs is None else knobs
    optimizer = make_optimizer(config, peak_lr)
    lam = linear_warmup(peak_lam, config.sparsity_warmup_steps,
                        config.sparsity_warmup_start)(state.step)
    lr = lr_schedule(config, peak_lr)(state.step)
    silent = (state.step - state.last_fired) > config.dead_preact_window_steps

    if decoder_path(config, x.shape[0], x.shape[1]) == "sparse":
        loss = functools.partial(sparse_loss_fn, capacity=config.decoder_capacity)
    else:
        loss = loss_fn

    def objective(params):
        return loss(params, x, target, sparsity_coefficient=lam, bandwidth=config.bandwidth,
                    pre_encoder_bias=not config.transcoder,
                    compute_dtype=compute_dtype(config), sparsity_loss=config.sparsity_loss,
                    target_l0=config.target_l0, dead_mask=silent,
                    dead_preact_coefficient=config.dead_preact_coefficient)

    (_, parts), grads = jax.value_and_grad(objective, has_aux=True)(state.params)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = project_params(optax.apply_updates(state.params, updates),
                            unit_decoder=config.decoder_unit_norm)

    last_fired = jnp.where(parts.fired, state.step, state.last_fired)

    finite = jnp.all(jnp.isfinite(x))
    if target is not None:
        finite &= jnp.all(jnp.isfinite(target))
    new = TrainState(params=params, opt_state=opt_state, step=state.step + 1,
                     last_fired=last_fired, first_bad_step=state.first_bad_step)
    kept = jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, state)
    first_bad = jnp.where(finite | (state.first_bad_step >= 0), state.first_bad_step, state.step)
    kept = kept._replace(first_bad_step=first_bad)

    # Dead: not fired in the last `dead_window_steps` updates. A latent that never fired has
    # last_fired = -1, so the same test holds for it once that many updates have run.
    dead = (kept.step - kept.last_fired) > config.dead_window_steps
    metrics = StepMetrics(loss=parts.loss, mse=parts.mse, fvu=parts.mse / parts.variance,
                          l0=parts.l0, sparsity_loss=parts.sparsity_loss,
                          sparsity_coefficient=jnp.asarray(lam, jnp.float32),
                          lr=jnp.asarray(lr, jnp.float32), dead_window_fraction=jnp.mean(dead))
    return kept, metrics
