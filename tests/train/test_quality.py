"""Learning a known dictionary at a small budget: the paper's recipe misses a bar that the
small-budget recipe clears, and broken estimators miss it too.

Problem: 128 unit-norm features in R^32, ~4 active per row, magnitudes U[0.5, 2]
(raysae.synthetic.KnownDictionary); 256-wide SAEs, 2,000 steps × 256 rows (≈ 0.5M tokens).
Bar (held-out rows, metrics from raysae.evals.dictionary on the folded params):
L0 in [3.5, 6] (near the true 4), FVU ≤ 0.22 and ≥ 85% of true features recovered (decoder
cosine > 0.9). Measured: small-budget (λ 0.015, ε 0.07) L0 4.2, FVU 0.19, 99% recovered; the
paper's recipe (lr and warmups shortened as the other learning tests do) at λ = 0.05 lands in
the band (L0 4.2) at FVU 0.35 with 17% recovered. With the θ pseudo-derivative's sign flipped
the small-budget run still finds the directions (96%) but its thresholds overshoot (L0 2.6,
FVU 0.43); with no L0 gradient θ never rises (L0 133, 0% recovered). bench/quality.py has the full comparison with SAELens.
"""

import functools

import jax
import numpy as np
import pytest

from raysae.evals.dictionary import dictionary_metrics
from raysae.sae import model as sae_model
from raysae.sae.jumprelu import rectangle
from raysae.synthetic import DictionaryConfig, KnownDictionary
from raysae.train import TrainConfig, estimate_norm_scalar, train

KD = KnownDictionary(DictionaryConfig(d=32, n_features=128, mean_active=4, magnitude_low=0.5,
                                      magnitude_high=2.0, seed=5))
STEPS, BATCH, WIDTH = 2000, 256, 256
BUDGET = dict(width=WIDTH, steps=STEPS, batch_size=BATCH, log_every=STEPS,
              checkpoint_every=10**9, seed=0)
PAPER = TrainConfig(**BUDGET, sparsity_coefficient=0.05, lr=3e-3, lr_warmup_steps=100,
                    sparsity_warmup_steps=1000)
NEW = TrainConfig(recipe="small-budget", **BUDGET, sparsity_coefficient=0.02)


@functools.lru_cache(maxsize=None)
def _rows():
    return (KD.rows(STEPS * BATCH, batch_rows=BATCH),
            KD.rows(8192, batch_rows=2048, split="heldout"))


def run(config):
    rows, held = _rows()
    C = estimate_norm_scalar(rows[:8192])
    res = train(config, lambda s: (rows[i * BATCH:(i + 1) * BATCH] for i in range(s, STEPS)),
                norm_scalar=C)
    return dictionary_metrics(res.folded._asdict(), held, KD.features)


def passes(m):
    return 3.5 <= m["l0"] <= 6.0 and m["fvu"] <= 0.22 and m["recovery"] >= 0.85


def test_small_budget_recipe_clears_the_bar():
    m = run(NEW)
    assert passes(m), m


def test_paper_recipe_misses_the_bar_in_the_l0_band():
    m = run(PAPER)
    assert 3.5 <= m["l0"] <= 6.0, m  # a fair comparison: same L0 band
    assert not passes(m), m
    assert m["recovery"] < 0.6, m


def _flipped_jumprelu():
    @functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
    def f(z, theta, eps):
        return z * (z > theta).astype(z.dtype)

    def fwd(z, theta, eps):
        return f(z, theta, eps), (z, theta)

    def bwd(eps, res, g):
        z, theta = res
        dtheta = +(theta / eps) * rectangle((z - theta) / eps) * g  # wrong sign
        return g * (z > theta).astype(g.dtype), dtheta.sum(0)

    f.defvjp(fwd, bwd)
    return f


def _no_l0_gradient(z, theta, eps):
    return jax.lax.stop_gradient((z > theta).astype(z.dtype))


@pytest.mark.parametrize("broken", ["jumprelu_sign", "l0_estimator"])
def test_broken_estimators_miss_the_bar(monkeypatch, broken):
    if broken == "jumprelu_sign":
        monkeypatch.setattr(sae_model, "jumprelu", _flipped_jumprelu())
    else:
        monkeypatch.setattr(sae_model, "heaviside", _no_l0_gradient)
    m = run(NEW)
    assert not passes(m), m
