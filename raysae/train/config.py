"""`TrainConfig`: every knob of the training recipe, defaulting to the paper's value.

One dataclass, loadable from YAML (`raysae.config.from_dict`) and used unchanged by the
Python API, the CLI and the sweep. `recipe` names the values of the fields left unset
(`raysae.train.recipes`): "gemma-scope" is the paper (Adam β=(0, 0.999), eps 1e-8; lr 7e-5
with a cosine warmup 0.1η → η over 1,000 steps; λ warmed up linearly over 10,000 steps;
batch 4,096; ε 0.001; θ₀ 0.001; unit-norm decoder rows; no clipping), "small-budget" what
bench/quality.py found better for short runs. A built config holds every effective value;
`with_(...)` changes fields and re-derives the ones it was not given (steps, recipe values).
"""

from __future__ import annotations

import dataclasses
from typing import Literal

from raysae.config import check
from raysae.train.recipes import FIELDS as RECIPE_FIELDS, RECIPES, recipe_values


def paper_tokens(width: int) -> int:
    """Gemma Scope's training tokens for an SAE of `width` (Table 1): 4B up to 16.4K latents,
    8B up to 524K, 16B at 1M and wider."""
    if width <= 16_384:
        return 4_000_000_000
    return 8_000_000_000 if width < 2**20 else 16_000_000_000


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """The recipe of one SAE's training (None: the value `recipe` gives for this run)."""

    recipe: Literal["gemma-scope", "small-budget"] = "gemma-scope"
    width: int = 16384                      # M, number of latents
    sparsity_coefficient: float = 1e-3      # λ (the sweep varies it)
    steps: int | None = None                # optimiser steps; None: the width's paper budget
                                            # (`paper_tokens(width)` / batch_size)
    batch_size: int = 4096
    lr: float | None = None                 # paper: 7e-5
    lr_warmup_steps: int | None = None      # paper: 1,000
    lr_warmup_start: float = 0.1            # cosine warmup from lr_warmup_start · lr to lr
    lr_decay_steps: int | None = None       # linear decay to 0 over the last N steps (paper: 0)
    sparsity_warmup_steps: int | None = None  # paper: 10,000
    sparsity_warmup_start: float | None = None  # λ(0) = start · λ, linear to λ (paper: 0;
                                              # above 1 anneals λ down)
    adam_b1: float = 0.0
    adam_b2: float = 0.999
    adam_eps: float = 1e-8
    bandwidth: float | None = None          # ε of the rectangle kernel (paper: 0.001)
    threshold_init: float = 0.001           # θ₀
    grad_clip_norm: float | None = None     # None: no clipping (the paper); SAELens uses 1.0
    decoder_init_norm: float | None = None  # decoder row norm at init (paper: 1)
    encoder_init_norm: float | None = None  # encoder column norm at init, W_enc ∝ W_decᵀ
                                            # (paper: W_enc = W_decᵀ, so the decoder's norm)
    encoder_lr_scale: float | None = None   # W_enc's step = lr × this (paper: 1)
    decoder_lr_scale: float | None = None   # W_dec's and b_dec's step = lr × this (paper: 1)
    decoder_unit_norm: bool | None = None   # renormalise decoder rows after each update (paper)
    project_decoder_grads: bool | None = None  # drop the row-parallel gradient part (paper)
    sparsity_loss: Literal["l0", "quadratic"] = "l0"  # quadratic: Gemma Scope 2, as SAELens has it
    target_l0: float | None = None          # T of the quadratic penalty
    dead_preact_coefficient: float | None = None  # Anthropic's pre-activation loss (paper: 0)
    dead_preact_window_steps: int | None = None   # ... on latents silent for this many steps
    transcoder: bool = False                # App. B: input/target pairs, no transpose init
    compute_dtype: Literal["float32", "bfloat16"] = "float32"  # matmul dtype; params stay fp32
    # The decoder path (sae/sparse.py): "dense" (the plain matmuls), "sparse" (only the
    # latents each row uses; dense for a batch where a row has more than decoder_capacity),
    # "auto" (sparse where the cost model expects it to be faster for the shape).
    decoder: Literal["dense", "sparse", "auto"] = "dense"
    decoder_capacity: int = 256             # slots per row on the sparse path (≥ max row L0)
    seed: int = 0
    log_every: int = 100
    checkpoint_every: int = 1000
    keep_checkpoints: int = 2
    dead_window_steps: int = 1000           # a latent not fired for this many steps is dead
    # Sharded training (train/mesh.py): None lets the cost model choose the split.
    data_parallel: int | None = None        # devices the batch is split over
    model_parallel: int | None = None       # devices the latent axis M is split over (Megatron)
    # the fields derived here (not given): `with_` re-derives them
    derived: frozenset = dataclasses.field(default=frozenset(), init=False, repr=False,
                                           compare=False)

    def __post_init__(self):
        check(self.recipe in RECIPES, "recipe", f"{self.recipe!r} is not one of {list(RECIPES)}")
        check(self.width > 0, "width", f"must be positive, got {self.width}")
        check(self.batch_size > 0, "batch_size", f"must be positive, got {self.batch_size}")
        derived = {f for f in ("steps",) + RECIPE_FIELDS if getattr(self, f) is None}
        object.__setattr__(self, "derived", frozenset(derived))
        if self.steps is None:  # the effective value is what the config records
            object.__setattr__(self, "steps", max(1, paper_tokens(self.width) // self.batch_size))
        check(self.steps > 0, "steps", f"must be positive, got {self.steps}")
        for name, value in recipe_values(self.recipe, self.steps).items():
            if getattr(self, name) is None:
                object.__setattr__(self, name, value)
        if self.encoder_init_norm is None:  # the paper's transpose init: the decoder's norm
            object.__setattr__(self, "encoder_init_norm", self.decoder_init_norm)
        check(self.sparsity_coefficient >= 0, "sparsity_coefficient",
              f"must be >= 0, got {self.sparsity_coefficient}")
        check(self.steps > 0, "steps", f"must be positive, got {self.steps}")
        check(self.batch_size > 0, "batch_size", f"must be positive, got {self.batch_size}")
        check(self.lr > 0, "lr", f"must be positive, got {self.lr}")
        check(self.lr_warmup_steps >= 0, "lr_warmup_steps", "must be >= 0")
        check(0 < self.lr_warmup_start <= 1, "lr_warmup_start", "must be in (0, 1]")
        check(self.sparsity_warmup_steps >= 0, "sparsity_warmup_steps", "must be >= 0")
        check(self.sparsity_warmup_start >= 0, "sparsity_warmup_start", "must be >= 0")
        check(self.lr_decay_steps >= 0, "lr_decay_steps", "must be >= 0")
        check(self.decoder_init_norm > 0, "decoder_init_norm", "must be positive")
        check(self.encoder_init_norm > 0, "encoder_init_norm", "must be positive")
        check(self.encoder_lr_scale > 0, "encoder_lr_scale", "must be positive")
        check(self.decoder_lr_scale > 0, "decoder_lr_scale", "must be positive")
        check(self.sparsity_loss in ("l0", "quadratic"), "sparsity_loss",
              f"must be 'l0' or 'quadratic', got {self.sparsity_loss!r}")
        check(self.sparsity_loss != "quadratic" or (self.target_l0 or 0) > 0, "target_l0",
              "sparsity_loss 'quadratic' needs a positive target_l0")
        check(self.dead_preact_coefficient >= 0, "dead_preact_coefficient", "must be >= 0")
        check(self.decoder in ("dense", "sparse", "auto"), "decoder",
              f"must be 'dense', 'sparse' or 'auto', got {self.decoder!r}")
        check(self.decoder_capacity > 0, "decoder_capacity", "must be positive")
        check(self.decoder != "sparse" or self.dead_preact_coefficient == 0, "decoder",
              "'sparse' has no dead-latent pre-activation loss; set dead_preact_coefficient "
              f"to 0 (it is {self.dead_preact_coefficient}) or use decoder 'dense' or 'auto'")
        check(self.dead_preact_window_steps > 0, "dead_preact_window_steps", "must be positive")
        check(0 <= self.adam_b1 < 1, "adam_b1", f"must be in [0, 1), got {self.adam_b1}")
        check(0 <= self.adam_b2 < 1, "adam_b2", f"must be in [0, 1), got {self.adam_b2}")
        check(self.adam_eps > 0, "adam_eps", "must be positive")
        check(self.bandwidth > 0, "bandwidth", f"must be positive, got {self.bandwidth}")
        check(self.threshold_init > 0, "threshold_init", "must be positive")
        check(self.grad_clip_norm is None or self.grad_clip_norm > 0, "grad_clip_norm",
              "must be positive or null")
        check(self.log_every > 0, "log_every", "must be positive")
        check(self.checkpoint_every > 0, "checkpoint_every", "must be positive")
        check(self.keep_checkpoints > 0, "keep_checkpoints", "must be positive")
        check(self.dead_window_steps > 0, "dead_window_steps", "must be positive")
        for name in ("data_parallel", "model_parallel"):
            value = getattr(self, name)
            check(value is None or value > 0, name, f"must be positive or null, got {value}")
        check(self.data_parallel is None or self.batch_size % self.data_parallel == 0,
              "data_parallel", f"batch_size={self.batch_size} is not divisible by "
              f"data_parallel={self.data_parallel}")
        check(self.model_parallel is None or self.width % self.model_parallel == 0,
              "model_parallel", f"width={self.width} is not divisible by "
              f"model_parallel={self.model_parallel}")

    @property
    def tokens(self) -> int:
        return self.steps * self.batch_size

    def with_(self, **changes) -> "TrainConfig":
        """This config with `changes`; the fields it derived (steps from the width, the
        recipe's step-dependent values) are derived again for the new values."""
        given = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                 if f.init and f.name not in self.derived}
        return TrainConfig(**{**given, **changes})
