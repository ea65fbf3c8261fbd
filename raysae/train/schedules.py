"""Learning-rate and sparsity-coefficient schedules of the recipe (pure functions of step)."""

from __future__ import annotations

import jax.numpy as jnp


def cosine_warmup(peak: float, warmup_steps: int, start_fraction: float = 0.1):
    """lr(t) rises from start_fraction·peak to peak along a half cosine, then stays at peak."""

    def schedule(step):
        if warmup_steps == 0:
            return jnp.asarray(peak, jnp.float32)
        t = jnp.clip(jnp.asarray(step, jnp.float32) / warmup_steps, 0.0, 1.0)
        ramp = 0.5 * (1.0 - jnp.cos(jnp.pi * t))
        return peak * (start_fraction + (1.0 - start_fraction) * ramp)

    return schedule


def linear_warmup(final: float, warmup_steps: int, start_fraction: float = 0.0):
    """λ(t) = final · (s + (1 − s) · min(1, t / warmup_steps)) with s = start_fraction
    (s = 0: the paper's linear warmup from 0; s > 1: an anneal down from s · final)."""

    def schedule(step):
        if warmup_steps == 0:
            return jnp.asarray(final, jnp.float32)
        t = jnp.clip(jnp.asarray(step, jnp.float32) / warmup_steps, 0.0, 1.0)
        return final * (start_fraction + (1.0 - start_fraction) * t)

    return schedule


def lr_schedule(config, peak=None):
    """The recipe's lr: cosine warmup, then constant, then (if config.lr_decay_steps) a linear
    decay to 0 over the last lr_decay_steps steps. `peak` (a traced scalar in a packed step)
    replaces config.lr."""
    warm = cosine_warmup(config.lr if peak is None else peak, config.lr_warmup_steps,
                         config.lr_warmup_start)
    if not config.lr_decay_steps:
        return warm
    n = min(config.lr_decay_steps, config.steps)
    start = config.steps - n

    def schedule(step):
        t = jnp.clip((jnp.asarray(step, jnp.float32) - start) / n, 0.0, 1.0)
        return warm(step) * (1.0 - t)

    return schedule
