"""SAE parameters, named and shaped like the Gemma Scope release, and their initialisation.

`SAEParams` is a NamedTuple (a JAX pytree) with W_enc [d, M], W_dec [M, d], b_enc [M],
b_dec [d], threshold [M]. For a transcoder d_in may differ from d_out, so W_enc is
[d_in, M] and W_dec [M, d_out]. The threshold θ is trained directly (kept positive by the
optimiser's projection), not through log θ, which barely moves under Adam (SAELens PR #718).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

DEFAULT_THRESHOLD = 0.001


class SAEParams(NamedTuple):
    W_enc: jax.Array      # [d_in, M]
    W_dec: jax.Array      # [M, d_out]
    b_enc: jax.Array      # [M]
    b_dec: jax.Array      # [d_out]
    threshold: jax.Array  # [M], θ > 0

    @property
    def d_in(self) -> int:
        return self.W_enc.shape[0]

    @property
    def d_out(self) -> int:
        return self.W_dec.shape[1]

    @property
    def width(self) -> int:
        return self.W_enc.shape[1]


def unit_rows(w: jax.Array) -> jax.Array:
    """Rescale each row of `w` to unit L2 norm."""
    return w / jnp.linalg.norm(w, axis=-1, keepdims=True)


def init_params(key: jax.Array, d: int, width: int, *, d_out: int | None = None,
                transcoder: bool = False, threshold: float = DEFAULT_THRESHOLD,
                decoder_norm: float | None = None, encoder_norm: float | None = None,
                dtype=jnp.float32) -> SAEParams:
    """The paper's initialisation.

    W_dec is He-uniform (bound sqrt(6 / fan_in), fan_in = M) with rows then rescaled to unit
    norm; W_enc = W_decᵀ (untied afterwards); biases 0; θ = `threshold`. `decoder_norm`
    (not the paper's: SAELens's "heuristic" init uses 0.1) rescales the rows to that norm
    before the transpose, so the encoder starts small too; `encoder_norm` (not the paper's)
    gives the transposed encoder's columns their own norm (default: the decoder's), so the
    encoder can start larger than the decoder. Transcoders (App. B) get no transpose init:
    W_enc is drawn independently, He-uniform over d_in (`encoder_norm` is not applied).
    """
    d_out = d if d_out is None else d_out
    k_dec, k_enc = jax.random.split(key)
    bound = (6.0 / width) ** 0.5
    W_dec = unit_rows(jax.random.uniform(k_dec, (width, d_out), dtype, -bound, bound))
    if decoder_norm is not None:
        W_dec = W_dec * decoder_norm
    if transcoder:
        enc_bound = (6.0 / d) ** 0.5
        W_enc = jax.random.uniform(k_enc, (d, width), dtype, -enc_bound, enc_bound)
    else:
        if d_out != d:
            raise ValueError(f"an SAE needs d_out == d (got d={d}, d_out={d_out}); "
                             "use transcoder=True for different input and target widths")
        # A ratio, so that encoder_norm equal to the decoder's gives exactly W_decᵀ.
        ratio = 1.0 if encoder_norm is None else encoder_norm / (decoder_norm or 1.0)
        W_enc = W_dec.T if ratio == 1.0 else W_dec.T * ratio
    return SAEParams(
        W_enc=W_enc,
        W_dec=W_dec,
        b_enc=jnp.zeros((width,), dtype),
        b_dec=jnp.zeros((d_out,), dtype),
        threshold=jnp.full((width,), threshold, dtype),
    )
