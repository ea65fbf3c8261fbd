"""Before any trial: check a sweep against the outside world, then get its activation caches.

`validate(config)` runs without Ray and fails with one ConfigError line naming the field:
the model has a config (and the sites exist in it), an existing cache is there for every
site and was made for that site, the caching job and the multi-device launcher exist when
the sweep needs them, and the caching job's own config (`data.cache`) is valid.

`prepare_data(config)` returns {site: manifest URL}. With `data.manifest` that is the URL
(``{site}`` filled in). With `data.text` it runs the caching job
(`raysae.activations.cache.cache_activations`) once for all sites; the job is idempotent:
a cache on storage whose manifest matches the job's data-deciding fields is reused, so a
second sweep (or `--resume`) over the same text costs nothing.
"""

from __future__ import annotations

import importlib.util

from raysae import storage
from raysae.config import ConfigError, from_dict
from raysae.sweep.spec import SweepConfig, is_transcoder_site, parse_sweep_site, site_slug


def manifest_url(config: SweepConfig, site: str) -> str:
    """Where `site`'s cache is (or will be) for this sweep."""
    if config.data.manifest is not None:
        return config.data.manifest.replace("{site}", site_slug(site))
    return storage.join(cache_root(config), site_slug(site))  # the caching job's layout


def cache_root(config: SweepConfig) -> str:
    return config.data.cache_url or storage.join(config.sweep_url, "cache")


def cache_config(config: SweepConfig):
    """The caching job for a text sweep (`data.cache` holds its extra settings)."""
    from raysae.activations.config import CacheConfig

    data = {"inputs": [config.data.text], "output": cache_root(config), "sites": list(config.sites),
            "model": config.model, "max_tokens": config.data.tokens, **config.data.cache}
    for k in ("inputs", "output", "sites", "model"):
        if k in config.data.cache:
            raise ConfigError(f"data.cache.{k}: set by the sweep (data.text, data.cache_url, "
                              f"sites, model); remove it here")
    return from_dict(CacheConfig, data, "data.cache")


def _model_config(config: SweepConfig):
    from raysae.lm.api import TINY_DIR
    from raysae.lm.weights import load_config

    url = TINY_DIR if config.model == "tiny" else config.model
    if not storage.exists(storage.join(url, "config.json")):
        raise ConfigError(f"model: no Gemma 2 checkpoint at {url!r} (config.json missing); "
                          "expected 'tiny' or a Hugging Face Gemma 2 checkpoint URL")
    return load_config(url)


def validate(config: SweepConfig) -> None:
    """Checks that need storage / installed modules; raises ConfigError naming the field."""
    from raysae.activations.shards import Manifest, ShardError

    # Trials and Ray Data tasks run in other processes, which cannot see a process-local
    # memory:// filesystem.
    for field, url in (("storage", config.storage), ("data.manifest", config.data.manifest),
                       ("data.cache_url", config.data.cache_url)):
        if url is not None and url.startswith("memory://"):
            raise ConfigError(f"{field}: {url} is process-local (memory://); trials run in other "
                              "processes: use a local path or shared storage (gs://, s3://)")
    needs_lm = config.data.text is not None or config.final_eval.text is not None
    lm = _model_config(config) if (needs_lm or config.model == "tiny") else None
    for i, s in enumerate(config.sites):
        _, layer = parse_sweep_site(s)
        if lm is not None and not 0 <= layer < lm.n_layers:
            raise ConfigError(f"sites[{i}]: {s} is outside model {config.model!r}'s layers "
                              f"0..{lm.n_layers - 1}")
    if config.data.manifest is not None:
        if len(config.sites) > 1 and "{site}" not in config.data.manifest:
            raise ConfigError("data.manifest: several sites need '{site}' in the URL "
                              "(e.g. gs://bucket/acts/{site})")
        for s in config.sites:
            url = manifest_url(config, s)
            try:
                m = Manifest.load(url)
            except ShardError as e:
                raise ConfigError(f"data.manifest: {e}") from None
            cached = m.site if ":" in str(m.site) else f"{m.site}:{m.layer}"
            if parse_sweep_site(cached) != parse_sweep_site(s):
                raise ConfigError(f"data.manifest: the cache at {url} is for site "
                                  f"{cached}, not {s}")
            transcoder = config.train.transcoder or is_transcoder_site(s)
            if transcoder != (len(m.parts) == 2):
                raise ConfigError(f"train.transcoder: is {transcoder} for site {s} but the cache "
                                  f"at {url} has parts {m.parts}")
    else:
        if importlib.util.find_spec("raysae.activations.cache") is None:
            raise ConfigError("data.text: the caching job (raysae.activations.cache) is not "
                              "installed; point data.manifest at an existing cache instead")
        cache_config(config)
    if config.resources.distributed and importlib.util.find_spec("raysae.sweep.jax_trainer") is None:
        raise ConfigError("resources: multi-device trials (hosts > 1, gpus > 1 or a TPU topology) "
                          "need raysae.sweep.jax_trainer, which is not installed")


def prepare_data(config: SweepConfig) -> dict[str, str]:
    """{site: manifest URL}, running the (idempotent) caching job first for text sweeps."""
    if config.data.text is not None:
        from raysae.activations.cache import cache_activations
        from raysae.activations.config import site_key

        urls = cache_activations(cache_config(config))
        return {s: urls[site_key(s)] for s in config.sites}
    return {s: manifest_url(config, s) for s in config.sites}
