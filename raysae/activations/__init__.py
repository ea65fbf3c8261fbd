"""Activation caches: the shard format (`shards`) and the Ray Data job that writes it.

Public API:

- `CacheConfig` (config.py): inputs, output URL, model, sites ("res:3", "transcoder:5"),
  context length, shard/bucket size, dtype, seed, LM batch size and workers.
- `cache_activations(config, overwrite=False) -> {site key: cache URL}` (cache.py): makes
  every site's cache, or reuses a complete one made by the same config (idempotent);
  `build_cache` does the same and returns a `CacheSummary` (tokens, rows, GiB, time split).
- `manifest_matches(manifest_or_url, config, site) -> bool` and `config_mismatch(...)
  -> [differences]`: does a cache hold exactly what `config` would produce?
- `site_url(config, site)`: where a site's cache lives (``<output>/<kind>_<layer>``).
- Shard format (shards.py): `Manifest`, `ShardInfo`, `write_shard`, `read_shard`,
  `split_parts`, `complete_shards`, `ShardError`.
- Errors: `InputError` (a bad input file, named), `CacheError` (the destination),
  `raysae.config.ConfigError` (a bad field, site or model).

`raysae cache ...` (cli.py) is the command-line face of `build_cache`.
"""

from raysae.activations.shards import (Manifest, ShardError, ShardInfo, complete_shards, read_shard,
                                       split_parts, write_shard)

_LAZY = {
    "CacheConfig": "raysae.activations.config",
    "cache_activations": "raysae.activations.cache",
    "build_cache": "raysae.activations.cache",
    "CacheSummary": "raysae.activations.cache",
    "CacheError": "raysae.activations.cache",
    "manifest_matches": "raysae.activations.cache",
    "config_mismatch": "raysae.activations.cache",
    "site_url": "raysae.activations.cache",
    "InputError": "raysae.activations.sources",
}


def __getattr__(name):
    # The job modules import ray and the LM; readers of the shard format (the stream) should
    # not pay for that, so they load on first use.
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'raysae.activations' has no attribute {name!r}")


__all__ = ["Manifest", "ShardError", "ShardInfo", "complete_shards", "read_shard", "split_parts",
           "write_shard", *_LAZY]
