"""Gemma 2 forward pass in pure JAX, with named sites, splicing and resuming mid-model.

Matches Hugging Face's `Gemma2ForCausalLM` (fixtures in tests/fixtures/): scaled embeddings,
float32 RMSNorm with (1 + w), GQA with RoPE, attention soft-capped before masking, sliding
windows on even layers, GeGLU, norms after both branches, tied unembedding, final soft-cap.
Params are a plain pytree in Hugging Face orientation (Linear weights [out, in]); layers are
an unrolled list, so a forward can stop after the last site needed and splice any function
at any site. `diagonal_kv_grad=True` changes only the backward: a position's key and value
get gradient only from its own query, so one backward of Σ_t L_t gives ∂L_s/∂x_s at every
position at once (Gemma Scope App. C.3's per-token attribution, `raysae.evals.step`).
"""

from __future__ import annotations

import math
from typing import Callable, Iterable, Mapping, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from raysae.lm.config import LMConfig
from raysae.sites import Site

Params = dict
# A splice maps a site's activations [B, T, d] to replacements of the same shape. A key may also
# be the pair (Site(L, "mlp_in"), Site(L, "mlp")): then fn(mlp_in) replaces the whole MLP branch
# (mlp_in being the gain-free normalised MLP input, as Gemma Scope's transcoders read it)
# output (a transcoder spliced in place of the MLP).
SpliceFn = Callable[[jax.Array], jax.Array]

LAYER_KEYS = ("input_layernorm", "q_proj", "k_proj", "v_proj", "o_proj", "post_attention_layernorm",
              "pre_feedforward_layernorm", "gate_proj", "up_proj", "down_proj", "post_feedforward_layernorm")


class ForwardOut(NamedTuple):
    logits: jax.Array | None   # [B, T, V] float32 after the final soft-cap (None if not computed)
    acts: dict                 # {Site: [B, T, site_dim]} in the activation dtype
    resid: jax.Array           # residual stream where the forward stopped [B, T, D]


def param_shapes(config: LMConfig) -> dict:
    """Expected shape of every parameter (same nesting as the params pytree)."""
    c = config
    layer = {
        "input_layernorm": (c.d_model,), "q_proj": (c.n_heads * c.head_dim, c.d_model),
        "k_proj": (c.n_kv_heads * c.head_dim, c.d_model), "v_proj": (c.n_kv_heads * c.head_dim, c.d_model),
        "o_proj": (c.d_model, c.n_heads * c.head_dim), "post_attention_layernorm": (c.d_model,),
        "pre_feedforward_layernorm": (c.d_model,), "gate_proj": (c.d_mlp, c.d_model),
        "up_proj": (c.d_mlp, c.d_model), "down_proj": (c.d_model, c.d_mlp),
        "post_feedforward_layernorm": (c.d_model,),
    }
    return {"embed_tokens": (c.vocab_size, c.d_model), "norm": (c.d_model,),
            "layers": [dict(layer) for _ in range(c.n_layers)]}


def init_params(key: jax.Array, config: LMConfig, dtype=jnp.float32, std: float = 0.02,
                norm_std: float = 0.0) -> Params:
    """Random weights (normal(0, std) matrices; norm weights normal(0, norm_std), i.e. 1 + w ~ 1)."""
    shapes = param_shapes(config)
    leaves, treedef = jax.tree_util.tree_flatten(shapes, is_leaf=lambda x: isinstance(x, tuple))
    keys = jax.random.split(key, len(leaves))
    out = []
    for k, shape in zip(keys, leaves):
        s = norm_std if len(shape) == 1 else std
        out.append((s * jax.random.normal(k, shape, jnp.float32)).astype(dtype))
    return jax.tree_util.tree_unflatten(treedef, out)


def normalize(x: jax.Array, eps: float) -> jax.Array:
    """x / RMS(x) in float32 (RMSNorm without its gain: rows of norm ≈ √d)."""
    xf = x.astype(jnp.float32)
    return xf * jax.lax.rsqrt(jnp.mean(xf * xf, axis=-1, keepdims=True) + eps)


def rms_norm(x: jax.Array, w: jax.Array, eps: float) -> jax.Array:
    """Gemma RMSNorm: computed in float32, scaled by (1 + w), cast back to x's dtype."""
    return (normalize(x, eps) * (1.0 + w.astype(jnp.float32))).astype(x.dtype)


