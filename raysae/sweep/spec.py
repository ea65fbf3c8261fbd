"""The sweep YAML schema: one `SweepConfig` dataclass tree (no Ray here).

A sweep is sites × widths × λ (a grid, or λ drawn by a search algorithm), one SAE per
point, all trials of a site reading one shared stream. With `pack: K` a trial trains K grid
λ values of one (site, width) together (`raysae.train.pack`); each is still an SAE of its own. `load_sweep(url, overrides)` reads
the YAML with errors naming the field; `raysae.sweep.prepare.validate` then checks what
needs the outside world. sweeps/tiny.yaml is a commented example of every section.
"""

from __future__ import annotations

import dataclasses
import math
import os
from typing import Literal

from raysae import storage
from raysae.activations.config import CacheOptions, STDLIB, parse_sites
from raysae.config import ConfigError, check, load_yaml
from raysae.connect import under_ray_job
from raysae.data.config import StreamConfig
from raysae.evals.config import EvalConfig
from raysae.lm.source import TINY, ModelSource
from raysae.sites import SAESite
from raysae.train.config import TrainConfig, paper_tokens

DISTRIBUTIONS = ("loguniform", "uniform")


@dataclasses.dataclass(frozen=True)
class SparsitySpec:
    """λ values: `grid` (every value is a trial) or `distribution` sampled `num_samples` times."""

    grid: list[float] = dataclasses.field(default_factory=list)
    distribution: Literal["loguniform", "uniform", None] = None
    low: float | None = None
    high: float | None = None
    num_samples: int = 1              # trials drawn per (site, width) from the distribution
    seed: int = 0                     # draws the same λ values on every run (and on --resume)

    def __post_init__(self):
        check(bool(self.grid) != (self.distribution is not None), "sparsity",
              "give either grid: [λ, ...] or distribution: loguniform|uniform (with low, high)")
        for i, v in enumerate(self.grid):
            check(v >= 0 and math.isfinite(v), f"sparsity.grid[{i}]", f"λ must be >= 0, got {v}")
            check(v not in self.grid[:i], f"sparsity.grid[{i}]", f"{v} is listed twice")
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

    `manifest`: a cache URL; with several sites put ``{site}`` in it (``gs://b/acts/{site}``,
    filled with the site's slug, e.g. res_12). `text`: a text source for the caching job (the
    offline ``python-stdlib`` corpus, or a URL / glob); its caches go to `cache_url` (default
    <storage>/<name>/cache) and are reused when they match. `cache`: the caching job's
    settings (`raysae.activations.CacheOptions`, e.g. max_tokens, context_length).
    """

    manifest: str | None = None
    text: str | None = None
    cache_url: str | None = None
    cache: CacheOptions = dataclasses.field(default_factory=CacheOptions)

    def __post_init__(self):
        check(self.manifest is not None or self.text is not None, "data",
              "give data.manifest (an activation cache URL) or data.text (a text source to cache)")
        check(self.manifest is None or self.text is None, "data.manifest",
              "give data.manifest or data.text, not both")


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
    # npz: Gemma Scope params.npz beside the trial's results; saelens: a SAELens directory;
    # gemma-scope: also the public release's layout, <sweep>/release/<site kind>/layer_L/...
    formats: list[Literal["npz", "saelens", "gemma-scope"]] = dataclasses.field(
        default_factory=lambda: ["npz", "saelens", "gemma-scope"])

    def __post_init__(self):
        check(self.activation_batches >= 1, "final_eval.activation_batches",
              f"must be >= 1, got {self.activation_batches}")


GPU_SHARE_USABLE = 0.9  # of a fractional trial's share of GPU memory, what its JAX may take


@dataclasses.dataclass(frozen=True)
class ResourcesSpec:
    """What one trial gets. Its SAE trains on a mesh over all its devices; with `hosts` > 1
    or a TPU slice the trial runs one process per host (a Ray Train JaxTrainer job)."""

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

    def jax_env(self) -> dict[str, str]:
        """Environment for a trial's JAX, set before its backend starts.

        JAX preallocates 75% of a GPU per process, so of several trials sharing a GPU
        (`gpus` < 1) all but the first would fail: each gets `gpus` x 0.9 of the memory
        (the rest is left for the CUDA contexts). Whole-GPU trials keep preallocation."""
        if 0 < self.gpus < 1 and self.tpu_topology is None:
            return {"XLA_PYTHON_CLIENT_PREALLOCATE": "true",
                    "XLA_PYTHON_CLIENT_MEM_FRACTION": f"{self.gpus * GPU_SHARE_USABLE:.3f}"}
        return {}

    @property
    def multi_process(self) -> bool:
        """One JAX process per host (a JaxTrainer job) rather than the trial's own process."""
        return self.hosts > 1 or self.tpu_topology is not None


