"""The Gemma Scope optimiser as an optax chain, plus the post-update projections.

    [clip_by_global_norm]  (optional; the paper clips nothing)
    project_decoder_grads  remove each W_dec row's gradient component parallel to the row
    scale_by_adam(b1=0, b2=0.999, eps=1e-8)  (as `scale_by_adam_b1_zero` when β₁ = 0)
    [scale_groups]         (optional; not the paper's) the encoder's and the decoder's step
                           × their own factor (TrainConfig.encoder_lr_scale, decoder_lr_scale)
    scale_by_learning_rate(cosine warmup 0.1η → η)

With β₁ = 0 Adam's first moment is the gradient itself, so `scale_by_adam_b1_zero` keeps
only the count and the second moment ν: the same updates as optax's, bit for bit, with a
third less optimiser memory (params + ν instead of params + μ + ν).

After `optax.apply_updates`, `project_params` renormalises decoder rows to unit norm and
keeps θ positive. Projecting the gradient first means Adam sees only the tangential part,
and the renormalisation then corrects the second-order drift off the sphere.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from raysae.sae.params import SAEParams, unit_rows
from raysae.train.config import TrainConfig
from raysae.train.schedules import lr_schedule

MIN_THRESHOLD = 1e-6


class ScaleByAdamB1ZeroState(NamedTuple):
    """Adam's state without the first moment (β₁ = 0): the step count and ν."""

    count: jax.Array      # int32 scalar, as optax's ScaleByAdamState.count
    nu: optax.Updates     # second moment, shaped (and sharded) like the params


def scale_by_adam_b1_zero(b2: float = 0.999, eps: float = 1e-8) -> optax.GradientTransformation:
    """`optax.scale_by_adam(b1=0, b2, eps)` without storing the first moment.

    optax computes μ = (1 − β₁) g + β₁ μ_prev = g, μ̂ = μ / (1 − β₁^t) = g, ν = (1 − β₂) g² +
    β₂ ν_prev, ν̂ = ν / (1 − β₂^t) and the update μ̂ / (√ν̂ + eps); with β₁ = 0 the first two
    are the gradient (the only difference: optax's g + 0·μ_prev can turn a −0.0 gradient into
    +0.0). ν and its bias correction use optax's own functions.

    Args:
        b2: decay of the second moment.
        eps: added to √ν̂.
    Returns:
        A GradientTransformation whose state is a `ScaleByAdamB1ZeroState`.
    """

    def init_fn(params):
        return ScaleByAdamB1ZeroState(count=jnp.zeros([], jnp.int32),
                                      nu=optax.tree.zeros_like(params))

    def update_fn(updates, state, params=None):
        del params
        nu = optax.tree.update_moment_per_elem_norm(updates, state.nu, b2, 2)
        count_inc = optax.safe_increment(state.count)
        nu_hat = optax.tree.bias_correction(nu, b2, count_inc)
        updates = jax.tree.map(lambda g, v: g / (jnp.sqrt(v + 0.0) + eps), updates, nu_hat)
        return updates, ScaleByAdamB1ZeroState(count=count_inc,
                                                nu=optax.tree.cast_like(nu, state.nu))

    return optax.GradientTransformation(init_fn, update_fn)


class ProjectDecoderState(NamedTuple):
    pass


def project_decoder_grads() -> optax.GradientTransformation:
    """g_dec_i ← g_dec_i − (g_dec_i · w_i) w_i for each decoder row w_i (needs params)."""

    def init_fn(params):
        del params
        return ProjectDecoderState()

    def update_fn(updates: SAEParams, state, params: SAEParams | None = None):
        if params is None:
            raise ValueError("project_decoder_grads needs params in update()")
        w = params.W_dec
        g = updates.W_dec
        parallel = jnp.sum(g * w, axis=-1, keepdims=True) / jnp.sum(w * w, axis=-1, keepdims=True)
        return updates._replace(W_dec=g - parallel * w), state

    return optax.GradientTransformation(init_fn, update_fn)


def scale_groups(encoder: float, decoder: float) -> optax.GradientTransformation:
    """Multiply the W_enc update by `encoder` and the W_dec and b_dec updates by `decoder`
    (b_enc and θ keep the base lr): per-group learning rates, stateless.

    Args:
        encoder: factor on W_enc's update.
        decoder: factor on W_dec's and b_dec's updates (both live in the input's units).
    Returns:
        A stateless GradientTransformation on `SAEParams` updates.
    """

    def update_fn(updates: SAEParams, state, params=None):
        del params
        return updates._replace(W_enc=updates.W_enc * encoder, W_dec=updates.W_dec * decoder,
                                b_dec=updates.b_dec * decoder), state

    return optax.GradientTransformation(lambda params: optax.EmptyState(), update_fn)


def make_optimizer(config: TrainConfig, lr=None) -> optax.GradientTransformation:
    """The recipe's optax chain (module docstring); β₁ = 0 stores no first moment.

    Args:
        config: the recipe (clipping, projection, Adam's β and eps, the lr schedule).
        lr: a traced scalar replacing config.lr (a packed step's per-member lr); the
            optimiser state does not depend on it.
    Returns:
        The chain; its state's Adam entry is a `ScaleByAdamB1ZeroState` when
        `config.adam_b1 == 0`, else optax's `ScaleByAdamState`.
    """
    parts = []
    if config.grad_clip_norm is not None:
        parts.append(optax.clip_by_global_norm(config.grad_clip_norm))
    if config.project_decoder_grads:
        parts.append(project_decoder_grads())
    parts += [
        scale_by_adam_b1_zero(b2=config.adam_b2, eps=config.adam_eps) if config.adam_b1 == 0
        else optax.scale_by_adam(b1=config.adam_b1, b2=config.adam_b2, eps=config.adam_eps)]
    if config.encoder_lr_scale != 1.0 or config.decoder_lr_scale != 1.0:
        parts.append(scale_groups(config.encoder_lr_scale, config.decoder_lr_scale))
    parts.append(optax.scale_by_learning_rate(lr_schedule(config, lr)))
    return optax.chain(*parts)


def project_params(params: SAEParams, unit_decoder: bool = True) -> SAEParams:
    """Unit-norm decoder rows (unless `unit_decoder` is False) and θ ≥ MIN_THRESHOLD after
    every update."""
    W_dec = unit_rows(params.W_dec) if unit_decoder else params.W_dec
    return params._replace(W_dec=W_dec, threshold=jnp.maximum(params.threshold, MIN_THRESHOLD))
