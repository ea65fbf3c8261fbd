"""Synthetic activations with a known sparse dictionary (for tests, the demo and benchmarks).

Rows are x = Σ_i a_i · D_i over a random sparse set of true features D_i (unit vectors in
R^d): each feature is active independently with probability `active / n_features`, with a
magnitude drawn from U(0.5, 1.5). A working SAE recovers the D_i as decoder rows; a broken
estimator or a wrong sign does not. Pure numpy, deterministic for a seed.
"""

from __future__ import annotations

import dataclasses
from typing import Iterator

import numpy as np


@dataclasses.dataclass(frozen=True)
class SparseDictionary:
    features: np.ndarray  # [n_features, d], unit rows
    active: float         # expected active features per row

    @classmethod
    def random(cls, d: int = 128, n_features: int = 1024, active: float = 10.0,
               seed: int = 0) -> "SparseDictionary":
        rng = np.random.default_rng(seed)
        f = rng.standard_normal((n_features, d))
        f /= np.linalg.norm(f, axis=1, keepdims=True)
        return cls(features=f.astype(np.float32), active=active)

    def sample(self, rows: int, rng: np.random.Generator) -> np.ndarray:
        n = self.features.shape[0]
        on = rng.random((rows, n)) < self.active / n
        mags = rng.uniform(0.5, 1.5, (rows, n)).astype(np.float32)
        return ((on * mags) @ self.features).astype(np.float32)

    def batches(self, batch_size: int, seed: int = 0, start: int = 0) -> Iterator[np.ndarray]:
        """Endless deterministic batches; batch i depends only on (seed, i)."""
        i = start
        while True:
            yield self.sample(batch_size, np.random.default_rng([seed, i]))
            i += 1

    def recovered_fraction(self, W_dec: np.ndarray, threshold: float = 0.9) -> float:
        """Share of true features whose best-matching decoder row has cosine > threshold."""
        w = np.asarray(W_dec, dtype=np.float32)
        w = w / np.maximum(np.linalg.norm(w, axis=1, keepdims=True), 1e-12)
        best = (self.features @ w.T).max(axis=1)
        return float(np.mean(best > threshold))