@dataclasses.dataclass(frozen=True)
class FailureSpec:
    max_failures: int = 3          # per trial, each restart resumes from its last checkpoint
    fail_fast: bool = False        # stop the whole sweep at the first trial error

    def __post_init__(self):
        check(self.max_failures >= -1, "failure.max_failures",
              f"must be >= -1 (-1: unlimited), got {self.max_failures}")


@dataclasses.dataclass(frozen=True)
class SweepConfig:
    """A sweep: sites × widths × λ, how much to train each SAE, and where everything lives."""

    name: str = "sweep"
    storage: str = "runs"
    model: str = TINY
    model_name: str | None = None  # the HF / TransformerLens name saved SAEs record (default:
                                   # from the checkpoint, e.g. "gemma-2-2b")
    sites: list[str] = dataclasses.field(default_factory=lambda: ["res:1"])
    widths: list[int] = dataclasses.field(default_factory=lambda: [16384])
    sparsity: SparsitySpec = dataclasses.field(default_factory=lambda: SparsitySpec(grid=[1e-3]))
    tokens: int | None = None      # per SAE; None: the paper's budget for the width (Table 1)
    tokens_by_width: dict[int, int] = dataclasses.field(default_factory=dict)  # per-width budgets
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)
    data: DataSpec = dataclasses.field(default_factory=lambda: DataSpec(text=STDLIB))
    stream: StreamConfig = dataclasses.field(default_factory=StreamConfig)
    shared_stream: bool = True     # False: each trial reads its own copy (the baseline)
    eval: EvalConfig = dataclasses.field(default_factory=EvalConfig)
    final_eval: FinalEvalSpec = dataclasses.field(default_factory=FinalEvalSpec)
    resources: ResourcesSpec = dataclasses.field(default_factory=ResourcesSpec)
    concurrency: int = 0           # max trials at once; 0: as many as resources allow
    failure: FailureSpec = dataclasses.field(default_factory=FailureSpec)
    pack: int = 1                  # grid λ values of one (site, width) trained per trial, in
                                   # one vmapped step on one batch (1: one SAE per trial)

    def __post_init__(self):
        check(bool(self.name) and "/" not in self.name and ":" not in self.name, "name",
              f"must be a non-empty name without '/' or ':', got {self.name!r}")
        check(bool(self.sites), "sites", "give at least one site, e.g. [res:12]")
        parse_sites(self.sites)
        check(bool(self.widths), "widths", "give at least one width")
        for i, w in enumerate(self.widths):
            check(w > 0, f"widths[{i}]", f"must be positive, got {w}")
            check(w % self.resources.model_axis == 0, f"widths[{i}]",
                  f"{w} is not divisible by resources.model_axis={self.resources.model_axis}")
        check(self.tokens is None or self.tokens >= self.train.batch_size, "tokens",
              f"must be at least one batch (train.batch_size={self.train.batch_size}), got {self.tokens}")
        for w, t in self.tokens_by_width.items():
            check(w in self.widths, f"tokens_by_width.{w}", f"is not one of widths {self.widths}")
            check(t >= self.train.batch_size, f"tokens_by_width.{w}",
                  f"must be at least one batch (train.batch_size={self.train.batch_size}), got {t}")
        check(self.concurrency >= 0, "concurrency", f"must be >= 0, got {self.concurrency}")
        check(self.pack >= 1, "pack", f"must be >= 1, got {self.pack}")

    # --- derived ---------------------------------------------------------------------------
    def steps_for(self, width: int) -> int:
        """Optimiser steps for an SAE of `width`: `tokens_by_width`, else `tokens`, else the
        paper's budget for the width (Gemma Scope gives wider SAEs more tokens)."""
        t = self.tokens_by_width.get(int(width), self.tokens)
        if t is None:
            t = paper_tokens(int(width))
        return max(1, t // self.train.batch_size)

    @property
    def sae_sites(self) -> list[SAESite]:
        return parse_sites(self.sites)

    @property
    def sweep_url(self) -> str:
        return storage.join(self.storage, self.name)

    def trial_train_config(self, width: int, sparsity_coefficient: float,
                           site: "SAESite | str") -> TrainConfig:
        """The recipe of one trial: the sweep's `train` with the trial's point filled in."""
        extra = {"model_parallel": self.resources.model_axis} if self.resources.model_axis > 1 else {}
        if SAESite.parse(site).is_transcoder:
            extra["transcoder"] = True
        return self.train.with_(width=int(width), steps=self.steps_for(width),
                                sparsity_coefficient=float(sparsity_coefficient), **extra)

    def resolved(self, storage_base: str | None = None) -> "SweepConfig":
        """A copy with relative local paths made absolute (trials run in other directories).

        Args:
            storage_base: the directory a relative `storage` / `data.cache_url` (where results
                are written) is relative to; inputs stay relative to the cwd. Default: the cwd,
                except under `ray job submit`, whose cwd is Ray's temporary copy of the working
                dir (deleted with the job): there a relative output path is an error.
        Raises:
            ConfigError naming the field.
        """
        def fix(url: str | None) -> str | None:
            return url if url is None or url == STDLIB else storage.absolute(url)

        def output(field: str, url: str | None) -> str | None:
            if url is None or "://" in url or os.path.isabs(os.path.expanduser(url)):
                return None if url is None else storage.absolute(url)
            if storage_base is None and under_ray_job():
                raise ConfigError(
                    f"{field}: {url!r} is relative, and under `ray job submit` it would land "
                    f"in Ray's temporary copy of the working dir ({os.getcwd()}); give an "
                    f"absolute path or a URL (--set {field}=gs://...), or --storage-base DIR")
            return storage.absolute(url, storage_base)

        out = output("storage", self.storage)
        data = dataclasses.replace(self.data, manifest=fix(self.data.manifest),
                                   text=fix(self.data.text),
                                   cache_url=output("data.cache_url", self.data.cache_url))
        final_eval = dataclasses.replace(self.final_eval, text=fix(self.final_eval.text))
        return dataclasses.replace(self, storage=out,
                                   model=ModelSource(self.model).absolute().spec,
                                   data=data, final_eval=final_eval)

    def num_trials(self) -> int:
        """SAEs the sweep trains (one per point, packed or not)."""
        per = len(self.sparsity.grid) if self.sparsity.grid else self.sparsity.num_samples
        return len(self.sites) * len(self.widths) * per

    def lambda_packs(self) -> list[list[float]]:
        """The grid's λ values, `pack` at a time (the last group may be smaller); [] when λ
        comes from a distribution (its points stay one per trial)."""
        grid = list(self.sparsity.grid)
        return [grid[i:i + self.pack] for i in range(0, len(grid), self.pack)]

    def num_tune_trials(self, searcher: bool = False) -> int:
        """Tune trials the sweep runs: one per pack of grid λ values, else one per SAE."""
        if self.pack == 1 or searcher or not self.sparsity.grid:
            return self.num_trials()
        return len(self.sites) * len(self.widths) * len(self.lambda_packs())


def load_sweep(url: str, overrides: list[str] | None = None) -> SweepConfig:
    """Read a sweep YAML (any fsspec URL) with ``--set key=value`` overrides applied."""
    return load_yaml(SweepConfig, url, overrides)
