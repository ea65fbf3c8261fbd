"""Encode, decode and the training loss of a JumpReLU SAE (or transcoder).

    z  = (x − b_dec) W_enc + b_enc      (pre-encoder bias: SAEs during training only)
    f  = JumpReLU(z; θ)
    x̂  = f W_dec + b_dec
    L  = mean_batch ‖target − x̂‖² + λ · mean_batch ‖f‖₀      (target = x for an SAE)

`encode` on raw inputs for inference uses no pre-encoder bias: a folded / released
Gemma Scope SAE has b_dec absorbed into b_enc (see `fold`). Matmuls can run in a lower
`compute_dtype` (e.g. bfloat16) with float32 accumulation and float32 parameters.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from raysae.sae.jumprelu import DEFAULT_BANDWIDTH, heaviside, jumprelu
from raysae.sae.params import SAEParams


class LossParts(NamedTuple):
    """The loss and its parts: scalars (batch means), plus which latents fired."""

    loss: jax.Array
    mse: jax.Array             # mean ‖target − x̂‖²
    l0: jax.Array              # mean number of active latents
    sparsity_loss: jax.Array   # λ · l0
    variance: jax.Array        # mean ‖target − mean(target)‖² (FVU = mse / variance)
    fired: jax.Array           # bool [M]: latent active on at least one row of the batch


def _matmul(a: jax.Array, b: jax.Array, compute_dtype) -> jax.Array:
    if compute_dtype is None:
        return a @ b
    return jnp.matmul(a.astype(compute_dtype), b.astype(compute_dtype),
                      preferred_element_type=jnp.float32)


def pre_activations(params: SAEParams, x: jax.Array, *, pre_encoder_bias: bool = False,
                    compute_dtype=None) -> jax.Array:
    """z = (x − b_dec) W_enc + b_enc, or x W_enc + b_enc without the pre-encoder bias."""
    if pre_encoder_bias:
        x = x - params.b_dec
    return _matmul(x, params.W_enc, compute_dtype) + params.b_enc


def encode(params: SAEParams, x: jax.Array, *, pre_encoder_bias: bool = False,
           bandwidth: float = DEFAULT_BANDWIDTH, compute_dtype=None) -> jax.Array:
    """Latent activations f [..., M]."""
    z = pre_activations(params, x, pre_encoder_bias=pre_encoder_bias, compute_dtype=compute_dtype)
    return jumprelu(z, params.threshold, bandwidth)


def decode(params: SAEParams, f: jax.Array, *, compute_dtype=None) -> jax.Array:
    """Reconstruction x̂ = f W_dec + b_dec."""
    return _matmul(f, params.W_dec, compute_dtype) + params.b_dec


def forward(params: SAEParams, x: jax.Array, *, pre_encoder_bias: bool = False,
            bandwidth: float = DEFAULT_BANDWIDTH, compute_dtype=None) -> jax.Array:
    """Reconstruction of x (the function spliced into an LM site)."""
    f = encode(params, x, pre_encoder_bias=pre_encoder_bias, bandwidth=bandwidth,
               compute_dtype=compute_dtype)
    return decode(params, f, compute_dtype=compute_dtype)


def loss_fn(params: SAEParams, x: jax.Array, target: jax.Array | None = None, *,
            sparsity_coefficient: jax.Array | float, bandwidth: float = DEFAULT_BANDWIDTH,
            pre_encoder_bias: bool = True, compute_dtype=None, sparsity_loss: str = "l0",
            target_l0: float | None = None, dead_mask: jax.Array | None = None,
            dead_preact_coefficient: float = 0.0) -> tuple[jax.Array, LossParts]:
    """Training loss and its parts for a batch x [B, d_in] (target [B, d_out] for transcoders).

    Pass `target=None` for an SAE (target = x, pre-encoder bias on); a transcoder passes
    its target and `pre_encoder_bias=False` (App. B).

    `sparsity_loss="quadratic"` replaces λ·mean‖f‖₀ by λ·mean_rows (2/T)(‖f‖₀ − T)² around a
    target L0 T (`target_l0`), the Gemma Scope 2 penalty as SAELens implements it (its
    `jumprelu_sparsity_loss_mode="quadratic"`, PR #732); not the Gemma Scope (2024) recipe.

    `dead_preact_coefficient` c > 0 with a bool `dead_mask` [M] adds Anthropic's pre-activation
    loss for dead latents (Circuits Updates, Jan 2025; SAELens's `pre_act_loss_coefficient`):
    c · mean_rows Σ_i dead_i · relu(θ_i − z_i) · ‖W_dec,i‖, which pulls dead latents' z up
    to their threshold. Not part of Gemma Scope (2024).
    """
    target = x if target is None else target
    z = pre_activations(params, x, pre_encoder_bias=pre_encoder_bias, compute_dtype=compute_dtype)
    f = jumprelu(z, params.threshold, bandwidth)
    x_hat = decode(params, f, compute_dtype=compute_dtype)
    return loss_parts(params, z, x_hat, target, sparsity_coefficient=sparsity_coefficient,
                      bandwidth=bandwidth, sparsity_loss=sparsity_loss, target_l0=target_l0,
                      dead_mask=dead_mask, dead_preact_coefficient=dead_preact_coefficient)


def loss_parts(params: SAEParams, z: jax.Array, x_hat: jax.Array, target: jax.Array, *,
               sparsity_coefficient: jax.Array | float, bandwidth: float = DEFAULT_BANDWIDTH,
               sparsity_loss: str = "l0", target_l0: float | None = None,
               dead_mask: jax.Array | None = None, dead_preact_coefficient: float = 0.0
               ) -> tuple[jax.Array, LossParts]:
    """The loss from the pre-activations z [B, M] and the reconstruction x̂ (see `loss_fn`;
    the dense and the sparse decoder paths, `sae.sparse`, share it).

    Args:
        params: the SAE (θ for the L0 term, W_dec's row norms for the dead-latent loss).
        z, x_hat, target: pre-activations, reconstruction and its target.
        sparsity_coefficient ... dead_preact_coefficient: as in `loss_fn`.
    Returns:
        (loss, `LossParts`).
    """
    mse = jnp.mean(jnp.sum(jnp.square(target - x_hat), axis=-1))
    # The L0 term goes through the Heaviside STE: its only gradient is to θ.
    active = heaviside(z, params.threshold, bandwidth)
    l0_rows = jnp.sum(active, axis=-1)
    l0 = jnp.mean(l0_rows)
    if sparsity_loss == "l0":
        sparsity = sparsity_coefficient * l0
    elif sparsity_loss == "quadratic":
        if target_l0 is None or target_l0 <= 0:
            raise ValueError("sparsity_loss='quadratic' needs a positive target_l0")
        sparsity = sparsity_coefficient * jnp.mean(2.0 / target_l0 * (l0_rows - target_l0) ** 2)
    else:
        raise ValueError(f"sparsity_loss must be 'l0' or 'quadratic', got {sparsity_loss!r}")
    if dead_mask is not None and dead_preact_coefficient > 0:
        norms = jnp.linalg.norm(params.W_dec, axis=-1)
        gap = jax.nn.relu(params.threshold - z) * (dead_mask.astype(z.dtype) * norms)
        sparsity = sparsity + dead_preact_coefficient * jnp.mean(jnp.sum(gap, axis=-1))
    centred = target - jnp.mean(target, axis=0, keepdims=True)
    variance = jax.lax.stop_gradient(jnp.mean(jnp.sum(jnp.square(centred), axis=-1)))
    loss = mse + sparsity
    return loss, LossParts(loss=loss, mse=mse, l0=l0, sparsity_loss=sparsity, variance=variance,
                     fired=jax.lax.stop_gradient(jnp.any(active > 0, axis=0)))
