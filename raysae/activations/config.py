"""`CacheConfig`: what `raysae cache` reads, which model and sites it runs, where it writes.

`CacheOptions` holds the job's settings (context length, storage dtype, bucket size, LM
batch, ...); `CacheConfig` adds what to cache (inputs, output, sites, model). A sweep embeds
`CacheOptions` as its `data.cache` section and supplies the rest itself. `DATA_FIELDS` are
the fields that decide the cached bytes: a cache on storage is reused only when they match.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

from raysae import storage
from raysae.config import ConfigError, check
from raysae.lm.source import TINY, ModelSource
from raysae.sites import SAESite

STDLIB = "python-stdlib"  # the offline corpus: this Python's own standard-library sources
FORMATS = ("auto", "text", "jsonl", "parquet", "tokens")

# Fields whose values decide the bytes of the cache (everything else is speed or display).
DATA_FIELDS = ("inputs", "format", "text_field", "max_input_bytes", "max_tokens", "model",
               "model_dtype", "model_layers", "context_length", "min_tokens", "dtype",
               "rows_per_shard", "shuffle", "seed", "norm_sample_rows")


def parse_sites(sites: list[str], field: str = "sites") -> list[SAESite]:
    """The sites of a job, each parsed and none twice; errors name the field."""
    out = []
    for i, text in enumerate(sites):
        try:
            out.append(SAESite.parse(text))
        except ConfigError as e:
            raise ConfigError(f"{field}[{i}]: {e}") from None
    dup = sorted({str(s) for s in out if out.count(s) > 1})
    check(not dup, field, f"{dup[0] if dup else ''} is listed twice")
    return out


@dataclasses.dataclass(frozen=True, kw_only=True)
class CacheOptions:
    """How a cache is made; defaults follow Gemma Scope (1,024-token sequences, ~1e6-row buckets)."""

    model_dtype: Literal["float32", "bfloat16"] = "float32"
    model_layers: int | None = None        # random models only: keep the first N blocks
    format: Literal["auto", "text", "jsonl", "parquet", "tokens"] = "auto"
    text_field: str = "text"               # jsonl field / parquet column (text or token ids)
    max_input_bytes: int | None = None     # read input files in order until this many bytes
    max_tokens: int | None = None          # keep the first sequences up to this many tokens
    context_length: int = 1024             # tokens per sequence, BOS first
    min_tokens: int = 1                    # drop document tails with fewer real tokens than this
    dtype: Literal["float32", "bfloat16"] = "float32"  # how rows are stored
    rows_per_shard: int = 1_048_576        # one shard = one shuffle bucket (paper: ~1e6 rows)
    shuffle: bool = True                   # sequences in seeded random order, rows shuffled per bucket
    seed: int = 0
    norm_sample_rows: int = 65_536         # rows (from the shuffled cache) to estimate C from
    batch_size: int = 8                    # sequences per LM forward
    workers: int = 0                       # LM actors; 0 = one per GPU/TPU, else 1
    accelerator: Literal["auto", "cpu", "gpu", "tpu"] = "auto"
    accelerators_per_worker: float = 1.0   # GPUs (or TPU chips) each LM actor holds
    tokenize_files_per_task: int = 16
    write_from: Literal["auto", "workers", "driver"] = "auto"  # auto: driver for memory://
    progress: bool = True

    def __post_init__(self):
        check(self.context_length >= 2, "context_length", f"must be >= 2, got {self.context_length}")
        check(self.min_tokens >= 1, "min_tokens", f"must be >= 1, got {self.min_tokens}")
        check(self.rows_per_shard >= self.context_length, "rows_per_shard",
              f"{self.rows_per_shard} must be >= context_length={self.context_length} "
              "(a sequence never spans two shards)")
        check(self.batch_size >= 1, "batch_size", f"must be >= 1, got {self.batch_size}")
        check(self.workers >= 0, "workers", f"must be >= 0, got {self.workers}")
        check(self.norm_sample_rows >= 1, "norm_sample_rows", "must be >= 1")
        check(self.tokenize_files_per_task >= 1, "tokenize_files_per_task", "must be >= 1")
        check(self.accelerators_per_worker > 0, "accelerators_per_worker", "must be > 0")
        for name in ("max_input_bytes", "max_tokens", "model_layers"):
            v = getattr(self, name)
            check(v is None or v >= 1, name, f"must be >= 1 (or null), got {v}")

    def options(self) -> "CacheOptions":
        """Just the settings (a CacheConfig without what to cache)."""
        return CacheOptions(**{f.name: getattr(self, f.name)
                               for f in dataclasses.fields(CacheOptions)})


@dataclasses.dataclass(frozen=True, kw_only=True)
class CacheConfig(CacheOptions):
    """An activation-caching job: what to cache (these fields) and how (`CacheOptions`)."""

    inputs: list[str]                      # fsspec URLs / globs of text or token files, or "python-stdlib"
    output: str                            # root URL; each site gets <output>/<site slug>/
    sites: list[str] = dataclasses.field(default_factory=lambda: ["res:0"])  # "res:3", "transcoder:5"
    model: str = TINY                      # "tiny", a Hub id (google/gemma-2-2b), a checkpoint dir URL, or "random:gemma-2-2b"

    def __post_init__(self):
        super().__post_init__()
        check(isinstance(self.inputs, (list, tuple)) and len(self.inputs) > 0, "inputs",
              "give at least one input URL (or 'python-stdlib')")
        check(bool(self.output), "output", "give an output URL")
        check(len(self.sites) > 0, "sites", "give at least one site, e.g. 'res:0'")
        parse_sites(self.sites)
        check(self.model_layers is None or ModelSource(self.model).is_random, "model_layers",
              "only applies to random models ('random:<preset>')")

    @classmethod
    def build(cls, options: CacheOptions, **what) -> "CacheConfig":
        """A job from settings plus inputs / output / sites / model."""
        return cls(**{f.name: getattr(options, f.name) for f in dataclasses.fields(CacheOptions)},
                   **what)

    @property
    def sae_sites(self) -> list[SAESite]:
        return parse_sites(self.sites)

    def site_url(self, site: "SAESite | str") -> str:
        """Where one site's cache lives: ``<output>/<site slug>`` ("res_12", "transcoder_5")."""
        return storage.join(self.output, SAESite.parse(site).slug)


__all__ = ["CacheOptions", "CacheConfig", "DATA_FIELDS", "STDLIB", "FORMATS", "parse_sites"]
