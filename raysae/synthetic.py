"""Synthetic activations with a known sparse dictionary (for tests, the demo and benchmarks).

Rows are x = Σ_i a_i · D_i over a random sparse set of true features D_i (unit vectors in
R^d): each feature is active independently with probability `active / n_features`, with a
magnitude drawn from U(0.5, 1.5). A working SAE recovers the D_i as decoder rows; a broken
estimator or a wrong sign does not. Pure numpy, deterministic for a seed.

`DictionaryConfig` / `KnownDictionary` generalise this for benchmarks: power-law feature
frequencies, magnitude spread, correlated and hierarchical (parent → child) features and
additive noise, with batches that depend only on (seed, split, batch index).
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


# ---------------------------------------------------------------------------------------------
# A configurable known-dictionary generator (bench/quality.py, tests/test_synthetic.py).
# ---------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class DictionaryConfig:
    """A known sparse dictionary with realistic structure. Every field has a plain default.

    Row model: x = Σ_i a_i · s_i · m_i · D_i + noise, where D_i are unit vectors in R^d, a_i ∈ {0,1}
    says whether feature i fires (marginal probability p_i), m_i ~ U[magnitude_low,
    magnitude_high] per occurrence and s_i a per-feature scale (lognormal with mean 1 and
    log-std `feature_scale_spread`; all 1 when the spread is 0).

    - Frequencies: p_i ∝ (i + 1)^(−frequency_exponent), scaled so Σ p_i = mean_active (the
      expected L0 of a row); 0 gives uniform frequencies. No p_i exceeds `max_frequency`.
    - Correlated features (`correlated_fraction` of them, in pairs): the two features of a pair
      share their uniform draw with probability `correlation`, so they co-fire far more often
      than independent features would, while each keeps its marginal p_i.
    - Hierarchical features (`hierarchical_fraction` are children): a child fires only when its
      parent fires, with probability p_child / p_parent (so its marginal is still p_child);
      parents are the most frequent non-child features, children the least frequent.
    - `noise_std`: additive isotropic Gaussian noise, per coordinate.
    """

    d: int = 64
    n_features: int = 512
    mean_active: float = 8.0
    frequency_exponent: float = 0.0
    max_frequency: float = 0.5
    magnitude_low: float = 0.5
    magnitude_high: float = 2.0
    feature_scale_spread: float = 0.0
    correlated_fraction: float = 0.0
    correlation: float = 0.5
    hierarchical_fraction: float = 0.0
    noise_std: float = 0.0
    seed: int = 0

    def __post_init__(self):
        def need(ok, field, msg):
            if not ok:
                raise ValueError(f"DictionaryConfig.{field}: {msg}")
        need(self.d > 0, "d", "must be positive")
        need(self.n_features > 0, "n_features", "must be positive")
        need(0 < self.mean_active <= self.max_frequency * self.n_features, "mean_active",
             f"must be in (0, max_frequency · n_features = {self.max_frequency * self.n_features}]")
        need(self.frequency_exponent >= 0, "frequency_exponent", "must be >= 0")
        need(0 < self.max_frequency <= 1, "max_frequency", "must be in (0, 1]")
        need(0 <= self.magnitude_low <= self.magnitude_high, "magnitude_low",
             "need 0 <= magnitude_low <= magnitude_high")
        need(self.feature_scale_spread >= 0, "feature_scale_spread", "must be >= 0")
        need(0 <= self.correlated_fraction <= 1, "correlated_fraction", "must be in [0, 1]")
        need(0 <= self.correlation <= 1, "correlation", "must be in [0, 1]")
        need(0 <= self.hierarchical_fraction < 0.5, "hierarchical_fraction", "must be in [0, 0.5)")
        need(self.correlated_fraction + 2 * self.hierarchical_fraction <= 1, "correlated_fraction",
             "correlated_fraction + 2 · hierarchical_fraction must be <= 1 (disjoint roles)")
        need(self.noise_std >= 0, "noise_std", "must be >= 0")


def power_law_frequencies(n: int, total: float, exponent: float, cap: float) -> np.ndarray:
    """p_i ∝ (i+1)^−exponent with Σ p = total and p ≤ cap (capped mass goes to the rest)."""
    w = (np.arange(n, dtype=np.float64) + 1.0) ** (-exponent)
    p = np.zeros(n)
    free = np.ones(n, bool)
    for _ in range(n):
        rest = total - cap * np.count_nonzero(~free)
        p[free] = w[free] * rest / w[free].sum()
        over = free & (p > cap)
        if not over.any():
            break
        free &= ~over
        p[~free] = cap
    return p


class KnownDictionary:
    """The dictionary, frequencies and structure of a `DictionaryConfig`, and its batches.

    `batch(i, rows)` depends only on (config.seed, split, i): any process regenerates any
    batch. Splits "train" and "heldout" never share a random stream.
    """

    SPLITS = {"train": 1, "heldout": 2}

    def __init__(self, config: DictionaryConfig):
        self.config = c = config
        rng = np.random.default_rng([c.seed, 0])
        f = rng.standard_normal((c.n_features, c.d))
        self.features = (f / np.linalg.norm(f, axis=1, keepdims=True)).astype(np.float32)
        self.frequencies = power_law_frequencies(c.n_features, c.mean_active,
                                                 c.frequency_exponent, c.max_frequency)
        s = c.feature_scale_spread
        self.scales = np.exp(s * rng.standard_normal(c.n_features) - 0.5 * s * s)
        n = c.n_features
        # Roles: children are the least frequent features, their parents the most frequent
        # ones; correlated pairs come from the middle, so the three roles never overlap.
        n_child = int(round(c.hierarchical_fraction * n))
        n_corr = int(round(c.correlated_fraction * n)) // 2 * 2
        order = np.arange(n)  # frequencies decrease with the index
        self.parent = np.full(n, -1, np.int64)
        children = order[n - n_child:]
        parents = order[:n_child]
        self.parent[children] = parents[rng.permutation(n_child)]
        middle = order[n_child:n - n_child]
        corr = rng.permutation(middle)[:n_corr]
        self.partner = np.full(n, -1, np.int64)
        self.partner[corr[0::2]] = corr[1::2]
        self.partner[corr[1::2]] = corr[0::2]
        self._leader = corr[0::2]
        self._follower = corr[1::2]
        self._children = children
        self._cond = (self.frequencies[children] / self.frequencies[self.parent[children]]
                      if n_child else np.zeros(0))

    @property
    def d(self) -> int:
        return self.config.d

    @property
    def mean_magnitude(self) -> np.ndarray:
        """E[magnitude | feature fires] per feature."""
        c = self.config
        return 0.5 * (c.magnitude_low + c.magnitude_high) * self.scales

    def sample_codes(self, rows: int, rng: np.random.Generator) -> np.ndarray:
        """Sparse codes [rows, n_features] (magnitude where active, 0 elsewhere), float32."""
        c = self.config
        u = rng.random((rows, c.n_features))
        if len(self._leader):
            shared = rng.random((rows, len(self._leader))) < c.correlation
            u[:, self._follower] = np.where(shared, u[:, self._leader], u[:, self._follower])
        on = u < self.frequencies
        if len(self._children):
            # A child draws its own uniform, fires only with its parent, marginal kept.
            v = rng.random((rows, len(self._children)))
            on[:, self._children] = on[:, self.parent[self._children]] & (v < self._cond)
        mags = rng.uniform(c.magnitude_low, c.magnitude_high, (rows, c.n_features))
        return (on * (mags * self.scales)).astype(np.float32)

    def sample(self, rows: int, rng: np.random.Generator, *, return_codes: bool = False):
        codes = self.sample_codes(rows, rng)
        x = codes @ self.features
        if self.config.noise_std > 0:
            x += self.config.noise_std * rng.standard_normal(x.shape, dtype=np.float32)
        x = x.astype(np.float32)
        return (x, codes) if return_codes else x

    def batch(self, index: int, rows: int, *, split: str = "train", return_codes: bool = False):
        """Batch `index` of `split` ("train" or "heldout"): a function of (seed, split, index)."""
        rng = np.random.default_rng([self.config.seed, self.SPLITS[split], index])
        return self.sample(rows, rng, return_codes=return_codes)

    def batches(self, rows: int, *, start: int = 0, split: str = "train") -> Iterator[np.ndarray]:
        """Endless batches start, start+1, ... of `split`."""
        i = start
        while True:
            yield self.batch(i, rows, split=split)
            i += 1

    def rows(self, n: int, *, batch_rows: int = 1024, split: str = "train",
             start: int = 0) -> np.ndarray:
        """The first n rows of `split` from batch `start` on (whole batches of batch_rows)."""
        out = np.empty((n, self.config.d), np.float32)
        for k, lo in enumerate(range(0, n, batch_rows)):
            b = self.batch(start + k, batch_rows, split=split)
            out[lo:lo + batch_rows] = b[:n - lo]
        return out
