"""The Gemma Scope optimiser as an optax chain, plus the post-update projections.

    [clip_by_global_norm]  (optional; the paper clips nothing)
    project_decoder_grads  remove each W_dec row's gradient component parallel to the row
    scale_by_adam(b1=0, b2=0.999, eps=1e-8)
    scale_by_learning_rate(cosine warmup 0.1η → η)

After `optax.apply_updates`, `project_params` renormalises decoder rows to unit norm and
keeps θ positive. Projecting the gradient first means Adam sees only the tangential part,
and the renormalisation then corrects the second-order drift off the sphere.
"""

from __future__ import annotations

from typing import NamedTuple

import jax.numpy as jnp
import optax

from raysae.sae.params import SAEParams, unit_rows
from raysae.train.config import TrainConfig
from raysae.train.schedules import lr_schedule

MIN_THRESHOLD = 1e-6


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


def make_optimizer(config: TrainConfig, lr=None) -> optax.GradientTransformation:
    """The chain above for `config`; `lr` (a traced scalar in a packed step) replaces
    config.lr (the optimiser state does not depend on it)."""
    parts = []
    if config.grad_clip_norm is not None:
        parts.append(optax.clip_by_global_norm(config.grad_clip_norm))
    if config.project_decoder_grads:
        parts.append(project_decoder_grads())
    parts += [
        optax.scale_by_adam(b1=config.adam_b1, b2=config.adam_b2, eps=config.adam_eps),
        optax.scale_by_learning_rate(lr_schedule(config, lr)),
    ]
    return optax.chain(*parts)


def project_params(params: SAEParams, unit_decoder: bool = True) -> SAEParams:
    """Unit-norm decoder rows (unless `unit_decoder` is False) and θ ≥ MIN_THRESHOLD after
    every update."""
    W_dec = unit_rows(params.W_dec) if unit_decoder else params.W_dec
    return params._replace(W_dec=W_dec, threshold=jnp.maximum(params.threshold, MIN_THRESHOLD))