def _linear(x: jax.Array, w: jax.Array) -> jax.Array:
    # HF orientation: w is [out, in].
    return jnp.einsum("...i,oi->...o", x, w.astype(x.dtype))


def rope(x: jax.Array, positions: jax.Array, theta: float) -> jax.Array:
    """Rotate-half RoPE. x [B, T, H, hd]; positions [B, T]. cos/sin in float32, cast to x.dtype."""
    hd = x.shape[-1]
    inv_freq = 1.0 / (theta ** (jnp.arange(0, hd, 2, dtype=jnp.float32) / hd))
    ang = positions.astype(jnp.float32)[..., None] * inv_freq            # [B, T, hd/2]
    ang = jnp.concatenate([ang, ang], axis=-1)[:, :, None, :]            # [B, T, 1, hd]
    cos, sin = jnp.cos(ang).astype(x.dtype), jnp.sin(ang).astype(x.dtype)
    x1, x2 = x[..., : hd // 2], x[..., hd // 2:]
    return x * cos + jnp.concatenate([-x2, x1], axis=-1) * sin


# Queries are processed in blocks of this many positions: each block reads only the keys it can
# see (causal, and within the window on sliding layers), so the float32 score tile stays small
# and cache-resident instead of a [T, T] array per head (7-100x faster at T = 1,024 on CPU).
ATTN_BLOCK = 256


def _block_mask(attention_mask: jax.Array, q0: int, q1: int, k0: int, k1: int, window: int | None) -> jax.Array:
    """Boolean [B, 1, 1, q1-q0, k1-k0]: causal, within the window if given, key not padding."""
    q = jnp.arange(q0, q1)[:, None]
    k = jnp.arange(k0, k1)[None, :]
    ok = k <= q
    if window is not None:
        ok = ok & (q - k < window)  # HF: kv_idx > q_idx - sliding_window
    return ok[None, None, None] & attention_mask[:, None, None, None, k0:k1]


def _attend_block(q, k, v, mask, config: LMConfig, diag: int | None = None):
    """Grouped-query attention without repeating K/V. q [B,Tq,K,G,hd], k/v [B,Tk,K,hd].

    `diag` (for `diagonal_kv_grad`): query t's own key is key t + diag; K/V then pass gradient
    only on that diagonal, with the same forward values.
    """
    if diag is None:
        # Logits in float32 (HF eager scales after the q.k product; same order here).
        s = jnp.einsum("btkgd,bskd->bkgts", q, k, preferred_element_type=jnp.float32)
    else:
        tq, tk = q.shape[1], k.shape[1]
        kd = k[:, diag:diag + tq]
        s = jnp.einsum("btkgd,bskd->bkgts", q, jax.lax.stop_gradient(k), preferred_element_type=jnp.float32)
        # q_i . (k_i - sg(k_i)) is 0 in value but carries ∂s_ii/∂k_i = q_i; a [Tq, Tk] select, no
        # second matmul. ∂s/∂q_i stays sg(k_j) + (k_i - sg(k_i)) = k_j in value.
        c = jnp.einsum("btkgd,btkd->bkgt", q, kd - jax.lax.stop_gradient(kd), preferred_element_type=jnp.float32)
        on_diag = jnp.arange(tk)[None, :] == jnp.arange(tq)[:, None] + diag
        s = s + jnp.where(on_diag, c[..., None], 0.0)
    s = s * (config.query_pre_attn_scalar ** -0.5)
    if config.attn_softcap is not None:
        s = jnp.tanh(s / config.attn_softcap) * config.attn_softcap
    s = jnp.where(mask, s, jnp.finfo(jnp.float32).min)
    p = jax.nn.softmax(s, axis=-1).astype(v.dtype)
    if diag is None:
        return jnp.einsum("bkgts,bskd->btkgd", p, v)
    # Σ_j p_ij sg(v_j) + p_ii (v_i - sg(v_i)): the same value, ∂/∂v only from p_ii.
    vd = v[:, diag:diag + q.shape[1]]
    p_ii = jnp.diagonal(p, offset=diag, axis1=-2, axis2=-1)                     # [B, K, G, Tq]
    return (jnp.einsum("bkgts,bskd->btkgd", p, jax.lax.stop_gradient(v))
            + jnp.einsum("bkgt,btkd->btkgd", p_ii, vd - jax.lax.stop_gradient(vd)))


def attention(q, k, v, attention_mask, config: LMConfig, window: int | None, block: int | None = None,
              diagonal_kv_grad: bool = False):
    """Causal GQA over q [B,T,H,hd], k/v [B,T,K,hd] -> [B, T, H*hd], in query blocks.

    A query row whose visible keys are all padding (only possible at padding positions) gets
    an unspecified value; real positions are exact. `diagonal_kv_grad`: see the module docstring.
    """
    b, t, h, hd = q.shape
    kv = config.n_kv_heads
    q = q.reshape(b, t, kv, h // kv, hd)
    block = block or ATTN_BLOCK
    outs = []
    for q0 in range(0, t, block):
        q1 = min(q0 + block, t)
        k0 = 0 if window is None else max(0, q0 - window + 1)
        mask = _block_mask(attention_mask, q0, q1, k0, q1, window)
        outs.append(_attend_block(q[:, q0:q1], k[:, k0:q1], v[:, k0:q1], mask, config,
                                  q0 - k0 if diagonal_kv_grad else None))
    z = outs[0] if len(outs) == 1 else jnp.concatenate(outs, axis=1)
    return z.reshape(b, t, h * hd)


def embed(params: Params, config: LMConfig, tokens: jax.Array) -> jax.Array:
    """Token embeddings x sqrt(d_model), the normaliser cast to the weights' dtype first (as HF)."""
    e = params["embed_tokens"]
    x = jnp.take(e, tokens, axis=0)
    return x * jnp.asarray(math.sqrt(config.d_model), dtype=e.dtype)


def _splice(site: Site, x, splice: Mapping | None):
    if splice and site in splice:
        y = splice[site](x)
        if y.shape != x.shape:
            raise ValueError(f"splice at {site}: returned shape {y.shape}, expected {x.shape}")
        return y.astype(x.dtype)
    return x


def block(lp: dict, config: LMConfig, layer: int, x: jax.Array, positions: jax.Array,
          attention_mask: jax.Array, want: frozenset, splice: Mapping | None, acts: dict,
          diagonal_kv_grad: bool = False) -> jax.Array:
    """One decoder block; records wanted sites into `acts` and applies splices."""
    c = config
    b, t, _ = x.shape
    h = rms_norm(x, lp["input_layernorm"], c.rms_eps)
    q = _linear(h, lp["q_proj"]).reshape(b, t, c.n_heads, c.head_dim)
    k = _linear(h, lp["k_proj"]).reshape(b, t, c.n_kv_heads, c.head_dim)
    v = _linear(h, lp["v_proj"]).reshape(b, t, c.n_kv_heads, c.head_dim)
    q, k = rope(q, positions, c.rope_theta), rope(k, positions, c.rope_theta)
    z = attention(q, k, v, attention_mask, c, c.sliding_window if c.is_sliding(layer) else None,
                  diagonal_kv_grad=diagonal_kv_grad)
    site = Site(layer, "attn")
    z = _splice(site, z, splice)
    if site in want:
        acts[site] = z
    a = rms_norm(_linear(z, lp["o_proj"]), lp["post_attention_layernorm"], c.rms_eps)
    x = x + a
    site = Site(layer, "res_mid")
    x = _splice(site, x, splice)
    if site in want:
        acts[site] = x

    # mlp_in is the MLP input after the pre-MLP RMSNorm *without* its gain (App. B: the gain
    # is folded into the MLP's input matrices), so its rows have norm √d_model; the MLP
    # multiplies the gain back in. Unspliced, m_in is computed exactly as HF does.
    gain = 1.0 + lp["pre_feedforward_layernorm"].astype(jnp.float32)
    n = normalize(x, c.rms_eps)
    m_in = (n * gain).astype(x.dtype)
    site_in, site_out = Site(layer, "mlp_in"), Site(layer, "mlp")
    if site_in in want:
        acts[site_in] = n.astype(x.dtype)
    pair = (site_in, site_out)
    if splice and pair in splice:
        m = _splice(pair, n.astype(x.dtype), splice)  # a transcoder replaces the MLP branch
    else:
        if splice and site_in in splice:
            m_in = (_splice(site_in, n.astype(x.dtype), splice).astype(jnp.float32)
                    * gain).astype(x.dtype)
        g = jax.nn.gelu(_linear(m_in, lp["gate_proj"]), approximate=True)
        m = _linear(g * _linear(m_in, lp["up_proj"]), lp["down_proj"])
        m = rms_norm(m, lp["post_feedforward_layernorm"], c.rms_eps)
    m = _splice(site_out, m, splice)
    if site_out in want:
        acts[site_out] = m
    x = x + m
    site = Site(layer, "res")
    x = _splice(site, x, splice)
    if site in want:
        acts[site] = x
    return x


def unembed(params: Params, config: LMConfig, x: jax.Array) -> jax.Array:
    """Final norm, tied unembedding, final soft-cap; float32 logits [B, T, V]."""
    h = rms_norm(x, params["norm"], config.rms_eps)
    logits = jnp.einsum("btd,vd->btv", h, params["embed_tokens"].astype(h.dtype),
                        preferred_element_type=jnp.float32)
    if config.final_softcap is not None:
        logits = jnp.tanh(logits / config.final_softcap) * config.final_softcap
    return logits


def _layers_needed(config, sites, splice, compute_logits, start):
    if compute_logits:
        return config.n_layers
    layers = [s.layer for s in sites]
    return max(layers) + 1 if layers else start


def forward_from(params: Params, config: LMConfig, layer: int, resid: jax.Array,
                 attention_mask: jax.Array | None = None, *, sites: Iterable[Site] = (),
                 splice: Mapping | None = None, compute_logits: bool = True,
                 positions: jax.Array | None = None, diagonal_kv_grad: bool = False) -> ForwardOut:
    """Run blocks `layer`.. given `resid`, the residual entering block `layer` ([B, T, D]).

    `resid` for layer L is the `res` site of layer L-1 (or `embed(...)` for L = 0), so delta loss
    at a site of layer L costs one partial forward from L. Stops after the last site in `sites`
    when `compute_logits` is False. `diagonal_kv_grad` (backward only, see the module docstring)
    applies to every attention run here; a site of layer L comes after block L's attention, so
    for gradients w.r.t. a site that is exactly "every attention after the site".
    """
    sites = [Site.parse(s).check(config.n_layers) for s in sites]
    for s in sites:
        if s.layer < layer:
            raise ValueError(f"site {s} is before the resume layer {layer}")
    b, t, _ = resid.shape
    if attention_mask is None:
        attention_mask = jnp.ones((b, t), bool)
    if positions is None:
        positions = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t))
    attention_mask = attention_mask.astype(bool)
    want = frozenset(sites)
    acts: dict = {}
    x = resid
    stop = _layers_needed(config, sites, splice, compute_logits, layer)
    for i in range(layer, stop):
        x = block(params["layers"][i], config, i, x, positions, attention_mask, want, splice, acts,
                  diagonal_kv_grad)
    logits = unembed(params, config, x) if compute_logits else None
    return ForwardOut(logits, acts, x)


