"""The activation caching job on Ray Data: text or tokens in, shuffled shards + a manifest
per site out (the shard format itself is `raysae.data`).

`raysae.activations.cache.cache_activations(CacheConfig(...)) -> {site: cache URL}` makes
every site's cache or reuses a complete one made by the same config; `build_cache` returns
the run's numbers. `raysae cache ...` (cli.py) is its command-line face. This package's
top level holds only the (Ray-free) configs, so a sweep's schema can embed them.
"""

from raysae.activations.config import CacheConfig, CacheOptions

__all__ = ["CacheConfig", "CacheOptions"]
