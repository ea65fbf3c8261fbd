"""Gemma 2 in JAX: the language model SAEs are trained on and evaluated with (no Ray here).

`load_lm(source)` ("tiny", "random:<preset>" or a Hugging Face checkpoint URL, see
`ModelSource`) gives a `LanguageModel`; `site_activations` reads sites (`raysae.sites`),
`token_losses` / `token_losses_from` give next-token losses with SAEs spliced in. The pure
jittable core is `forward` / `forward_from`; `load_params` / `save_weights` read and write
the Hugging Face safetensors layout.
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
from raysae.lm.config import GEMMA2_2B, GEMMA2_9B, GEMMA2_27B, PRESETS, LMConfig
from raysae.lm.source import ModelSource
from raysae.sites import SITE_KINDS, SAESite, Site
from raysae.lm.model import ForwardOut, embed, forward, forward_from, init_params, next_token_losses, param_shapes
from raysae.lm.tokenizer import ByteTokenizer, HFTokenizer, pad_batch
from raysae.lm.weights import WeightsError, load_config, load_params, save_weights

__all__ = [
    "SITE_KINDS", "Site", "SAESite", "ModelSource", "LMConfig", "GEMMA2_2B", "GEMMA2_9B", "GEMMA2_27B", "PRESETS",
    "LanguageModel", "load_lm", "load_tokenizer", "DTYPES", "site_activations", "token_losses", "token_losses_from", "loss_mask",
    "target_mask", "embed_tokens", "encode_batch", "forward", "forward_from", "embed", "ForwardOut",
    "next_token_losses", "init_params", "param_shapes", "ByteTokenizer", "HFTokenizer", "pad_batch",
    "WeightsError", "load_config", "load_params", "save_weights", "TINY_DIR",
]
