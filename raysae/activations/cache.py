"""`cache_activations`: text or tokens in, shuffled activation shards + a manifest per site out.

Everything that can fail on bad input fails before the LM runs (model, sites, inputs, a
writable output). A complete cache whose config matches is reused; a `progress.json`
journal lets an interrupted job resume with the shards it already wrote; a mismatch is an
error naming the field (`overwrite=True` starts afresh). C is estimated on the first rows of
the shuffled cache and the manifest is written last: its presence means "complete".
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import sys
import time
from typing import NamedTuple

import numpy as np

from raysae import storage
from raysae.activations import pipeline, shuffle, sources
from raysae.activations.config import DATA_FIELDS, CacheConfig
from raysae.activations.progress import Progress
from raysae.config import ConfigError, to_dict
from raysae.connect import connect
from raysae.data.normalize import estimate_norm_scalar
from raysae.data.shards import MANIFEST, Manifest, ShardError, ShardInfo, read_shard, write_shard
from raysae.lm.source import ModelSource
from raysae.sites import SAESite

log = logging.getLogger(__name__)

JOURNAL = "progress.json"


class CacheError(ValueError):
    """The destination cannot take this job (not writable, holds a different cache); names the URL."""


@dataclasses.dataclass
class CacheSummary:
    manifests: dict[str, str]          # site key -> cache URL (pass to Manifest.load / the stream)
    reused: list[str]                  # site keys whose complete cache was reused as is
    shards_written: int = 0            # shard tasks run now (each writes every missing site)
    tokens: int = 0                    # tokens fed to the LM now (BOS included, pad not)
    rows: int = 0                      # rows written now, all sites
    bytes: int = 0                     # bytes written now, all sites
    seconds: float = 0.0               # wall time of the whole call
    tokenize_s: float = 0.0            # reading + tokenizing inputs (driver wall)
    lm_s: float = 0.0                  # LM forward + device->host, summed over actors
    shuffle_s: float = 0.0             # gather + bucket shuffle, summed over actors
    write_s: float = 0.0               # encoding + atomic writes, summed over writers

    @property
    def gib(self) -> float:
        return self.bytes / 2**30

    def line(self) -> str:
        if self.shards_written == 0:
            return f"reused {len(self.reused)} complete cache(s); nothing to do ({self.seconds:.1f} s)"
        s = max(self.seconds, 1e-9)
        return (f"{self.tokens:,} tokens, {self.rows:,} rows, {self.gib:.3f} GiB in {s:.1f} s: "
                f"{self.tokens / s:,.0f} tokens/s, {self.gib / s:.3f} GiB/s "
                f"(LM {self.lm_s:.1f} s, shuffle {self.shuffle_s:.1f} s, write {self.write_s:.1f} s, "
                f"tokenize {self.tokenize_s:.1f} s)")


def inputs_digest(files: list[sources.InputFile]) -> str:
    """sha256 over the resolved input list (url, size): a changed corpus is a different cache."""
    return hashlib.sha256(json.dumps([[f.url, f.size] for f in files]).encode()).hexdigest()


def manifest_config(config: CacheConfig, key: str, digest: str) -> dict:
    """The `config` block of a site's manifest: the job, the site and the input fingerprint."""
    return {"cache": to_dict(config), "site": str(SAESite.parse(key)), "inputs_sha256": digest,
            "python": sys.version.split()[0] if sources.STDLIB in config.inputs else None}


def config_mismatch(manifest: Manifest | dict, config: CacheConfig, key: str,
                    digest: str | None = None) -> list[str]:
    """Fields on which a cache (its manifest, or a manifest `config` block) differs from `config`.

    Empty means the cache holds exactly what `config` would produce for site `key`. With
    `digest=None` the inputs are resolved (listed) to compare their fingerprint.
    """
    got = manifest.config if isinstance(manifest, Manifest) else manifest
    want = manifest_config(config, key, digest or inputs_digest(sources.resolve_inputs(config)))
    out = []
    if got.get("site") != want["site"]:
        out.append(f"site: {got.get('site')!r} != {want['site']!r}")
    have = got.get("cache", {})
    for f in DATA_FIELDS:
        if have.get(f) != want["cache"][f]:
            out.append(f"{f}: {have.get(f)!r} != {want['cache'][f]!r}")
    if got.get("inputs_sha256") != want["inputs_sha256"]:
        out.append("inputs: the input files (or their sizes) changed")
    return out


