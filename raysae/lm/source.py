"""Which Gemma 2 a job runs: the one place that knows "tiny", "random:<preset>" and URLs.

- ``"tiny"``: the byte-level Gemma 2 shipped in raysae/lm/tiny/ (checksum verified);
- ``"random:<preset>"`` (``random:gemma-2-2b``, ...): that shape with seeded random weights,
  optionally cut to its first layers; text is read as UTF-8 bytes (valid ids in any Gemma
  vocabulary): the benchmark path for a 2B-shaped model without downloading one;
- anything else: a Hugging Face Gemma 2 checkpoint directory at any fsspec URL.

Shapes and the tokenizer come from config.json / tokenizer.json without loading weights.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os

from raysae import storage
from raysae.config import ConfigError
from raysae.lm.config import PRESETS, LMConfig
from raysae.lm.tokenizer import ByteTokenizer, HFTokenizer, tokenizer_from_json
from raysae.lm.weights import WeightsError, load_config

TINY = "tiny"
RANDOM = "random:"
TINY_DIR = os.path.join(os.path.dirname(__file__), "tiny")


@dataclasses.dataclass(frozen=True)
class ModelSource:
    """A model spec as written in YAML / on the command line: "tiny", "random:<preset>" or
    a checkpoint URL."""

    spec: str

    @property
    def is_tiny(self) -> bool:
        return self.spec == TINY

    @property
    def is_random(self) -> bool:
        return self.spec.startswith(RANDOM)

    @property
    def url(self) -> str | None:
        """The checkpoint directory (None for random weights)."""
        if self.is_random:
            return None
        return TINY_DIR if self.is_tiny else self.spec

    @property
    def name(self) -> str:
        return self.spec if self.is_tiny or self.is_random else self.spec.rstrip("/").split("/")[-1]

    def model_name(self) -> str:
        """The name SAELens / TransformerLens / Neuronpedia know the model by ("gemma-2-2b"):
        config.json's `_name_or_path` if it has one, else the checkpoint directory's name
        (random models: their preset's)."""
        if self.is_random:
            return self.spec[len(RANDOM):]
        try:
            hf = json.loads(storage.read_bytes(storage.join(self.url, "config.json")))
        except (OSError, ValueError):
            hf = {}
        named = hf.get("_name_or_path") if isinstance(hf, dict) else None
        if isinstance(named, str) and named.strip("/"):
            return named.rstrip("/").split("/")[-1]
        return self.name

    def absolute(self) -> "ModelSource":
        """The same model with a relative local checkpoint path made absolute."""
        if self.is_tiny or self.is_random:
            return self
        return ModelSource(storage.absolute(self.spec))

    def config(self, layers: int | None = None) -> LMConfig:
        """The model's shapes and special ids (config.json only; no weights).

        Args:
            layers: random models only: keep the first `layers` blocks.
        Raises:
            ConfigError naming the model when it cannot be found or `layers` does not apply.
        """
        if self.is_random:
            name = self.spec[len(RANDOM):]
            if name not in PRESETS:
                raise ConfigError(f"model: {self.spec!r}: unknown preset {name!r} "
                                  f"(one of {sorted(PRESETS)})")
            cfg = PRESETS[name]
            if layers is not None:
                if layers > cfg.n_layers:
                    raise ConfigError(f"model_layers: {layers} > {name}'s {cfg.n_layers} layers")
                cfg = dataclasses.replace(cfg, n_layers=layers)
            return cfg
        if layers is not None:
            raise ConfigError("model_layers: only applies to random models ('random:<preset>')")
        if not storage.exists(storage.join(self.url, "config.json")):
            raise ConfigError(f"model: {self.spec!r}: no config.json at {self.url} (expected "
                              f"'{TINY}', a Gemma 2 checkpoint dir or '{RANDOM}<preset>')")
        return load_config(self.url)

    def tokenizer(self, config: LMConfig | None = None):
        """The model's tokenizer (BOS-first `encode`), or None if it has none."""
        if self.is_random:
            return ByteTokenizer()
        hf = json.loads(storage.read_bytes(storage.join(self.url, "config.json")))
        if "raysae_tokenizer" in hf:
            return tokenizer_from_json(hf["raysae_tokenizer"])
        tj = storage.join(self.url, "tokenizer.json")
        if storage.exists(tj):
            config = config or LMConfig.from_hf(hf, where=storage.join(self.url, "config.json"))
            return HFTokenizer.from_url(tj, config.bos_id, config.eos_id, config.pad_id)
        return None

    def load(self, dtype: str = "float32", *, seed: int = 0, layers: int | None = None):
        """The model itself, ready to run (a `raysae.lm.LanguageModel`).

        Args:
            dtype: weight dtype ("float32", "bfloat16", "float16").
            seed, layers: random models only (weights seed; first `layers` blocks).
        """
        import jax

        from raysae.lm.api import DTYPES, LanguageModel
        from raysae.lm.model import init_params
        from raysae.lm.weights import load_params

        if dtype not in DTYPES:
            raise ConfigError(f"dtype: {dtype!r} is not one of {sorted(DTYPES)}")
        config = self.config(layers)
        if self.is_random:
            params = init_params(jax.random.PRNGKey(seed), config, DTYPES[dtype])
        else:
            if self.is_tiny:
                _verify_tiny()
            params = load_params(self.url, config, DTYPES[dtype])
        return LanguageModel(config, params, self.tokenizer(config), self.name)


def _verify_tiny() -> None:
    path = os.path.join(TINY_DIR, "model.safetensors")
    if not os.path.exists(path):
        raise WeightsError(f"{path}: the embedded tiny model is missing; "
                              "run `python -m raysae.lm.train_tiny`")
    want = open(os.path.join(TINY_DIR, "model.safetensors.sha256")).read().split()[0]
    got = hashlib.sha256(open(path, "rb").read()).hexdigest()
    if got != want:
        raise WeightsError(f"{path}: sha256 {got} does not match model.safetensors.sha256 ({want})")
