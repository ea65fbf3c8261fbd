"""The straight-through estimators against the formulas in DESIGN.md."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from raysae.sae.jumprelu import heaviside, jumprelu

EPS = 2.0 ** -10  # ≈ 0.001, but a power of two so the window edges are exact in floating point
THETA = 0.5
# z inside the kernel window (|z - θ| < ε/2), exactly at its edges, and outside it.
Z = np.array([THETA - 0.4 * EPS, THETA, THETA + 0.4 * EPS, THETA - EPS / 2, THETA + EPS / 2,
              THETA - 10 * EPS, THETA + 10 * EPS, 0.0, 2.0], np.float64)


def kernel(u):
    return (np.abs(u) < 0.5).astype(np.float64)


@pytest.fixture(autouse=True)
def x64():
    jax.config.update("jax_enable_x64", True)
    yield
    jax.config.update("jax_enable_x64", False)


def test_forward_values():
    theta = jnp.full(Z.shape, THETA)
    np.testing.assert_array_equal(jumprelu(jnp.asarray(Z), theta, EPS), Z * (Z > THETA))
    np.testing.assert_array_equal(heaviside(jnp.asarray(Z), theta, EPS), (Z > THETA) * 1.0)


def test_jumprelu_pseudo_derivatives():
    theta = jnp.full(Z.shape, THETA)
    dz, dtheta = jax.grad(lambda z, t: jumprelu(z, t, EPS).sum(), argnums=(0, 1))(jnp.asarray(Z), theta)
    np.testing.assert_array_equal(dz, (Z > THETA) * 1.0)
    expected = -(THETA / EPS) * kernel((Z - THETA) / EPS)
    np.testing.assert_allclose(dtheta, expected, rtol=1e-12)
    # Inside the window the pseudo-derivative is -θ/ε; at and beyond the edge it is 0.
    assert dtheta[0] == pytest.approx(-THETA / EPS) and dtheta[1] == pytest.approx(-THETA / EPS)
    assert dtheta[3] == 0 and dtheta[4] == 0 and dtheta[5] == 0 and dtheta[6] == 0


def test_heaviside_pseudo_derivatives_and_no_gradient_to_z():
    theta = jnp.full(Z.shape, THETA)
    dz, dtheta = jax.grad(lambda z, t: heaviside(z, t, EPS).sum(), argnums=(0, 1))(jnp.asarray(Z), theta)
    np.testing.assert_array_equal(dz, np.zeros_like(Z))
    np.testing.assert_allclose(dtheta, -(1 / EPS) * kernel((Z - THETA) / EPS), rtol=1e-12)


def test_threshold_cotangent_summed_over_batch():
    z = jnp.asarray(np.stack([Z, Z, Z]))  # [3, 9] batch of rows, θ is [9]
    theta = jnp.full(Z.shape, THETA)
    g = jax.grad(lambda t: heaviside(z, t, EPS).sum())(theta)
    assert g.shape == theta.shape
    np.testing.assert_allclose(g, 3 * -(1 / EPS) * kernel((Z - THETA) / EPS), rtol=1e-12)


def test_upstream_cotangent_is_multiplied():
    theta = jnp.full(Z.shape, THETA)
    w = jnp.arange(1.0, 1.0 + Z.size)
    dtheta = jax.grad(lambda t: (w * jumprelu(jnp.asarray(Z), t, EPS)).sum())(theta)
    np.testing.assert_allclose(dtheta, np.asarray(w) * -(THETA / EPS) * kernel((Z - THETA) / EPS))
