"""The training loss with a sparse decoder: only the latents a row uses are touched.

JumpReLU's dense product is the encoder's forward z = x_c W_enc + b_enc. Every gradient of
the loss w.r.t. z is zero outside S = {z > θ − ε/2}: the active latents (∂f/∂z = H(z − θ))
and those within ε/2 of their threshold (the θ pseudo-derivative). So per row the path

  1. takes z from the dense matmul without a gradient, and the first `capacity` indices of
     S (in latent order, by `lax.top_k`, `active_indices`; unused slots masked);
  2. recomputes z on those slots from the gathered W_enc columns, z_s = x_c · W_enc[:, i] +
     b_enc[i], valued as the dense z (so forward values are the dense ones exactly) but
     differentiable: the encoder's backward touches B·k columns, not B·M;
  3. decodes x̂ = Σ_s f_s W_dec[i_s] + b_dec from the gathered rows; autodiff of the gathers
     is a scatter-add into W_dec's and W_enc's gradients.

That is 2·B·M·d FLOPs for the encoder forward plus 12·B·k·d for the rest, against 12·B·M·d
dense. When a row has more than `capacity` latents in S, the batch takes the dense path
(`lax.cond`), so the result is always the dense loss's to float tolerance.
`decoder_costs` / `choose_decoder` are the cost model that picks the path per shape.
The dead-latent pre-activation loss sends gradient to every dead latent's z, so it has no
sparse form here: `sparse_loss_fn` refuses it.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from raysae.sae.jumprelu import DEFAULT_BANDWIDTH, jumprelu
from raysae.sae.model import LossParts, loss_fn, loss_parts, pre_activations
from raysae.sae.params import SAEParams


class ActiveSet(NamedTuple):
    """Per row, the first `capacity` latents with z > θ − ε/2."""

    index: jax.Array   # int32 [B, capacity]: latent ids (0 in unused slots)
    valid: jax.Array   # bool [B, capacity]: the slot holds a latent of S
    count: jax.Array   # int32 [B]: |S| per row (may exceed capacity)


def active_indices(z: jax.Array, threshold: jax.Array, bandwidth: float,
                   capacity: int) -> ActiveSet:
    """The latents each row needs (active or within ε/2 of θ), in latent order.

    `lax.top_k` of (M − i) on the needed latents i (0 elsewhere) gives each row's first
    `capacity` of them, smallest i first (on CPU ~6× faster than compacting by a prefix sum
    and a scatter).

    Args:
        z: [B, M] pre-activations.
        threshold: θ [M].
        bandwidth: ε.
        capacity: slots per row.
    Returns:
        An `ActiveSet`; rows with `count > capacity` keep their first `capacity` latents.
    """
    needed = z > threshold - 0.5 * bandwidth
    count = jnp.sum(needed, axis=-1, dtype=jnp.int32)
    M = z.shape[-1]
    # float32 ranks (exact below 2**24 latents): XLA's CPU top_k is ~25× faster on floats
    rank = jnp.where(needed, (M - jnp.arange(M)).astype(jnp.float32), 0.0)
    _, index = jax.lax.top_k(rank, capacity)
    valid = jnp.arange(capacity, dtype=jnp.int32)[None, :] < count[:, None]
    return ActiveSet(index=jnp.where(valid, index, 0).astype(jnp.int32), valid=valid,
                     count=count)


def _einsum(spec: str, a: jax.Array, b: jax.Array, compute_dtype) -> jax.Array:
    if compute_dtype is None:
        return jnp.einsum(spec, a, b)
    return jnp.einsum(spec, a.astype(compute_dtype), b.astype(compute_dtype),
                      preferred_element_type=jnp.float32)


def _sparse_branch(params: SAEParams, x_c: jax.Array, z: jax.Array, target: jax.Array,
                   capacity: int, bandwidth: float, compute_dtype, **loss_kwargs):
    act = active_indices(z, params.threshold, bandwidth, capacity)
    enc_cols = params.W_enc.T[act.index]                                  # [B, k, d_in]
    z_grad = _einsum("bd,bkd->bk", x_c, enc_cols, compute_dtype) + params.b_enc[act.index]
    z_s = jnp.take_along_axis(z, act.index, axis=-1)
    z_s = z_s + (z_grad - jax.lax.stop_gradient(z_grad))  # the dense value, sparse gradient
    f_s = jumprelu(z_s, params.threshold[act.index], bandwidth) * act.valid.astype(z.dtype)
    x_hat = _einsum("bk,bkd->bd", f_s, params.W_dec[act.index], compute_dtype) + params.b_dec
    return loss_parts(params, z, x_hat, target, bandwidth=bandwidth, **loss_kwargs)


def sparse_loss_fn(params: SAEParams, x: jax.Array, target: jax.Array | None = None, *,
                   capacity: int, sparsity_coefficient: jax.Array | float,
                   bandwidth: float = DEFAULT_BANDWIDTH, pre_encoder_bias: bool = True,
                   compute_dtype=None, sparsity_loss: str = "l0",
                   target_l0: float | None = None, dead_mask: jax.Array | None = None,
                   dead_preact_coefficient: float = 0.0) -> tuple[jax.Array, LossParts]:
    """`model.loss_fn` through the sparse decoder path (module docstring), same value and
    gradients to float tolerance; the dense path runs when a row overflows `capacity`.

    Args:
        params, x, target: as in `loss_fn`.
        capacity: slots per row (latents with z > θ − ε/2 a row may have on the sparse path).
        sparsity_coefficient ... target_l0: as in `loss_fn`.
        dead_mask, dead_preact_coefficient: must leave the dead-latent loss off.
    Returns:
        (loss, `LossParts`).
    """
    if dead_mask is not None and dead_preact_coefficient > 0:
        raise ValueError("the sparse decoder path has no dead-latent pre-activation loss "
                         "(its gradient reaches every dead latent); use the dense decoder")
    target = x if target is None else target
    kwargs = dict(sparsity_coefficient=sparsity_coefficient, sparsity_loss=sparsity_loss,
                  target_l0=target_l0)
    z = jax.lax.stop_gradient(pre_activations(params, x, pre_encoder_bias=pre_encoder_bias,
                                              compute_dtype=compute_dtype))
    needed = jnp.sum(z > params.threshold - 0.5 * bandwidth, axis=-1)
    capacity = min(int(capacity), params.width)

    def dense(params):
        return loss_fn(params, x, target, bandwidth=bandwidth, pre_encoder_bias=pre_encoder_bias,
                       compute_dtype=compute_dtype, **kwargs)

    def sparse(params):
        x_c = x - params.b_dec if pre_encoder_bias else x
        return _sparse_branch(params, x_c, z, target, capacity, bandwidth, compute_dtype,
                              **kwargs)

    return jax.lax.cond(jnp.max(needed) > capacity, dense, sparse, params)


class DecoderCosts(NamedTuple):
    """The cost model's estimate of one loss-and-gradient, in dense-matmul FLOPs."""

    dense: float    # 12·B·M·d
    sparse: float   # 2·B·M·d + gather_cost · 12·B·k·d + select_cost · B·M


