"""Gemma 2 in JAX: the language model SAEs are trained on and evaluated with (no Ray here).

Public API (everything else in raysae.lm is an implementation detail):

- ``Site(layer, kind)`` with kind in ``SITE_KINDS = ("attn", "mlp", "res", "mlp_in")``;
  ``Site.parse("res:12")`` and ``str(site) == "res:12"``. attn = concatenated heads (o_proj
  input), mlp = MLP output after the post-feedforward norm, res = residual after the block,
  mlp_in = after the pre-feedforward norm (transcoder input).
- ``LMConfig`` (frozen dataclass; ``site_dim(kind)``, ``is_sliding(layer)``, ``from_hf``) and
  presets ``GEMMA2_2B``, ``GEMMA2_9B``, ``GEMMA2_27B``.
- ``load_lm(source, dtype="float32") -> LanguageModel``: ``"tiny"`` (embedded byte-level model,
  loads in well under a second) or a Hugging Face Gemma 2 checkpoint dir at any fsspec URL.
  ``LanguageModel`` has ``config``, ``params``, ``tokenizer``, ``name``. ``load_tokenizer(source)``
  gives just the tokenizer (no weights); ``DTYPES`` maps dtype names to jnp dtypes.
- Tokenizers (``ByteTokenizer``, ``HFTokenizer``): ``encode(text)`` (BOS prepended),
  ``decode(ids)``, ``bos_id``, ``eos_id``, ``pad_id``, ``vocab_size``; ``pad_batch`` and
  ``encode_batch(model, texts, length)`` right-pad to [B, T] with an attention mask.
- ``site_activations(model, tokens, sites, attention_mask=None) -> {Site: [B, T, d]}``: one
  jitted forward that stops after the last layer needed.
- ``token_losses(model, tokens, attention_mask=None, splice=None) -> (losses, mask)``: [B, T-1]
  next-token cross-entropy (float32) and the bool mask of predictions that count (see
  ``target_mask``: target not BOS/pad, input not pad/EOS). ``splice`` = {Site: fn(acts)->acts};
  the key ``(Site(L, "mlp_in"), Site(L, "mlp"))`` replaces layer L's MLP by fn(mlp_in).
  ``splice_params={key: pytree}`` calls fn(params, acts) with traced params: one compile for
  many SAEs that share the function.
- ``token_losses_from(model, layer, resid, tokens, ...)``: resume at block ``layer`` from the
  residual entering it (``res:layer-1``, or ``embed_tokens(model, tokens)`` for layer 0) so delta
  loss costs one partial forward.
- ``loss_mask(tokens, config, attention_mask=None) -> bool [B, T]``: positions whose activations
  may enter SAE training/eval (False at BOS, EOS, pad).
- Pure jittable core: ``forward(params, config, tokens, attention_mask=None, *, sites=(),
  splice=None, compute_logits=True, positions=None) -> ForwardOut(logits, acts, resid)`` and
  ``forward_from(params, config, layer, resid, ...)``; ``next_token_losses(logits, tokens)``;
  ``init_params(key, config, dtype)`` for random weights of any shape.
- Checkpoints: ``load_params(url, config, dtype)``, ``load_config(url)``,
  ``save_checkpoint(url, params, config)`` (Hugging Face layout); ``CheckpointError``.
"""

from raysae.lm.api import (
    DTYPES,
    TINY_DIR,
    LanguageModel,
    embed_tokens,
    encode_batch,
    load_lm,
    load_tokenizer,
    loss_mask,
    site_activations,
    target_mask,
    token_losses,
    token_losses_from,
)
from raysae.lm.config import GEMMA2_2B, GEMMA2_9B, GEMMA2_27B, PRESETS, SITE_KINDS, LMConfig, Site
from raysae.lm.model import ForwardOut, embed, forward, forward_from, init_params, next_token_losses, param_shapes
from raysae.lm.tokenizer import ByteTokenizer, HFTokenizer, pad_batch
from raysae.lm.weights import CheckpointError, load_config, load_params, save_checkpoint

__all__ = [
    "SITE_KINDS", "Site", "LMConfig", "GEMMA2_2B", "GEMMA2_9B", "GEMMA2_27B", "PRESETS",
    "LanguageModel", "load_lm", "load_tokenizer", "DTYPES", "site_activations", "token_losses", "token_losses_from", "loss_mask",
    "target_mask", "embed_tokens", "encode_batch", "forward", "forward_from", "embed", "ForwardOut",
    "next_token_losses", "init_params", "param_shapes", "ByteTokenizer", "HFTokenizer", "pad_batch",
    "CheckpointError", "load_config", "load_params", "save_checkpoint", "TINY_DIR",
]