def manifest_matches(manifest: Manifest | str, config: CacheConfig, key: str) -> bool:
    """True when `manifest` (or the cache at that URL) is complete and matches `config` at `key`."""
    if isinstance(manifest, str):
        try:
            manifest = Manifest.load(manifest)
        except ShardError:
            return False
    return not config_mismatch(manifest, config, key)


def cache_activations(config: CacheConfig, overwrite: bool = False) -> dict[str, str]:
    """Make (or reuse) the cache of every site of `config`; return {site key: cache URL}."""
    return build_cache(config, overwrite).manifests


def _check_writable(url: str) -> None:
    reason = storage.unwritable_reason(url)
    if reason is not None:
        raise CacheError(f"output: {url} {reason}")


def _site_dims(config: CacheConfig, lm) -> dict[str, tuple[int, list[str]]]:
    """{key: (d, parts)}; unknown sites or layers out of range raise ConfigError naming the site."""
    out = {}
    for site in config.sae_sites:
        try:
            site.check(lm.n_layers)
        except ConfigError as e:
            raise ConfigError(f"sites: {site}: {e} (model {config.model!r} has {lm.n_layers} layers)") from None
        if site.is_transcoder:
            out[str(site)] = (lm.d_model, ["input", "target"])
        else:
            out[str(site)] = (lm.site_dim(site.input.kind), ["x"])
    return out


def _existing(config, key, url, d, digest, overwrite) -> tuple[bool, dict]:
    """(complete cache reusable?, journal {shard: ShardInfo}) for one site; raises on mismatch."""
    if storage.exists(storage.join(url, MANIFEST)):
        m = Manifest.load(url)
        problems = config_mismatch(m, config, key, digest)
        if m.d != d:
            problems.insert(0, f"d: the manifest's d={m.d} but model {config.model!r} gives d={d} at {key}")
        if not problems:
            return True, {}
        if not overwrite:
            raise CacheError(f"{url}: holds a different cache ({'; '.join(problems)}); choose "
                             "another output (a sweep: data.cache_url), or overwrite it "
                             "(raysae cache --overwrite)")
        storage.remove(url, recursive=True)
        return False, {}
    jpath = storage.join(url, JOURNAL)
    if not storage.exists(jpath):
        return False, {}
    journal = json.loads(storage.read_bytes(jpath))
    problems = config_mismatch(journal["config"], config, key, digest)
    if problems:
        if not overwrite:
            raise CacheError(f"{url}: an unfinished cache with another config is there "
                             f"({'; '.join(problems)}); pass overwrite to replace it")
        storage.remove(url, recursive=True)
        return False, {}
    return False, {int(k): ShardInfo(**v) for k, v in journal["shards"].items()}


def _still_there(url: str, info: ShardInfo) -> bool:
    fs, path = storage.fs_and_path(storage.join(url, info.name))
    return fs.exists(path) and fs.size(path) == info.bytes


