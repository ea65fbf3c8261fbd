"""Which Gemma 2 a job runs: the one place that knows "tiny", "random:<preset>" and URLs.

- ``"tiny"``: the byte-level Gemma 2 shipped in raysae/lm/tiny/ (checksum verified);
- ``"random:<preset>"`` (``random:gemma-2-2b``, ...): that shape with seeded random weights,
  optionally cut to its first layers; text is read as UTF-8 bytes (valid ids in any Gemma
  vocabulary): the benchmark path for a 2B-shaped model without downloading one;
- a Hugging Face Hub id (``google/gemma-2-2b``): read from the local Hugging Face cache
  (``huggingface-cli download`` puts it there; HF_HUB_CACHE / HF_HOME say where), downloaded
  only when the caller allows it and HF_HUB_OFFLINE is not set. A spec is a Hub id when it is
  ``org/name`` (one slash, no scheme, no leading ``.``, ``/`` or ``~``) and no such local path
  exists; write ``./org/name`` for a relative directory that does not exist yet;
- anything else: a Hugging Face Gemma 2 checkpoint directory at any fsspec URL.

Shapes and the tokenizer come from config.json / tokenizer.json without loading weights.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import re

from raysae import storage
from raysae.config import ConfigError
from raysae.lm.config import PRESETS, LMConfig
from raysae.lm.tokenizer import ByteTokenizer, HFTokenizer, tokenizer_from_json
from raysae.lm.weights import WeightsError, load_config

TINY = "tiny"
RANDOM = "random:"
TINY_DIR = os.path.join(os.path.dirname(__file__), "tiny")
# org/name as the Hub spells repo ids: letters, digits, "-", "_", "." (not first)
_HUB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*")
_TRUE = {"1", "true", "yes", "on"}


def is_hub_id(spec: str) -> bool:
    """Whether `spec` names a Hugging Face Hub repo ("google/gemma-2-2b"): ``org/name`` with
    no scheme and no leading ".", "/" or "~", and not an existing local path."""
    return bool(_HUB_ID.fullmatch(spec)) and not os.path.exists(spec)


def hub_cache_dir() -> str:
    """The Hugging Face cache, read from the environment now (not when huggingface_hub was
    imported): HF_HUB_CACHE, else HF_HOME/hub, else ~/.cache/huggingface/hub."""
    if os.environ.get("HF_HUB_CACHE"):
        return os.path.expanduser(os.environ["HF_HUB_CACHE"])
    home = os.environ.get("HF_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"),
        "huggingface")
    return os.path.join(os.path.expanduser(home), "hub")


def hub_offline() -> bool:
    """HF_HUB_OFFLINE set to a true value: never reach the Hub."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in _TRUE


def hub_snapshot(repo_id: str, download: bool = False) -> str:
    """The local snapshot directory of Hub repo `repo_id` (its main revision).

    Args:
        repo_id: "org/name".
        download: fetch it (config, tokenizer, safetensors) when it is not cached, unless
            HF_HUB_OFFLINE is set.
    Raises:
        ConfigError, one line naming the model and the cache looked in.
    """
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    cache = hub_cache_dir()
    try:
        return snapshot_download(repo_id, cache_dir=cache, local_files_only=True)
    except LocalEntryNotFoundError:
        pass
    if not download or hub_offline():
        why = "HF_HUB_OFFLINE is set" if hub_offline() else "downloading is off"
        raise ConfigError(f"model: {repo_id!r} is not in the Hugging Face cache {cache} nor a "
                          f"local directory ({why}; `huggingface-cli download {repo_id}` fetches it)")
    try:
        return snapshot_download(repo_id, cache_dir=cache,
                                 allow_patterns=["*.json", "*.safetensors", "tokenizer.model"])
    except Exception as e:  # noqa: BLE001 - gated, missing, no network: one line either way
        raise ConfigError(f"model: {repo_id!r}: could not download it into {cache}: "
                          f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from e


@dataclasses.dataclass(frozen=True)
class ModelSource:
    """A model spec as written in YAML / on the command line: "tiny", "random:<preset>", a
    Hub id ("google/gemma-2-2b") or a checkpoint URL.

    Args:
        spec: the spec.
        download: a Hub id not in the local cache may be downloaded (never when
            HF_HUB_OFFLINE is set).
    """

    spec: str
    download: bool = False

    @property
    def is_tiny(self) -> bool:
        return self.spec == TINY

    @property
    def is_random(self) -> bool:
        return self.spec.startswith(RANDOM)

    @property
    def is_hub(self) -> bool:
        return not self.is_tiny and not self.is_random and is_hub_id(self.spec)

    @functools.cached_property
    def url(self) -> str | None:
        """The checkpoint directory (None for random weights; a Hub id's cached snapshot)."""
        if self.is_random:
            return None
        if self.is_hub:
            return hub_snapshot(self.spec, self.download)
        return TINY_DIR if self.is_tiny else self.spec

    @property
    def name(self) -> str:
        return self.spec if self.is_tiny or self.is_random else self.spec.rstrip("/").split("/")[-1]

    def model_name(self) -> str:
        """The name SAELens / TransformerLens / Neuronpedia know the model by: a Hub id as
        written ("google/gemma-2-2b", TransformerLens' official name), else config.json's
        `_name_or_path`'s last part if it has one, else the checkpoint directory's name
        (random models: their preset's)."""
        if self.is_random:
            return self.spec[len(RANDOM):]
        if self.is_hub:
            return self.spec
        try:
            hf = json.loads(storage.read_bytes(storage.join(self.url, "config.json")))
        except (OSError, ValueError):
            hf = {}
        named = hf.get("_name_or_path") if isinstance(hf, dict) else None
        if isinstance(named, str) and named.strip("/"):
            return named.rstrip("/").split("/")[-1]
        return self.name

    def absolute(self) -> "ModelSource":
        """The same model with a relative local checkpoint path made absolute (a Hub id is
        resolved in each process's own cache)."""
        if self.is_tiny or self.is_random or self.is_hub:
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
                              f"'{TINY}', a Gemma 2 checkpoint dir, a Hub id (org/name) or "
                              f"'{RANDOM}<preset>')")
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
