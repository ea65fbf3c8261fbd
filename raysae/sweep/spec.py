"""The sweep YAML schema: one `SweepConfig` dataclass tree, validated before any Ray work.

A sweep is the product sites × widths × λ values (or λ drawn from a distribution by a
search algorithm), one SAE per point, all trials of a site reading the same shared
activation stream. `load_sweep(url, overrides)` reads the YAML (unknown keys and bad
types are errors naming the field, via raysae.config), `validate(config)` then checks
what needs the outside world (the model's layers and width, the data's existence), so a
bad file fails with one line before a cluster is touched.

Sections (see sweeps/tiny.yaml for a commented example):
  name, storage          results land at <storage>/<name>/ (any fsspec URL, gs:// too)
  model                  "tiny" or a Hugging Face Gemma 2 checkpoint URL
  sites                  ["res:12", "mlp:3", ...] (raysae.lm.Site syntax)
  widths                 latent counts M
  sparsity               λ: a grid, or a distribution + num_samples for a search algorithm
  tokens                 training tokens per SAE (steps = tokens / train.batch_size)
  train                  raysae.train.TrainConfig recipe overrides (width/λ come from the axes)
  data                   an existing activation manifest, or text for the caching job
  stream                 raysae.stream.StreamConfig (the shared brokers)
  eval, final_eval       raysae.evals.EvalConfig and what the trial's final evaluation reads
  resources              per trial: CPUs, GPUs, TPU topology, hosts, model axis
  concurrency, failure   max concurrent trials; retries from checkpoints
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Literal

from raysae.config import ConfigError, check, load_yaml
from raysae.evals.config import EvalConfig
from raysae.stream.config import StreamConfig
from raysae.train.config import TrainConfig

DISTRIBUTIONS = ("loguniform", "uniform")


@dataclasses.dataclass(frozen=True)
class SparsitySpec:
    """λ values: `grid` (every value is a trial) or `distribution` sampled `num_samples` times."""

    grid: list[float] = dataclasses.field(default_factory=list)
    distribution: Literal["loguniform", "uniform", None] = None
    low: float | None = None
    high: float | None = None
    num_samples: int = 1              # trials drawn per (site, width) from the distribution

    def __post_init__(self):
        check(bool(self.grid) != (self.distribution is not None), "sparsity",
              "give either grid: [λ, ...] or distribution: loguniform|uniform (with low, high)")
        for i, v in enumerate(self.grid):
            check(v >= 0 and math.isfinite(v), f"sparsity.grid[{i}]", f"λ must be >= 0, got {v}")
        if self.distribution is not None:
            check(self.low is not None and self.high is not None, "sparsity.low",
                  "a distribution needs low and high")
            check(self.low > 0 if self.distribution == "loguniform" else self.low >= 0,
                  "sparsity.low", f"must be {'> 0' if self.distribution == 'loguniform' else '>= 0'}"
                  f" for {self.distribution}, got {self.low}")
            check(self.high > self.low, "sparsity.high", f"must be > low={self.low}, got {self.high}")
        check(self.num_samples >= 1, "sparsity.num_samples", f"must be >= 1, got {self.num_samples}")


@dataclasses.dataclass(frozen=True)
class DataSpec:
    """Where activations come from: an existing cache, or text the caching job turns into one.

    `manifest`: a cache URL; with several sites put ``{site}`` in it (``gs://b/acts/{site}``;
    the site's ":" becomes "_"). `text`: a text source for the caching job (e.g. the offline
    ``python-stdlib`` corpus, or a URL); its caches go to `cache_url` (default
    <storage>/<name>/cache/{site}) and are reused when they exist and match. `cache`: extra
    settings for the caching job (raysae.activations), checked by that job's own config.
    """

    manifest: str | None = None
    text: str | None = None
    cache_url: str | None = None
    tokens: int = 1_000_000           # tokens to cache when caching from text
    cache: dict[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        check(self.manifest is not None or self.text is not None, "data",
              "give data.manifest (an activation cache URL) or data.text (a text source to cache)")
        check(self.manifest is None or self.text is None, "data.manifest",
              "give data.manifest or data.text, not both")
        check(self.tokens > 0, "data.tokens", f"must be positive, got {self.tokens}")


@dataclasses.dataclass(frozen=True)
class FinalEvalSpec:
    """The trial's last step: L0, FVU and delta LM loss of the folded SAE.

    With the LM available, `text` (default: data.text) gives eval.num_sequences sequences
    and delta loss is measured with the SAE spliced in. Without text (an activation-only
    sweep) L0/FVU are measured on `activation_batches` held-out batches of the cache.
    """

    enabled: bool = True
    text: str | None = None
    activation_batches: int = 4
    formats: list[Literal["npz", "saelens"]] = dataclasses.field(
        default_factory=lambda: ["npz", "saelens"])

    def __post_init__(self):
        check(self.activation_batches >= 1, "final_eval.activation_batches",
              f"must be >= 1, got {self.activation_batches}")


@dataclasses.dataclass(frozen=True)
class ResourcesSpec:
    """What one trial gets. `hosts` > 1, or several GPUs, or a TPU topology: the trial runs
    as a Ray Train JaxTrainer job (raysae/sweep/jax_trainer.py) with `hosts` workers."""

    cpus: float = 1.0
    gpus: float = 0.0
    tpu_topology: str | None = None         # e.g. "4x4" (v5e/v6e) or "2x2x2" (v4/v5p)
    tpu_accelerator: str | None = None      # e.g. "TPU-V6E"
    hosts: int = 1
    model_axis: int = 1                     # devices the latent axis is split over (Megatron)

    def __post_init__(self):
        check(self.cpus > 0, "resources.cpus", f"must be > 0, got {self.cpus}")
        check(self.gpus >= 0, "resources.gpus", f"must be >= 0, got {self.gpus}")
        check(self.hosts >= 1, "resources.hosts", f"must be >= 1, got {self.hosts}")
        check(self.model_axis >= 1, "resources.model_axis", f"must be >= 1, got {self.model_axis}")
        check((self.tpu_topology is None) == (self.tpu_accelerator is None), "resources.tpu_topology",
              "set tpu_topology and tpu_accelerator together")

    @property
    def distributed(self) -> bool:
        return self.hosts > 1 or self.gpus > 1 or self.tpu_topology is not None


@dataclasses.dataclass(frozen=True)
class FailureSpec:
    max_failures: int = 3          # per trial, each restart resumes from its last checkpoint
    fail_fast: bool = False        # stop the whole sweep at the first trial error

    def __post_init__(self):
        check(self.max_failures >= -1, "failure.max_failures",
              f"must be >= -1 (-1: unlimited), got {self.max_failures}")


@dataclasses.dataclass(frozen=True)
class SweepConfig:
    name: str = "sweep"
    storage: str = "runs"
    model: str = "tiny"
    sites: list[str] = dataclasses.field(default_factory=lambda: ["res:1"])
    widths: list[int] = dataclasses.field(default_factory=lambda: [16384])
    sparsity: SparsitySpec = dataclasses.field(default_factory=lambda: SparsitySpec(grid=[1e-3]))
    tokens: int | None = None      # per SAE; None: train.steps × train.batch_size
    tokens_by_width: dict[int, int] = dataclasses.field(default_factory=dict)  # per-width budgets
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)
    data: DataSpec = dataclasses.field(default_factory=lambda: DataSpec(text="python-stdlib"))
    stream: StreamConfig = dataclasses.field(default_factory=StreamConfig)
    shared_stream: bool = True     # False: each trial reads its own copy (the baseline)
    eval: EvalConfig = dataclasses.field(default_factory=EvalConfig)
    final_eval: FinalEvalSpec = dataclasses.field(default_factory=FinalEvalSpec)
    resources: ResourcesSpec = dataclasses.field(default_factory=ResourcesSpec)
    concurrency: int = 0           # max trials at once; 0: as many as resources allow
    failure: FailureSpec = dataclasses.field(default_factory=FailureSpec)
    seed: int = 0

    def __post_init__(self):
        check(bool(self.name) and "/" not in self.name and ":" not in self.name, "name",
              f"must be a non-empty name without '/' or ':', got {self.name!r}")
        check(bool(self.sites), "sites", "give at least one site, e.g. [res:12]")
        for i, s in enumerate(self.sites):
            try:
                parse_sweep_site(s)
            except (ConfigError, ValueError) as e:
                raise ConfigError(f"sites[{i}]: {e}") from None
        check(len(set(self.sites)) == len(self.sites), "sites", "has duplicates")
        check(bool(self.widths), "widths", "give at least one width")
        for i, w in enumerate(self.widths):
            check(w > 0, f"widths[{i}]", f"must be positive, got {w}")
            check(w % self.resources.model_axis == 0, f"widths[{i}]",
                  f"{w} is not divisible by resources.model_axis={self.resources.model_axis}")
        check(self.tokens is None or self.tokens >= self.train.batch_size, "tokens",
              f"must be at least one batch (train.batch_size={self.train.batch_size}), got {self.tokens}")
        check(self.stream.batch_size == self.train.batch_size, "stream.batch_size",
              f"must equal train.batch_size={self.train.batch_size}, got {self.stream.batch_size}")
        for w, t in self.tokens_by_width.items():
            check(w in self.widths, f"tokens_by_width.{w}", f"is not one of widths {self.widths}")
            check(t >= self.train.batch_size, f"tokens_by_width.{w}",
                  f"must be at least one batch (train.batch_size={self.train.batch_size}), got {t}")
        check(self.concurrency >= 0, "concurrency", f"must be >= 0, got {self.concurrency}")

    # --- derived ---------------------------------------------------------------------------
    @property
    def steps(self) -> int:
        return self.train.steps if self.tokens is None else self.tokens // self.train.batch_size

    def steps_for(self, width: int) -> int:
        """Optimiser steps for an SAE of `width` (Gemma Scope gives wider SAEs more tokens)."""
        t = self.tokens_by_width.get(int(width))
        return self.steps if t is None else t // self.train.batch_size

    @property
    def sweep_url(self) -> str:
        from raysae import storage

        return storage.join(self.storage, self.name)

    def trial_train_config(self, width: int, sparsity_coefficient: float,
                           site: str | None = None) -> TrainConfig:
        extra = {"model_parallel": self.resources.model_axis} if self.resources.model_axis > 1 else {}
        if site is not None and is_transcoder_site(site):
            extra["transcoder"] = True
        return dataclasses.replace(self.train, width=int(width), steps=self.steps_for(width),
                                   sparsity_coefficient=float(sparsity_coefficient), **extra)

    def resolved(self) -> "SweepConfig":
        """A copy with relative local paths made absolute (trials run in other directories)."""
        from raysae import storage

        def fix(url: str | None) -> str | None:
            return url if url is None or url == "python-stdlib" else storage.absolute(url)

        model = self.model if self.model == "tiny" or self.model.startswith("random:") \
            else storage.absolute(self.model)
        data = dataclasses.replace(self.data, manifest=fix(self.data.manifest),
                                   text=fix(self.data.text), cache_url=fix(self.data.cache_url))
        final_eval = dataclasses.replace(self.final_eval, text=fix(self.final_eval.text))
        return dataclasses.replace(self, storage=storage.absolute(self.storage), model=model,
                                   data=data, final_eval=final_eval)

    def num_trials(self) -> int:
        per = len(self.sparsity.grid) if self.sparsity.grid else self.sparsity.num_samples
        return len(self.sites) * len(self.widths) * per


def parse_sweep_site(site: str) -> tuple[str, int]:
    """A sweep site: an LM site ("res:12", "attn:3", "mlp:5", "mlp_in:5") or a transcoder
    "transcoder:5" (App. B: input after layer 5's pre-MLP norm, target its MLP output)."""
    from raysae.activations.config import parse_site

    return parse_site(site)


def is_transcoder_site(site: str) -> bool:
    return parse_sweep_site(site)[0] == "transcoder"


def eval_site(site: str) -> str:
    """The site string raysae.evals takes: a transcoder is the pair "mlp_in:L->mlp:L"."""
    kind, layer = parse_sweep_site(site)
    return f"mlp_in:{layer}->mlp:{layer}" if kind == "transcoder" else f"{kind}:{layer}"


def site_slug(site: str) -> str:
    """A path-safe name for a site ("res:12" -> "res_12", "transcoder:5" -> "transcoder_5")."""
    kind, layer = parse_sweep_site(site)
    return f"{kind}_{layer}"


def load_sweep(url: str, overrides: list[str] | None = None) -> SweepConfig:
    """Read a sweep YAML (any fsspec URL) with ``--set key=value`` overrides applied."""
    return load_yaml(SweepConfig, url, overrides)
