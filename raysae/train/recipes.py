"""Named training recipes: the values a TrainConfig takes for the fields it was not given.

- "gemma-scope" (the default): the paper exactly (Gemma Scope §3, DESIGN.md).
- "small-budget": measured on bench/quality.py (known dictionaries, ~6M tokens, BENCHMARKS.md)
  against SAELens at matched L0 on equal tokens. The encoder starts as the decoder's transpose
  but larger (columns of norm 0.4, decoder rows 0.025) and takes 4× the lr, the decoder (W_dec,
  b_dec) ¼ of it; decoder rows stay free (no renormalisation, no gradient projection); lr 3e-3
  without warmup, decaying linearly to 0 over the last 20% of the run; ε = 0.07 (units of x/C);
  λ constant from the first step; latents silent for steps/30 steps get Anthropic's
  pre-activation loss (0.01) pulling them back. Adam β = (0, 0.999), θ₀ = 0.001, no clipping,
  inputs ÷ C, the L0 penalty and the STEs stay the paper's.
"""

from __future__ import annotations

from typing import Any

RECIPES = ("gemma-scope", "small-budget")

# The fields a recipe decides (a TrainConfig field left at None takes its recipe's value).
FIELDS = ("lr", "lr_warmup_steps", "sparsity_warmup_steps", "sparsity_warmup_start",
          "bandwidth", "decoder_init_norm", "decoder_unit_norm", "project_decoder_grads",
          "lr_decay_steps", "dead_preact_coefficient", "dead_preact_window_steps",
          "encoder_init_norm", "encoder_lr_scale", "decoder_lr_scale")


def recipe_values(name: str, steps: int) -> dict[str, Any]:
    """Every field of `FIELDS` for recipe `name` and a run of `steps` steps.

    Raises:
        ValueError for an unknown recipe.
    """
    paper = dict(lr=7e-5, lr_warmup_steps=1000, sparsity_warmup_steps=10_000,
                 sparsity_warmup_start=0.0, bandwidth=0.001, decoder_init_norm=1.0,
                 decoder_unit_norm=True, project_decoder_grads=True, lr_decay_steps=0,
                 dead_preact_coefficient=0.0, dead_preact_window_steps=1000,
                 encoder_lr_scale=1.0, decoder_lr_scale=1.0)
    # encoder_init_norm is not set here: TrainConfig gives it the decoder's (W_enc = W_decᵀ)
    if name == "gemma-scope":
        return paper
    if name == "small-budget":
        return {**paper, **dict(
            lr=3e-3, lr_warmup_steps=0, decoder_init_norm=0.025, encoder_init_norm=0.4,
            encoder_lr_scale=4.0, decoder_lr_scale=0.25, decoder_unit_norm=False,
            project_decoder_grads=False, bandwidth=0.07, sparsity_warmup_start=1.0,
            sparsity_warmup_steps=0, lr_decay_steps=steps // 5,
            dead_preact_coefficient=0.01, dead_preact_window_steps=max(1, steps // 30))}
    raise ValueError(f"unknown recipe {name!r} (one of {', '.join(RECIPES)})")