def build_cache(config: CacheConfig, overwrite: bool = False) -> CacheSummary:
    """`cache_activations` with the run's numbers (`CacheSummary`)."""
    t_start = time.perf_counter()
    # Ray Data actors write shards from their own working directories: no relative paths.
    config = dataclasses.replace(
        config, output=storage.absolute(config.output),
        inputs=[i if i == sources.STDLIB else storage.absolute(i) for i in config.inputs],
        model=ModelSource(config.model).absolute().spec)
    lm = ModelSource(config.model).config(config.model_layers)
    dims = _site_dims(config, lm)
    files = sources.resolve_inputs(config)
    digest = inputs_digest(files)
    _check_writable(config.output)
    urls = {key: config.site_url(key) for key in dims}
    summary = CacheSummary(manifests=dict(urls), reused=[])
    journals: dict[str, dict[int, ShardInfo]] = {}
    for key, (d, _) in dims.items():
        done, journal = _existing(config, key, urls[key], d, digest, overwrite)
        if done:
            summary.reused.append(key)
        else:
            journals[key] = {k: i for k, i in journal.items() if _still_there(urls[key], i)}
    if not journals:
        summary.seconds = time.perf_counter() - t_start
        return summary

    t0 = time.perf_counter()
    cp = plan_cache(config, files, lm)
    tokens, plan = cp.tokens, cp.plan
    summary.tokenize_s = time.perf_counter() - t0

    todo: dict[int, list[str]] = {}
    for key, journal in journals.items():
        for k in range(plan.n_shards):
            if k not in journal:
                todo.setdefault(k, []).append(key)
    for key in journals:
        _save_journal(config, key, urls[key], digest, journals[key], plan.n_shards)

    driver_writes = config.write_from == "driver" or (
        config.write_from == "auto" and not pipeline.shared_storage(config.output))
    write_here = None
    if driver_writes:
        def write_here(k, key, rows):
            return write_shard(urls[key], k, rows, config.dtype)

    todo_tokens = sum(int((tokens[plan.sequences(k)] != lm.pad_id).sum()) for k in todo)
    bar = Progress(todo_tokens, len(todo), enabled=config.progress)
    for res in pipeline.build_shards(config, tokens, plan, dict(todo), write_here):
        for key, info in res["infos"].items():
            journals[key][res["shard"]] = info
            _save_journal(config, key, urls[key], digest, journals[key], plan.n_shards)
            summary.rows += info.rows
            summary.bytes += info.bytes
        summary.shards_written += 1
        summary.tokens += res["tokens"]
        summary.lm_s += res["lm_s"]
        summary.shuffle_s += res["shuffle_s"]
        summary.write_s += res["write_s"]
        bar.update(res["tokens"], summary.bytes)
    bar.close()

    n_tokens = int((tokens[plan.order] != lm.pad_id).sum())
    for key, journal in journals.items():
        _finish(config, key, urls[key], digest, journal, plan, dims[key], n_tokens)
    summary.seconds = time.perf_counter() - t_start
    if config.progress:
        print(summary.line(), flush=True)
    return summary


class CachePlan(NamedTuple):
    tokens: np.ndarray     # [n_seq, T] int32 sequences, in input order
    documents: np.ndarray  # [n_seq] global document id of each sequence
    mask: np.ndarray       # [n_seq, T] bool: positions that become rows
    plan: shuffle.ShardPlan


def plan_cache(config: CacheConfig, files: list | None = None, lm=None) -> CachePlan:
    """Tokenize the inputs (Ray Data tasks) and plan the shards: exactly what `build_cache` runs.

    Together with `shuffle.row_sources` this says which token every cached row came from.
    """
    import ray

    source = ModelSource(config.model)
    lm = lm or source.config(config.model_layers)
    files = files if files is not None else sources.resolve_inputs(config)
    if not ray.is_initialized():
        print(connect(), flush=True)  # which cluster the job runs on, said first
    tokens, docs = pipeline.tokenize_files(files, config, source.tokenizer(lm), lm)
    if config.max_tokens is not None:
        keep = np.cumsum((tokens != lm.pad_id).sum(1)) <= config.max_tokens
        tokens, docs = tokens[keep], docs[keep]
    mask = pipeline.row_mask(tokens, lm)
    plan = shuffle.plan_shards(mask.sum(1), config.rows_per_shard, config.seed, config.shuffle)
    if plan.n_shards == 0:
        raise sources.InputError("inputs: no token positions to cache (all sequences empty or too short)")
    return CachePlan(tokens, docs, mask, plan)


def _save_journal(config, key, url, digest, journal: dict, n_shards: int) -> None:
    data = {"config": manifest_config(config, key, digest), "n_shards": n_shards,
            "shards": {str(k): dataclasses.asdict(v) for k, v in sorted(journal.items())}}
    storage.write_bytes_atomic(storage.join(url, JOURNAL), json.dumps(data).encode())


def _finish(config, key, url, digest, journal, plan, dim, n_tokens) -> None:
    """Estimate C from the first rows of the cache and write the manifest (the "complete" mark)."""
    d, parts = dim
    site = SAESite.parse(key)
    infos = [journal[k] for k in range(plan.n_shards)]
    m = Manifest(model=config.model, site=str(site), layer=site.layer, d=d, dtype=config.dtype, parts=parts,
                 rows_per_shard=max(i.rows for i in infos), total_rows=sum(i.rows for i in infos),
                 tokens=n_tokens, shards=infos, config=manifest_config(config, key, digest))
    sample, have = [], 0
    for info in infos:
        rows = np.asarray(read_shard(url, m, info, verify=True), np.float32)[:, :d]  # input part
        sample.append(rows[: config.norm_sample_rows - have])
        have += len(sample[-1])
        if have >= config.norm_sample_rows:
            break
    m.norm_scalar = estimate_norm_scalar(np.concatenate(sample))
    m.save(url)
    storage.remove(storage.join(url, JOURNAL))
