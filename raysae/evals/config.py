"""EvalConfig: what an SAE evaluation computes and over how much data.

Defaults follow Gemma Scope (2,048 sequences of 1,024 tokens, BOS first); the extras cost extra
compute and can be switched off: mean ablation needs a cheap pre-pass (the site's mean), r_L0 a
backward pass from the site on. Built from YAML / CLI dicts with `raysae.config.from_dict`, so a
bad value is reported with its field name.
"""

from __future__ import annotations

import dataclasses

from raysae.config import check

ABLATIONS = ("zero", "mean")


@dataclasses.dataclass(frozen=True)
class EvalConfig:
    num_sequences: int = 2048          # the paper's eval set size
    context_length: int = 1024         # tokens per sequence, BOS included
    batch_size: int = 8                # sequences per forward; lower it for big models
    pack: bool = True                  # texts: concatenate documents (EOS-separated) into full rows
    per_position: bool = True          # reconstruction and delta loss by position (paper Fig. 3, 15)
    frequency: bool = True             # latent firing frequency histogram, dead / ultra-high latents
    frequency_sequences: int = 20_000  # sequences the frequencies are measured on (paper Fig. 5:
                                       # 20,000 x 1,024 tokens); the eval set's are among them
    ablations: tuple[str, ...] = ABLATIONS  # reference losses with the site zero-/mean-ablated
    r_l0: bool = True                  # uniformity of active latent importance (App. C.3)
    ultra_high_frequency: float = 0.1  # a latent firing on more than this fraction of tokens
    histogram_bins: int = 40           # bins of log10 firing frequency
    histogram_min_log10: float = -8.0  # left edge of the histogram (right edge is 0)
    progress: bool = True              # a progress bar on stderr while running

    def __post_init__(self):
        check(self.num_sequences >= 1, "eval.num_sequences", f"must be >= 1, got {self.num_sequences}")
        check(self.context_length >= 2, "eval.context_length",
              f"must be >= 2 (BOS plus one token to predict), got {self.context_length}")
        check(self.batch_size >= 1, "eval.batch_size", f"must be >= 1, got {self.batch_size}")
        check(self.frequency_sequences >= 1, "eval.frequency_sequences",
              f"must be >= 1, got {self.frequency_sequences}")
        for a in self.ablations:
            check(a in ABLATIONS, "eval.ablations", f"{a!r} is not one of {list(ABLATIONS)}")
        check(0.0 < self.ultra_high_frequency <= 1.0, "eval.ultra_high_frequency",
              f"must be in (0, 1], got {self.ultra_high_frequency}")
        check(self.histogram_bins >= 1, "eval.histogram_bins", f"must be >= 1, got {self.histogram_bins}")
        check(self.histogram_min_log10 < 0, "eval.histogram_min_log10",
              f"must be negative, got {self.histogram_min_log10}")
        object.__setattr__(self, "ablations", tuple(self.ablations))
