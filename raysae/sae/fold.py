"""Folding the normalisation scalar C into an SAE (Gemma Scope App. A), and back.

Training sees x / C (E‖x/C‖² = 1). Folding makes an SAE that runs on raw x with no
normalisation and no pre-encoder bias, in the npz orientation (W_enc [d, M]):

    b_enc' = C · (b_enc − b_dec @ W_enc)     b_dec' = C · b_dec     θ' = C · θ

W_enc and W_dec are unchanged. Then z'(x) = x W_enc + b_enc' = C · z(x / C), so the folded
latents are C × the trained ones and the reconstruction is C × the trained reconstruction
of x / C, i.e. the same point in raw space. `unfold` inverts this, to resume training from a
released (folded) SAE.

Transcoders have no pre-encoder bias, and their target is scaled by the input's C, so
b_enc' = C · b_enc (the b_dec term is absent), b_dec' = C · b_dec, θ' = C · θ.
"""

from __future__ import annotations

from raysae.sae.params import SAEParams


def fold(params: SAEParams, norm_scalar: float, *, pre_encoder_bias: bool = True) -> SAEParams:
    C = norm_scalar
    b_enc = params.b_enc - params.b_dec @ params.W_enc if pre_encoder_bias else params.b_enc
    return params._replace(b_enc=C * b_enc, b_dec=C * params.b_dec, threshold=C * params.threshold)


def unfold(params: SAEParams, norm_scalar: float, *, pre_encoder_bias: bool = True) -> SAEParams:
    C = norm_scalar
    b_dec = params.b_dec / C
    b_enc = params.b_enc / C
    if pre_encoder_bias:
        b_enc = b_enc + b_dec @ params.W_enc
    return params._replace(b_enc=b_enc, b_dec=b_dec, threshold=params.threshold / C)
