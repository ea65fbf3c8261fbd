"""The per-batch eval program: one jitted function from a token batch to summed statistics.

Per batch: one forward up to the site's layer, then partial forwards from there for the clean
loss, the SAE spliced in and each ablation (delta loss costs one partial forward, and an SAE
that reconstructs exactly gives delta loss exactly 0). r_L0 (App. C.3) is exact per token:
one backward with the LM's `diagonal_kv_grad` gives each token the gradient of its own
metric. The SAE (folded, raw space) replaces the site only at positions that count; a
transcoder reads mlp_in and replaces the MLP output. Everything returned is a sum or a
batch moment, so batches combine on the host.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp

from raysae.lm.api import loss_mask, target_mask
from raysae.lm.config import LMConfig
from raysae.sites import Site
from raysae.lm.model import embed, forward, forward_from, next_token_losses
from raysae.sae.model import decode, encode
from raysae.sae.params import SAEParams
from raysae.evals.metrics import attribution, centred_correct_logit, masked_moments, r_l0_per_token


class BatchStats(NamedTuple):
    """Sums over one batch (device arrays). Positions: T for the site, T-1 for predictions."""

    n_tokens: jax.Array         # site positions that count (not BOS/EOS/pad)
    sum_l0: jax.Array           # Σ active latents
    sum_sq_err: jax.Array       # Σ ‖target − x̂‖²
    target_mean: jax.Array      # [d_out] batch mean of the target
    target_m2: jax.Array        # Σ ‖target − batch mean‖²
    fire_count: jax.Array       # [M] int32: tokens on which each latent fired
    n_preds: jax.Array          # predictions that count: made at a spliced position
    loss_sums: dict             # name -> Σ cross-entropy ("clean", "spliced", "zero", "mean")
    pos_n_tokens: jax.Array     # [T]   (empty when per_position is off)
    pos_sq_err: jax.Array       # [T]
    pos_target_mean: jax.Array  # [T, d_out]
    pos_target_m2: jax.Array    # [T]
    pos_n_preds: jax.Array      # [T-1]
    pos_loss_sums: dict         # name -> [T-1]
    sum_r_l0: jax.Array         # Σ r_L0 over tokens with an attribution
    n_r_l0: jax.Array


def _resid_entering(params, config: LMConfig, layer: int, tokens, attention_mask):
    if layer == 0:
        return embed(params, config, tokens)
    prev = Site(layer - 1, "res")
    return forward(params, config, tokens, attention_mask, sites=(prev,), compute_logits=False).acts[prev]


def _spliced(params, sae: SAEParams, config: LMConfig, in_site: Site, out_site: Site, resid, tokens,
             attention_mask, target, delta, diagonal_kv_grad: bool = False):
    """Forward from the site's layer with x̂ + delta spliced in where the site counts.

    Returns (Σ_t L_t over counted predictions, (per-token losses [B, T-1], f, x̂)); `target`
    (the clean MLP output) fills uncounted positions for a transcoder, else the site stays.
    """
    transcoder = in_site != out_site
    keep = loss_mask(tokens, config, attention_mask)[..., None]
    tmask = target_mask(tokens, config, attention_mask)
    box = {}

    def fn(a):
        f = encode(sae, a.astype(jnp.float32))
        x_hat = decode(sae, f)
        box["f"], box["x_hat"] = f, x_hat
        other = target if transcoder else a.astype(jnp.float32)
        return jnp.where(keep, x_hat + delta, other)

    key = (in_site, out_site) if transcoder else in_site
    out = forward_from(params, config, in_site.layer, resid, attention_mask, splice={key: fn},
                       diagonal_kv_grad=diagonal_kv_grad)
    metric = jnp.sum(jnp.where(tmask, centred_correct_logit(out.logits, tokens), 0.0))
    return metric, (next_token_losses(out.logits, tokens), box["f"], box["x_hat"])


def _attribution(params, sae: SAEParams, config: LMConfig, in_site: Site, out_site: Site, resid, tokens,
                 attention_mask, target):
    """(y [B, T, M], counted [B, T]): y_t = f_t ⊙ (W_dec ∇_{x̂_t} L_t), exact per token.

    One backward of Σ_t L_t with `diagonal_kv_grad` (see the module docstring). A pass of its
    own: differentiating the loss pass would let XLA fuse it differently from the clean pass, and
    an exact reconstruction would no longer give delta loss 0. `counted`: the site counts and
    the position has a next token to predict (a metric of its own).
    """
    delta0 = jnp.zeros(resid.shape[:2] + (sae.W_dec.shape[1],), jnp.float32)
    grad, (_, f, _) = jax.grad(
        lambda d: _spliced(params, sae, config, in_site, out_site, resid, tokens, attention_mask, target, d,
                           diagonal_kv_grad=True), has_aux=True)(delta0)
    counted = loss_mask(tokens, config, attention_mask) & jnp.pad(
        target_mask(tokens, config, attention_mask), ((0, 0), (0, 1)))
    return attribution(f, grad, sae.W_dec), counted


@functools.partial(jax.jit, static_argnames=("config", "in_site", "out_site"))
def token_attribution(params, sae: SAEParams, tokens, attention_mask, *, config: LMConfig, in_site: Site,
                      out_site: Site):
    """App. C.3's per-token attribution on one batch: (y [B, T, M], counted [B, T]).

    y[b, t] = f_t ⊙ (W_dec ∇_{x̂_t} L_t) (zero where the site does not count); `counted` says
    which positions enter r_L0. `batch_stats` computes the same inside its program.
    """
    resid = _resid_entering(params, config, in_site.layer, tokens, attention_mask)
    target = None
    if in_site != out_site:
        target = forward_from(params, config, in_site.layer, resid, attention_mask, sites=(out_site,),
                              compute_logits=False).acts[out_site].astype(jnp.float32)
    return _attribution(params, sae, config, in_site, out_site, resid, tokens, attention_mask, target)


@functools.partial(jax.jit, static_argnames=("config", "in_site", "out_site", "ablations", "want_r_l0",
                                             "per_position"))
def batch_stats(params, sae: SAEParams, site_mean, tokens, attention_mask, *, config: LMConfig,
                in_site: Site, out_site: Site, ablations: tuple = (), want_r_l0: bool = False,
                per_position: bool = True) -> BatchStats:
    """Statistics of `sae` at `in_site` (-> `out_site` for a transcoder) on one token batch.

    `site_mean` [d_out] is the eval set's mean at `out_site` (used by the "mean" ablation only).
    """
    layer = in_site.layer
    mask = loss_mask(tokens, config, attention_mask)              # [B, T]
    tmask = target_mask(tokens, config, attention_mask)           # [B, T-1]
    keep = mask[..., None]
    resid = _resid_entering(params, config, layer, tokens, attention_mask)

    clean = forward_from(params, config, layer, resid, attention_mask, sites=(in_site, out_site))
    target = clean.acts[out_site].astype(jnp.float32)
    losses = {"clean": next_token_losses(clean.logits, tokens)}

    delta0 = jnp.zeros(target.shape, jnp.float32)
    _, (losses["spliced"], f, x_hat) = _spliced(params, sae, config, in_site, out_site, resid, tokens,
                                                attention_mask, target, delta0)
    if want_r_l0:
        y, counted = _attribution(params, sae, config, in_site, out_site, resid, tokens, attention_mask, target)
        r, valid = r_l0_per_token(y)
        valid = valid & counted
        sum_r, n_r = jnp.sum(jnp.where(valid, r, 0.0)), jnp.sum(valid)
    else:
        sum_r, n_r = jnp.zeros((), jnp.float32), jnp.zeros((), jnp.int32)

    for name in ablations:
        fill = jnp.zeros_like(target) if name == "zero" else jnp.broadcast_to(site_mean, target.shape)
        abl = lambda a, fill=fill: jnp.where(keep, fill, a.astype(jnp.float32))
        out = forward_from(params, config, layer, resid, attention_mask, splice={out_site: abl})
        losses[name] = next_token_losses(out.logits, tokens)

    active = (f != 0) & keep
    sq = jnp.sum(jnp.square(target - x_hat), axis=-1) * mask       # [B, T]
    n, mean, m2 = masked_moments(target, mask)
    # Losses count predictions made where the SAE is spliced: never at BOS (nor EOS / pad),
    # where clean and spliced agree by construction and would only dilute delta loss.
    tm = (tmask & mask[:, :-1]).astype(jnp.float32)
    loss_sums = {k: jnp.sum(v * tm) for k, v in losses.items()}
    if per_position:
        pn, pmean, pm2 = masked_moments(target, mask, axis=0)
        pos = (pn, jnp.sum(sq, 0), pmean, pm2, jnp.sum(tm, 0), {k: jnp.sum(v * tm, 0) for k, v in losses.items()})
    else:
        e = jnp.zeros((0,), jnp.float32)
        pos = (e, e, jnp.zeros((0, target.shape[-1])), e, e, {k: e for k in losses})
    return BatchStats(
        n_tokens=n, sum_l0=jnp.sum(active, dtype=jnp.float32), sum_sq_err=jnp.sum(sq), target_mean=mean,
        target_m2=m2, fire_count=jnp.sum(active, axis=(0, 1), dtype=jnp.int32), n_preds=jnp.sum(tm),
        loss_sums=loss_sums, pos_n_tokens=pos[0], pos_sq_err=pos[1], pos_target_mean=pos[2],
        pos_target_m2=pos[3], pos_n_preds=pos[4], pos_loss_sums=pos[5], sum_r_l0=sum_r, n_r_l0=n_r)


@functools.partial(jax.jit, static_argnames=("config", "site"))
def fire_counts(params, sae: SAEParams, tokens, attention_mask, *, config: LMConfig, site: Site):
    """(tokens that count, [M] tokens on which each latent fired) at `site`: the firing
    frequency sample beyond the eval set, a forward that stops at the site."""
    mask = loss_mask(tokens, config, attention_mask)
    acts = forward(params, config, tokens, attention_mask, sites=(site,), compute_logits=False).acts[site]
    active = (encode(sae, acts.astype(jnp.float32)) != 0) & mask[..., None]
    return jnp.sum(mask, dtype=jnp.float32), jnp.sum(active, axis=(0, 1), dtype=jnp.int32)


@functools.partial(jax.jit, static_argnames=("config", "site"))
def site_sum(params, tokens, attention_mask, *, config: LMConfig, site: Site):
    """(count, Σ activations [d]) at `site` over positions that count: the mean-ablation pre-pass,
    a forward that stops at the site."""
    mask = loss_mask(tokens, config, attention_mask)
    acts = forward(params, config, tokens, attention_mask, sites=(site,), compute_logits=False).acts[site]
    m = mask.astype(jnp.float32)
    return jnp.sum(m), jnp.einsum("bt,btd->d", m, acts.astype(jnp.float32))
