"""Learning a known sparse dictionary: the recipe end to end, with a bar broken estimators miss.

Data: 64 true features (unit vectors in R^32), each row ~2 of them active with magnitudes
U(0.5, 1.5). A 128-wide JumpReLU SAE trained with the recipe (lr and warmups shortened for a
test) must find ≥ 80% of the features as decoder rows with cosine > 0.9 at FVU < 0.15 and an
L0 near the true 2. The same run with the θ pseudo-derivative's sign flipped, or with the L0
term's estimator removed, misses the bar (checked by the slow tests below).

The issue's example scale (1,024 features in R^128, ~10 active) behaves the same way but
needs tens of thousands of steps with ε = 0.001, too long for this suite on 2 cores.
"""

import functools

import jax
import numpy as np
import pytest

from raysae.sae import model as sae_model
from raysae.sae.jumprelu import rectangle
from raysae.synthetic import SparseDictionary
from raysae.train import TrainConfig, estimate_norm_scalar, train

SD = SparseDictionary.random(d=32, n_features=64, active=2, seed=0)
CFG = TrainConfig(width=128, steps=3000, batch_size=256, lr=2e-3, lr_warmup_steps=100,
                  sparsity_warmup_steps=750, sparsity_coefficient=3e-2, log_every=3000, seed=1)


def run():
    C = estimate_norm_scalar(SD.sample(8192, np.random.default_rng(1)))
    res = train(CFG, lambda s: SD.batches(CFG.batch_size, seed=0, start=s), norm_scalar=C)
    return SD.recovered_fraction(res.params.W_dec), res.history[-1]


def test_recovers_known_features():
    recovered, last = run()
    assert recovered >= 0.8, (recovered, last)
    assert last["fvu"] < 0.15, last
    assert 1.0 < last["l0"] < 4.0, last


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


@pytest.mark.slow
@pytest.mark.parametrize("broken", ["jumprelu_sign", "l0_estimator"])
def test_broken_estimators_miss_the_bar(monkeypatch, broken):
    if broken == "jumprelu_sign":
        monkeypatch.setattr(sae_model, "jumprelu", _flipped_jumprelu())
    else:
        monkeypatch.setattr(sae_model, "heaviside", _no_l0_gradient)
    recovered, last = run()
    assert not (recovered >= 0.8 and last["fvu"] < 0.15 and 1.0 < last["l0"] < 4.0), (recovered, last)