def forward(params: Params, config: LMConfig, tokens: jax.Array, attention_mask: jax.Array | None = None,
            *, sites: Iterable[Site] = (), splice: Mapping | None = None, compute_logits: bool = True,
            positions: jax.Array | None = None, diagonal_kv_grad: bool = False) -> ForwardOut:
    """Full forward from int32 tokens [B, T]. Pure and jittable (config/sites/splice/diagonal_kv_grad static).

    Positions default to 0..T-1 for every row (pad on the right); pass `positions` for
    left-padded batches.
    """
    x = embed(params, config, tokens)
    return forward_from(params, config, 0, x, attention_mask, sites=sites, splice=splice,
                        compute_logits=compute_logits, positions=positions, diagonal_kv_grad=diagonal_kv_grad)


def next_token_losses(logits: jax.Array, tokens: jax.Array) -> jax.Array:
    """Cross-entropy of token t+1 given logits at t: [B, T-1] float32."""
    lp = jax.nn.log_softmax(logits[:, :-1].astype(jnp.float32), axis=-1)
    return -jnp.take_along_axis(lp, tokens[:, 1:, None].astype(jnp.int32), axis=-1)[..., 0]


def count_params(params: Params) -> int:
    return int(sum(np.prod(x.shape) for x in jax.tree_util.tree_leaves(params)))
