"""Before any trial: check a sweep against the outside world, then get its activation caches.

`validate(config)` runs without Ray and fails with one ConfigError line naming the field:
the model exists (and has the sites), an existing cache is there for every site and was
made for it, the caching job's settings are valid. `prepare_data(config)` returns
{site: manifest URL}, running the (idempotent) caching job first for text sweeps: a cache
whose manifest matches the job is reused, so a second sweep or `--resume` costs nothing.
"""

from __future__ import annotations


from raysae import storage
from raysae.activations.config import CacheConfig
from raysae.config import ConfigError
from raysae.data.shards import Manifest, ShardError
from raysae.lm.source import ModelSource
from raysae.sites import SAESite
from raysae.sweep.spec import SweepConfig

CONFIG_NAME = "sweep.yaml"  # written when a sweep starts: the mark that storage holds it


def sweep_exists(config: SweepConfig) -> bool:
    """Whether the sweep's storage already holds this sweep (so it can be resumed)."""
    return storage.exists(storage.join(config.sweep_url, CONFIG_NAME))


def manifest_url(config: SweepConfig, site: SAESite | str) -> str:
    """Where `site`'s cache is (or will be) for this sweep."""
    site = SAESite.parse(site)
    if config.data.manifest is not None:
        return config.data.manifest.replace("{site}", site.slug)
    return cache_config(config).site_url(site)  # the caching job's layout


def cache_root(config: SweepConfig) -> str:
    return config.data.cache_url or storage.join(config.sweep_url, "cache")


def cache_config(config: SweepConfig) -> CacheConfig:
    """The caching job of a text sweep: `data.cache` settings plus the sweep's text, sites, model."""
    return CacheConfig.build(config.data.cache, inputs=[config.data.text or ""],
                             output=cache_root(config), sites=list(config.sites),
                             model=config.model)


PROBE_TIMEOUT_S = 30.0  # for storage to accept a probe write at --check
MAX_STATE_BYTES = 64 * 2**40  # an SAE's params + Adam state beyond this fits no TPU pod


def _check_widths(config: SweepConfig, d_in: int, d_out: int) -> None:
    for i, w in enumerate(config.widths):
        state = 3 * 4 * (w * (d_in + d_out) + 2 * w + d_out)  # fp32 params, Adam mu and nu
        if state > MAX_STATE_BYTES:
            raise ConfigError(f"widths[{i}]: {w} latents at d={d_in} need {state / 2**40:,.0f} TiB "
                              f"of parameters and optimiser state (more than "
                              f"{MAX_STATE_BYTES // 2**40} TiB)")


def check_writable(url: str, field: str, timeout_s: float = PROBE_TIMEOUT_S) -> None:
    """ConfigError naming `field` unless storage takes a probe write under `url` in `timeout_s`."""
    reason = storage.unwritable_reason(url, timeout_s)
    if reason is not None:
        raise ConfigError(f"{field}: {url} {reason}")


def validate(config: SweepConfig) -> None:
    """Checks that need storage or the model; raises ConfigError naming the field."""
    # Trials and Ray Data tasks run in other processes, which cannot see a process-local
    # memory:// filesystem.
    for field, url in (("storage", config.storage), ("data.manifest", config.data.manifest),
                       ("data.cache_url", config.data.cache_url)):
        if url is not None and url.startswith("memory://"):
            raise ConfigError(f"{field}: {url} is process-local (memory://); trials run in other "
                              "processes: use a local path or shared storage (gs://, s3://)")
    check_writable(config.sweep_url, "storage")
    if config.data.text is not None:
        check_writable(cache_root(config), "data.cache_url")
    source = ModelSource(config.model)
    needs_lm = config.data.text is not None or config.final_eval.text is not None
    lm = source.config(config.data.cache.model_layers) if (needs_lm or source.is_tiny) else None
    for i, site in enumerate(config.sae_sites):
        if lm is not None and not 0 <= site.layer < lm.n_layers:
            raise ConfigError(f"sites[{i}]: {site} is outside model {config.model!r}'s layers "
                              f"0..{lm.n_layers - 1}")
        if lm is not None:
            _check_widths(config, lm.site_dim(site.input.kind), lm.site_dim(site.target.kind))
    if config.resources.multi_process and config.stream.lag_policy == "skip":
        raise ConfigError("stream.lag_policy: 'skip' would let the processes of a multi-host "
                          "trial skip differently and train on different batches; use 'loop'")
    if config.data.manifest is None:
        from raysae.activations.sources import InputError, resolve_inputs

        job = cache_config(config)  # the job's own checks (e.g. model_layers needs a random model)
        try:
            resolve_inputs(job)
        except InputError as e:
            raise ConfigError(f"data.text: {e}") from None
        return
    if len(config.sites) > 1 and "{site}" not in config.data.manifest:
        raise ConfigError("data.manifest: several sites need '{site}' in the URL "
                          "(e.g. gs://bucket/acts/{site})")
    for site in config.sae_sites:
        url = manifest_url(config, site)
        try:
            m = Manifest.load(url)
        except ShardError as e:
            raise ConfigError(f"data.manifest: {e}") from None
        _check_widths(config, m.d, m.d)
        if m.sae_site != site:
            raise ConfigError(f"data.manifest: the cache at {url} is for site {m.sae_site}, "
                              f"not {site}")
        if (config.train.transcoder or site.is_transcoder) != (len(m.parts) == 2):
            raise ConfigError(f"train.transcoder: site {site} needs a "
                              f"{'transcoder' if site.is_transcoder else 'plain'} cache, but the "
                              f"cache at {url} has parts {m.parts}")


def prepare_data(config: SweepConfig, say=None) -> dict[str, str]:
    """{site: manifest URL}, running the (idempotent) caching job first for text sweeps.

    Args:
        config: the sweep.
        say: called with one line per site (cache reused or made).
    """
    if config.data.text is None:
        return {s: manifest_url(config, s) for s in config.sites}
    from raysae.activations.cache import build_cache

    if say is not None:
        say(f"cache    {', '.join(config.sites)}: checking {cache_root(config)}")
    summary = build_cache(cache_config(config))
    urls = summary.manifests
    if say is not None:
        say(f"cache    {summary.line()}")
    return {s: urls[str(SAESite.parse(s))] for s in config.sites}
