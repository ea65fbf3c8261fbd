"""`CacheConfig`: what `raysae cache` reads, which model and sites it runs, and where it writes.

One frozen dataclass (loaded from YAML / the CLI with `raysae.config.from_dict`), validated
in `__post_init__` with errors that name the field. `DATA_FIELDS` lists the fields that
decide the cached data itself: a cache on storage is reused only when these match (see
`raysae.activations.cache.config_mismatch`); the others (batch size, workers, progress bar)
only change how fast it is made.

Sites are the strings of `raysae.lm.Site` ("res:12", "attn:3", "mlp:5", "mlp_in:5") plus
"transcoder:L", the aligned (mlp_in:L -> mlp:L) pair a transcoder is trained on.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

from raysae.config import ConfigError, check
from raysae.lm import SITE_KINDS, Site

STDLIB = "python-stdlib"  # the offline corpus: this Python's own standard-library sources
TRANSCODER = "transcoder"
FORMATS = ("auto", "text", "jsonl", "parquet", "tokens")

# Fields whose values decide the bytes of the cache (everything else is speed or display).
DATA_FIELDS = ("inputs", "format", "text_field", "max_input_bytes", "max_tokens", "model",
               "model_dtype", "model_layers", "context_length", "min_tokens", "dtype",
               "rows_per_shard", "shuffle", "seed", "norm_sample_rows")


def parse_site(text: str) -> tuple[str, int]:
    """"res:3" -> ("res", 3); "transcoder:3" -> ("transcoder", 3). Errors name the site."""
    if isinstance(text, str) and text.strip().startswith(TRANSCODER + ":"):
        layer = text.strip().split(":", 1)[1]
        if not layer.isdigit():
            raise ConfigError(f"sites: {text!r}: layer {layer!r} is not a non-negative integer")
        return TRANSCODER, int(layer)
    try:
        s = Site.parse(text)
    except ConfigError as e:
        raise ConfigError(f"sites: {e} (or 'transcoder:L')") from None
    return s.kind, s.layer


def site_key(text: str) -> str:
    """Canonical string of a site: "12:res" -> "res:12"."""
    kind, layer = parse_site(text)
    return f"{kind}:{layer}"


def site_dirname(key: str) -> str:
    """Directory of a site's cache under the output root: "res:12" -> "res_12" (no ':' in paths)."""
    kind, layer = parse_site(key)
    return f"{kind}_{layer}"


def lm_sites(key: str) -> tuple[Site, ...]:
    """The LM sites a cache site needs from the forward pass."""
    kind, layer = parse_site(key)
    if kind == TRANSCODER:
        return (Site(layer, "mlp_in"), Site(layer, "mlp"))
    return (Site(layer, kind),)


@dataclasses.dataclass(frozen=True)
class CacheConfig:
    """An activation-caching job; defaults follow Gemma Scope (1,024-token sequences, ~1e6-row buckets)."""

    inputs: list[str]                      # fsspec URLs / globs of text or token files, or "python-stdlib"
    output: str                            # root URL; each site gets <output>/<kind>_<layer>/
    sites: list[str] = dataclasses.field(default_factory=lambda: ["res:0"])
    model: str = "tiny"                    # "tiny", a Gemma 2 checkpoint dir URL, or "random:gemma-2-2b"
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
        check(isinstance(self.inputs, (list, tuple)) and len(self.inputs) > 0, "inputs",
              "give at least one input URL (or 'python-stdlib')")
        check(bool(self.output), "output", "give an output URL")
        check(len(self.sites) > 0, "sites", "give at least one site, e.g. 'res:0'")
        keys = [site_key(s) for s in self.sites]
        dup = sorted({k for k in keys if keys.count(k) > 1})
        check(not dup, "sites", f"{dup[0] if dup else ''} is listed twice")
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
        check(self.model_layers is None or self.model.startswith("random:"), "model_layers",
              "only applies to random models ('random:<preset>')")

    @property
    def site_keys(self) -> list[str]:
        return [site_key(s) for s in self.sites]


__all__ = ["CacheConfig", "DATA_FIELDS", "STDLIB", "TRANSCODER", "FORMATS", "SITE_KINDS",
           "parse_site", "site_key", "site_dirname", "lm_sites"]
