"""`make demo`: train one JumpReLU SAE on synthetic activations and print its metrics.

The synthetic data has a known dictionary, so the demo can also say how many true features
the SAE found. (The sweep issue replaces this with the embedded tiny sweep.)
"""

from __future__ import annotations

import numpy as np

from raysae.synthetic import SparseDictionary
from raysae.train import TrainConfig, estimate_norm_scalar, train


def main() -> None:
    sd = SparseDictionary.random(d=32, n_features=64, active=2, seed=0)
    C = estimate_norm_scalar(sd.sample(8192, np.random.default_rng(1)))
    config = TrainConfig(width=128, steps=3000, batch_size=256, lr=2e-3, lr_warmup_steps=100,
                         sparsity_warmup_steps=750, sparsity_coefficient=3e-2, log_every=500)
    print(f"training a {config.width}-wide JumpReLU SAE on synthetic d=32 activations "
          f"(C = {C:.3f}) for {config.steps} steps")

    def show(step, row):
        print(f"  step {step:5d}  loss {row['loss']:.4f}  fvu {row['fvu']:.4f}  "
              f"l0 {row['l0']:.2f}  dead {row['dead_fraction']:.2f}  λ {row['sparsity_coefficient']:.4f}")

    result = train(config, lambda start: sd.batches(config.batch_size, seed=2, start=start),
                   norm_scalar=C, on_metrics=show)
    print(f"done in {result.seconds:.1f}s: recovered "
          f"{sd.recovered_fraction(result.params.W_dec):.0%} of the 64 true features "
          f"(max cosine > 0.9)")


if __name__ == "__main__":
    main()
