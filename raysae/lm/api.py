"""The language model as the rest of raysae uses it: load, read sites, per-token losses.

`load_lm(source)` loads any `ModelSource` ("tiny", "random:<preset>", a checkpoint URL).
`site_activations` and `token_losses` are jitted wrappers around `raysae.lm.model.forward`
(config, sites and splice are static: pass the same splice function objects to reuse a
compiled program, or `splice_params` to trace SAE params).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Iterable, Mapping

import jax
import jax.numpy as jnp

from raysae.lm.config import LMConfig
from raysae.config import ConfigError
from raysae.sites import SAESite, Site, SiteMap
from raysae.lm.model import embed, forward, forward_from, next_token_losses
from raysae.lm.source import TINY_DIR, ModelSource
from raysae.lm.tokenizer import ByteTokenizer, HFTokenizer

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


@dataclasses.dataclass(eq=False)
class LanguageModel:
    """A Gemma 2 model ready to run: config, params pytree (jnp arrays), tokenizer, name."""

    config: LMConfig
    params: Any
    tokenizer: Any
    name: str

    @property
    def dtype(self):
        return self.params["embed_tokens"].dtype


def load_lm(source: str, dtype: str = "float32", download: bool = False) -> LanguageModel:
    """The model named by `source`: "tiny", "random:<preset>", a Hub id ("google/gemma-2-2b",
    from the local Hugging Face cache; `download` fetches it if missing) or a Gemma 2
    checkpoint dir URL (`ModelSource`)."""
    return ModelSource(source, download=download).load(dtype)


def load_tokenizer(source: str, config: LMConfig | None = None):
    """The tokenizer of `source` without loading weights (None if it has none)."""
    return ModelSource(source).tokenizer(config)


def loss_mask(tokens: jax.Array, config: LMConfig, attention_mask: jax.Array | None = None) -> jax.Array:
    """Bool [B, T]: positions whose activations may enter SAE training/eval (not BOS/EOS/pad)."""
    t = jnp.asarray(tokens)
    ok = (t != config.bos_id) & (t != config.eos_id) & (t != config.pad_id)
    if attention_mask is not None:
        ok = ok & jnp.asarray(attention_mask).astype(bool)
    return ok


def target_mask(tokens: jax.Array, config: LMConfig, attention_mask: jax.Array | None = None) -> jax.Array:
    """Bool [B, T-1]: which next-token predictions count in a loss.

    Position t predicts token t+1. It counts when the target is a real token or EOS (ending a
    document is a real prediction) and not BOS or pad, and the input at t is neither pad nor EOS
    (after EOS comes padding or a new document, nothing to predict).
    """
    t = jnp.asarray(tokens)
    real = jnp.ones(t.shape, bool) if attention_mask is None else jnp.asarray(attention_mask).astype(bool)
    inp, tgt = t[:, :-1], t[:, 1:]
    ok_in = real[:, :-1] & (inp != config.pad_id) & (inp != config.eos_id)
    ok_tgt = real[:, 1:] & (tgt != config.pad_id) & (tgt != config.bos_id)
    return ok_in & ok_tgt


def _freeze(splice: Mapping | None):
    return None if not splice else tuple(sorted(splice.items(), key=lambda kv: str(kv[0])))


def _bind(splice, splice_params):
    """Static (key, fn) pairs + traced {key: params} -> {key: x -> fn(params, x)} (or fn(x))."""
    if not splice:
        return None
    if splice_params is None:
        return dict(splice)
    return {k: (functools.partial(f, splice_params[str(k)]) if str(k) in splice_params else f) for k, f in splice}


@functools.partial(jax.jit, static_argnames=("config", "sites"))
def _sites_jit(params, config, tokens, attention_mask, sites):
    return forward(params, config, tokens, attention_mask, sites=sites, compute_logits=False).acts


@functools.partial(jax.jit, static_argnames=("config", "splice"))
def _losses_jit(params, config, tokens, attention_mask, splice, splice_params=None):
    out = forward(params, config, tokens, attention_mask, splice=_bind(splice, splice_params))
    return next_token_losses(out.logits, tokens)


@functools.partial(jax.jit, static_argnames=("config", "layer", "splice"))
def _losses_from_jit(params, config, layer, resid, tokens, attention_mask, splice, splice_params=None):
    out = forward_from(params, config, layer, resid, attention_mask, splice=_bind(splice, splice_params))
    return next_token_losses(out.logits, tokens)


def _splice_args(splice, splice_params):
    splice = {(_key(k)): v for k, v in (splice or {}).items()}
    if splice_params is None:
        return splice, None
    sp = {}
    for k, v in splice_params.items():
        key = _key(k)
        if key not in splice:
            raise ValueError(f"splice_params has {k} but splice has no function for it")
        sp[str(key)] = v
    return splice, sp


_embed_jit = jax.jit(embed, static_argnums=1)


def _prep(model: LanguageModel, tokens, attention_mask):
    tokens = jnp.asarray(tokens, jnp.int32)
    if tokens.ndim != 2:
        raise ValueError(f"tokens must be int [B, T], got shape {tokens.shape}")
    if attention_mask is None:
        attention_mask = jnp.ones(tokens.shape, bool)
    return tokens, jnp.asarray(attention_mask).astype(bool)


def site_activations(model: LanguageModel, tokens, sites: Iterable, attention_mask=None) -> dict:
    """Activations at `sites` from one jitted forward that stops after the last layer needed.

    Args:
        model: the LM.
        tokens: int [B, T] token ids (BOS first).
        sites: Sites or their strings ("res:2").
        attention_mask: bool [B, T], False at padding (default: all True).
    Returns:
        {Site: [B, T, site_dim]} in the model's dtype, a `SiteMap`: ``acts["res:2"]`` works too.
    """
    sites = tuple(sorted({Site.parse(s).check(model.config.n_layers) for s in sites}))
    tokens, attention_mask = _prep(model, tokens, attention_mask)
    return SiteMap(_sites_jit(model.params, model.config, tokens, attention_mask, sites))


def token_losses(model: LanguageModel, tokens, attention_mask=None, splice: Mapping | None = None,
                 splice_params: Mapping | None = None):
    """Next-token cross-entropy, optionally with functions spliced in at sites.

    Returns:
        (losses [B, T-1] float32, mask [B, T-1] bool of the predictions that count, see
        `target_mask`).

    `splice` maps Site -> fn(acts [B, T, d]) -> replacement, e.g. an SAE's reconstruction; the
    key (Site(L, "mlp_in"), Site(L, "mlp")) splices a transcoder in place of layer L's MLP.
    With `splice_params` ({same key: pytree}) the function is called as fn(params, acts) and the
    params are traced, so evaluating many SAEs with one function object compiles once.
    """
    tokens, attention_mask = _prep(model, tokens, attention_mask)
    splice, sp = _splice_args(splice, splice_params)
    losses = _losses_jit(model.params, model.config, tokens, attention_mask, _freeze(splice), sp)
    return losses, target_mask(tokens, model.config, attention_mask)


def token_losses_from(model: LanguageModel, layer: int, resid, tokens, attention_mask=None,
                      splice: Mapping | None = None, splice_params: Mapping | None = None):
    """Like `token_losses` but resuming at block `layer` from `resid` (the `res` site of layer-1,
    or `embed_tokens(model, tokens)` for layer 0): delta loss for one site costs one partial forward.
    """
    tokens, attention_mask = _prep(model, tokens, attention_mask)
    splice, sp = _splice_args(splice, splice_params)
    for k in splice:
        first = k[0] if isinstance(k[0], Site) else k
        if first.layer < layer:
            raise ValueError(f"splice at {k} is before the resume layer {layer}")
    losses = _losses_from_jit(model.params, model.config, layer, resid, tokens, attention_mask, _freeze(splice), sp)
    return losses, target_mask(tokens, model.config, attention_mask)


def embed_tokens(model: LanguageModel, tokens) -> jax.Array:
    """The residual stream entering block 0 (scaled embeddings)."""
    return _embed_jit(model.params, model.config, jnp.asarray(tokens, jnp.int32))


def _key(k):
    if isinstance(k, tuple) and len(k) == 2 and not isinstance(k, Site) and not isinstance(k[0], int):
        try:
            pair = SAESite(Site.parse(k[0]), Site.parse(k[1])).check()
        except ConfigError as e:
            raise ValueError(f"splice pair {k}: {e} (a transcoder)") from None
        if not pair.is_transcoder:
            raise ValueError(f"splice pair {k}: only a transcoder (mlp_in:L, mlp:L) is a pair")
        return tuple(pair)
    return Site.parse(k)


def encode_batch(model: LanguageModel, texts: Iterable[str], length: int):
    """Tokenize (BOS first) and right-pad texts to [B, length]; returns (tokens, attention_mask)."""
    from raysae.lm.tokenizer import pad_batch

    if model.tokenizer is None:
        raise ValueError(f"model {model.name!r} has no tokenizer")
    return pad_batch([model.tokenizer.encode(t) for t in texts], model.config.pad_id, length)


__all__ = ["LanguageModel", "load_lm", "load_tokenizer", "DTYPES", "loss_mask", "target_mask", "site_activations", "token_losses",
           "token_losses_from", "embed_tokens", "encode_batch", "ByteTokenizer", "HFTokenizer", "TINY_DIR"]
