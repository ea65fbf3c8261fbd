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


def linear_warmup(final: float, warmup_steps: int):
    """λ(t) = final · min(1, t / warmup_steps)."""

    def schedule(step):
        if warmup_steps == 0:
            return jnp.asarray(final, jnp.float32)
        return final * jnp.clip(jnp.asarray(step, jnp.float32) / warmup_steps, 0.0, 1.0)

    return schedule