# Fitted (least squares, `bench/step.py --sparse`, BENCHMARKS.md) on the shared 2-core CPU:
# a gathered or scattered multiply-add costs GATHER_COST dense-matmul FLOPs, and the sparse
# path's work per element of z (the mask, top_k, the dense branch's zero residuals under the
# cond) SELECT_COST. With them "auto" keeps the dense path at every CPU shape measured (the
# sparse path was not faster there); an accelerator needs its own figures (bench/device.py).
GATHER_COST = 130.0
SELECT_COST = 2100.0


def decoder_costs(batch: int, d: int, width: int, capacity: int,
                  gather_cost: float = GATHER_COST,
                  select_cost: float = SELECT_COST) -> DecoderCosts:
    """Estimated cost of the dense and the sparse path for one batch.

    Args:
        batch, d, width: B, d and M.
        capacity: k, the sparse path's slots per row.
        gather_cost, select_cost: the measured factors (module constants by default).
    Returns:
        `DecoderCosts` (FLOPs of a dense matmul's speed).
    """
    k = min(capacity, width)
    return DecoderCosts(dense=12.0 * batch * width * d,
                        sparse=2.0 * batch * width * d + gather_cost * 12.0 * batch * k * d
                        + select_cost * batch * width)


def choose_decoder(batch: int, d: int, width: int, capacity: int) -> str:
    """"sparse" when the cost model expects the sparse path to be faster, else "dense"."""
    costs = decoder_costs(batch, d, width, capacity)
    return "sparse" if costs.sparse < costs.dense else "dense"
