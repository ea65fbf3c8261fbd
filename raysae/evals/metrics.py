"""Pure metric pieces (JAX, jittable; numpy-compatible where noted), shared by the batch program.

- `masked_moments`: count, mean and centred sum of squares of masked vectors; combined across
  batches on the host with Chan's parallel formula (see `raysae.evals.accumulate`), which keeps
  FVU exact even when the site's mean is large (Gemma's residual stream) and float32 sums would
  cancel.
- `centred_correct_logit`: App. C.3's metric, the logit of the correct next token minus the mean
  logit over the vocabulary.
- `attribution` and `r_l0_per_token`: App. C.3's uniformity of active latent importance,
  y_t = f_t ⊙ (W_dec ∇_{x̂_t} L_t) and r_L0 = exp(S(p)) / ‖y_t‖₀ with p = |y_t| / ‖y_t‖₁, where L_t
  is token t's own metric; the gradient must be the per-token one (`raysae.evals.step` gets it for
  every token from one backward with the LM's `diagonal_kv_grad`).
- `log10_frequency_histogram`: the paper's Fig. 5 (numpy, host side).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def masked_moments(x: jax.Array, mask: jax.Array, axis=(0, 1)):
    """(count, mean, m2) of rows x[..., d] where mask, reduced over `axis`.

    m2 = Σ ‖x − mean‖² over masked rows. With no masked rows, mean = 0 and m2 = 0.
    """
    m = mask.astype(jnp.float32)[..., None]
    n = jnp.sum(m, axis=axis)                                  # [..., 1]
    mean = jnp.sum(x * m, axis=axis) / jnp.maximum(n, 1.0)
    centred = (x - jnp.expand_dims(mean, axis)) * m
    m2 = jnp.sum(jnp.square(centred), axis=axis).sum(-1)
    return n[..., 0], mean, m2


def centred_correct_logit(logits: jax.Array, tokens: jax.Array) -> jax.Array:
    """[B, T-1]: logit of token t+1 at position t minus the mean logit at t (float32)."""
    lg = logits[:, :-1].astype(jnp.float32)
    correct = jnp.take_along_axis(lg, tokens[:, 1:, None].astype(jnp.int32), axis=-1)[..., 0]
    return correct - jnp.mean(lg, axis=-1)


def attribution(f: jax.Array, grad_xhat: jax.Array, W_dec: jax.Array) -> jax.Array:
    """y = f ⊙ (∇_x̂ L · W_decᵀ): each latent's linear effect on the metric, [..., M].

    For App. C.3, `grad_xhat` at token t must be ∂L_t/∂x̂_t (its own metric only).
    """
    return f * jnp.einsum("...d,md->...m", grad_xhat.astype(jnp.float32), W_dec.astype(jnp.float32))


def r_l0_per_token(y: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(r [...], valid [...]): exp(entropy of |y|/‖y‖₁) / ‖y‖₀ for each row of y [..., M].

    r is 1 when every active latent matters equally and 1/‖y‖₀ when one latent carries all the
    attribution. Rows with no non-zero attribution are not valid (r = 0 there).
    """
    a = jnp.abs(y.astype(jnp.float32))
    total = jnp.sum(a, axis=-1, keepdims=True)
    n = jnp.sum(a > 0, axis=-1)
    p = a / jnp.where(total > 0, total, 1.0)
    plogp = jnp.where(p > 0, p * jnp.log(jnp.where(p > 0, p, 1.0)), 0.0)
    entropy = -jnp.sum(plogp, axis=-1)
    valid = n > 0
    r = jnp.where(valid, jnp.exp(entropy) / jnp.maximum(n, 1), 0.0)
    return r, valid


def log10_frequency_histogram(freq: np.ndarray, bins: int, min_log10: float,
                              tokens: int | None = None) -> dict:
    """Histogram of log10 firing frequency over latents that fired (dead latents counted apart).

    Frequencies below 10^min_log10 land in the first bin. `tokens`: the sample's size, whose
    inverse (the lowest frequency it can tell from zero) is reported as `resolution`.
    Returns plain lists for JSON.
    """
    freq = np.asarray(freq, np.float64)
    alive = freq[freq > 0]
    edges = np.linspace(min_log10, 0.0, bins + 1)
    logf = np.clip(np.log10(alive), min_log10, 0.0) if alive.size else alive
    counts, _ = np.histogram(logf, bins=edges)
    return {"bin_edges_log10": edges.tolist(), "counts": counts.astype(int).tolist(),
            "dead": int((freq == 0).sum()), "tokens": tokens,
            "resolution": 1.0 / tokens if tokens else None}
