"""The known-dictionary generator (raysae.synthetic.KnownDictionary) matches its config."""

import numpy as np
import pytest

from raysae.synthetic import DictionaryConfig, KnownDictionary, power_law_frequencies

ISSUE = DictionaryConfig(d=64, n_features=512, mean_active=8, magnitude_low=0.5, magnitude_high=2.0)
REALISTIC = DictionaryConfig(d=64, n_features=512, mean_active=8, frequency_exponent=1.0,
                             max_frequency=0.5, feature_scale_spread=0.5, correlated_fraction=0.2,
                             correlation=0.6, hierarchical_fraction=0.1, noise_std=0.02, seed=3)
ROWS = 32768


def _codes(cfg, rows=ROWS, split="train"):
    kd = KnownDictionary(cfg)
    x, codes = kd.batch(0, rows, split=split, return_codes=True)
    return kd, x, codes


def test_power_law_frequencies_sum_and_cap():
    p = power_law_frequencies(100, 10.0, 1.5, 0.3)
    assert p.sum() == pytest.approx(10.0)
    assert p.max() <= 0.3 + 1e-12
    assert np.all(np.diff(p) <= 1e-12)  # non-increasing


@pytest.mark.parametrize("cfg", [ISSUE, REALISTIC], ids=["issue", "realistic"])
def test_statistics_match_config(cfg):
    kd, x, codes = _codes(cfg)
    on = codes > 0
    # mean L0 and per-feature frequencies (binomial tolerance, 5 sigma)
    assert on.sum(1).mean() == pytest.approx(cfg.mean_active, rel=0.02)
    p = kd.frequencies
    sigma = np.sqrt(p * (1 - p) / ROWS)
    assert np.all(np.abs(on.mean(0) - p) < 5 * sigma + 1e-4)
    # magnitudes: within [low, high] · scale, mean (low + high) / 2 · scale
    rel = codes / kd.scales
    assert rel[on].min() >= cfg.magnitude_low - 1e-5
    assert rel[on].max() <= cfg.magnitude_high + 1e-5
    assert rel[on].mean() == pytest.approx(0.5 * (cfg.magnitude_low + cfg.magnitude_high), rel=0.01)
    # unit-norm dictionary, rows reconstructed up to the noise
    assert np.allclose(np.linalg.norm(kd.features, axis=1), 1.0, atol=1e-5)
    resid = x - codes @ kd.features
    assert resid.std() == pytest.approx(cfg.noise_std, abs=2e-3)


def test_power_law_frequencies_follow_exponent():
    kd = KnownDictionary(REALISTIC)
    p = kd.frequencies
    free = p < REALISTIC.max_frequency  # uncapped features follow the power law exactly
    i = np.flatnonzero(free)
    slope = np.polyfit(np.log(i + 1.0), np.log(p[i]), 1)[0]
    assert slope == pytest.approx(-REALISTIC.frequency_exponent, abs=1e-6)
    assert np.std(kd.scales) > 0.2 and np.mean(kd.scales) == pytest.approx(1.0, abs=0.1)


def test_hierarchy_and_correlation():
    kd, _, codes = _codes(REALISTIC)
    on = codes > 0
    children = np.flatnonzero(kd.parent >= 0)
    assert len(children) == round(0.1 * 512)
    # a child never fires without its parent
    assert not np.any(on[:, children] & ~on[:, kd.parent[children]])
    # correlated pairs co-fire far more than independence predicts
    a = np.flatnonzero(kd.partner >= 0)
    assert len(a) == round(0.2 * 512) // 2 * 2
    b = kd.partner[a]
    both = (on[:, a] & on[:, b]).mean(0)
    indep = kd.frequencies[a] * kd.frequencies[b]
    assert np.mean(both) > 5 * np.mean(indep)


def test_batches_are_deterministic_and_splits_differ():
    kd = KnownDictionary(ISSUE)
    b3 = kd.batch(3, 64)
    assert np.array_equal(b3, KnownDictionary(ISSUE).batch(3, 64))
    it = kd.batches(64, start=2)
    next(it)
    assert np.array_equal(next(it), b3)
    assert not np.allclose(kd.batch(3, 64, split="heldout"), b3)
    assert not np.allclose(kd.batch(4, 64), b3)
    rows = kd.rows(100, batch_rows=64)
    assert np.array_equal(rows[64:100], kd.batch(1, 64)[:36])


def test_config_validation_names_field():
    with pytest.raises(ValueError, match="mean_active"):
        DictionaryConfig(n_features=10, mean_active=20)
