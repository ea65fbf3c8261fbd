"""Which language model a cache job runs, resolved without loading weights where possible.

`CacheConfig.model` is one of:

- ``"tiny"``: the embedded byte-level Gemma 2 (`raysae.lm.load_lm("tiny")`);
- a Hugging Face Gemma 2 checkpoint dir at any fsspec URL;
- ``"random:<preset>"`` (``random:gemma-2-2b``, ...): that shape with random weights (seeded by
  `CacheConfig.seed`), optionally cut to its first `model_layers` blocks. It has no tokenizer
  of its own, so text is read as UTF-8 bytes (ids 3..258, valid in any Gemma vocabulary):
  the benchmark path for "a 2B-shaped model" without downloading one.

The driver only needs shapes and the tokenizer (`lm_config`, `load_tokenizer`); the LM actors
call `load_model`. No Ray here.
"""

from __future__ import annotations

import dataclasses
import json

from raysae.config import ConfigError
from raysae.lm import PRESETS, TINY_DIR, ByteTokenizer, HFTokenizer, LanguageModel, LMConfig, load_lm
from raysae.lm.tokenizer import tokenizer_from_json
from raysae.lm.weights import load_config
from raysae import storage

RANDOM = "random:"


def _preset(config) -> LMConfig:
    name = config.model[len(RANDOM):]
    if name not in PRESETS:
        raise ConfigError(f"model: {config.model!r}: unknown preset {name!r} (one of {sorted(PRESETS)})")
    cfg = PRESETS[name]
    if config.model_layers is not None:
        if config.model_layers > cfg.n_layers:
            raise ConfigError(f"model_layers: {config.model_layers} > {name}'s {cfg.n_layers} layers")
        cfg = dataclasses.replace(cfg, n_layers=config.model_layers)
    return cfg


def model_url(config) -> str:
    return TINY_DIR if config.model == "tiny" else config.model


def lm_config(config) -> LMConfig:
    """Shapes and special ids of the job's model (reads config.json only)."""
    if config.model.startswith(RANDOM):
        return _preset(config)
    url = model_url(config)
    if not storage.exists(storage.join(url, "config.json")):
        raise ConfigError(f"model: {config.model!r}: no config.json at {url} "
                          "(expected 'tiny', a Gemma 2 checkpoint dir or 'random:<preset>')")
    return load_config(url)


def load_tokenizer(config, lm: LMConfig):
    """The tokenizer of the job's model (BOS-first `encode`), without loading its weights."""
    if config.model.startswith(RANDOM):
        return ByteTokenizer()
    url = model_url(config)
    hf = json.loads(storage.read_bytes(storage.join(url, "config.json")))
    if "raysae_tokenizer" in hf:
        return tokenizer_from_json(hf["raysae_tokenizer"])
    tj = storage.join(url, "tokenizer.json")
    if storage.exists(tj):
        return HFTokenizer.from_url(tj, lm.bos_id, lm.eos_id, lm.pad_id)
    return None  # token inputs only


def load_model(config) -> LanguageModel:
    """The model itself (in an LM actor): weights loaded, or random ones for 'random:<preset>'."""
    if config.model.startswith(RANDOM):
        import jax

        from raysae.lm import init_params
        from raysae.lm.api import _DTYPES

        cfg = _preset(config)
        params = init_params(jax.random.PRNGKey(config.seed), cfg, _DTYPES[config.model_dtype])
        return LanguageModel(cfg, params, ByteTokenizer(), config.model)
    return load_lm(config.model, dtype=config.model_dtype)
