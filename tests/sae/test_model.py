"""The full loss and its gradient against an independent numpy computation."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from raysae.sae import SAEParams, init_params, loss_fn

EPS = 0.05  # a wide window so several pre-activations fall inside it


def numpy_loss_and_grads(p, x, lam, eps):
    """Loss and STE gradients written out by hand (float64)."""
    W_enc, W_dec, b_enc, b_dec, th = (np.asarray(a, np.float64) for a in p)
    B = x.shape[0]
    xc = x - b_dec
    z = xc @ W_enc + b_enc
    H = (z > th).astype(np.float64)
    f = z * H
    xh = f @ W_dec + b_dec
    r = x - xh
    mse = np.mean(np.sum(r ** 2, 1))
    l0 = np.mean(H.sum(1))
    K = (np.abs((z - th) / eps) < 0.5).astype(np.float64)
    g_xh = -2 * r / B                                   # d mse / d x̂
    g_W_dec = f.T @ g_xh
    g_f = g_xh @ W_dec.T
    g_z = g_f * H                                       # the L0 term sends nothing to z
    g_th = np.sum(g_f * -(th / eps) * K, 0) + lam * np.sum(-(1 / eps) * K, 0) / B
    g_W_enc = xc.T @ g_z
    g_b_enc = g_z.sum(0)
    g_b_dec = g_xh.sum(0) - (g_z @ W_enc.T).sum(0)
    return mse + lam * l0, dict(W_enc=g_W_enc, W_dec=g_W_dec, b_enc=g_b_enc, b_dec=g_b_dec,
                                threshold=g_th), mse, l0


@pytest.fixture
def case():
    jax.config.update("jax_enable_x64", True)
    rng = np.random.default_rng(0)
    d, M, B = 6, 10, 32
    p = init_params(jax.random.PRNGKey(0), d, M, dtype=jnp.float64)
    p = SAEParams(W_enc=p.W_enc + 0.1 * rng.standard_normal((d, M)), W_dec=p.W_dec,
                  b_enc=jnp.asarray(0.05 * rng.standard_normal(M)),
                  b_dec=jnp.asarray(0.1 * rng.standard_normal(d)),
                  threshold=jnp.asarray(rng.uniform(0.05, 0.4, M)))
    x = rng.standard_normal((B, d))
    yield p, x
    jax.config.update("jax_enable_x64", False)


def test_loss_and_gradient_match_numpy(case):
    p, x = case
    lam = 0.3
    (loss, parts), grads = jax.value_and_grad(
        lambda q: loss_fn(q, jnp.asarray(x), sparsity_coefficient=lam, bandwidth=EPS),
        has_aux=True)(p)
    want_loss, want_grads, mse, l0 = numpy_loss_and_grads(p, x, lam, EPS)
    assert float(loss) == pytest.approx(want_loss, rel=1e-10)
    assert float(parts.mse) == pytest.approx(mse, rel=1e-10)
    assert float(parts.l0) == pytest.approx(l0, rel=1e-10)
    assert float(parts.sparsity_loss) == pytest.approx(lam * l0, rel=1e-10)
    # The window must actually be exercised for the θ check to mean anything.
    assert np.any(want_grads["threshold"] != 0)
    for k, g in want_grads.items():
        np.testing.assert_allclose(getattr(grads, k), g, rtol=1e-8, atol=1e-10, err_msg=k)


def test_sparsity_term_only_moves_threshold(case):
    p, x = case
    g_total = jax.grad(lambda q: loss_fn(q, jnp.asarray(x), sparsity_coefficient=1.0,
                                         bandwidth=EPS)[0])(p)
    g_mse = jax.grad(lambda q: loss_fn(q, jnp.asarray(x), sparsity_coefficient=0.0,
                                       bandwidth=EPS)[0])(p)
    for k in ("W_enc", "W_dec", "b_enc", "b_dec"):
        np.testing.assert_allclose(getattr(g_total, k), getattr(g_mse, k), rtol=1e-12, err_msg=k)
    assert not np.allclose(g_total.threshold, g_mse.threshold)


def test_transcoder_loss_uses_target_and_no_pre_bias(case):
    p, x = case
    rng = np.random.default_rng(1)
    target = rng.standard_normal(x.shape)
    _, parts = loss_fn(p, jnp.asarray(x), jnp.asarray(target), sparsity_coefficient=0.0,
                       pre_encoder_bias=False)
    z = x @ np.asarray(p.W_enc) + np.asarray(p.b_enc)
    f = z * (z > np.asarray(p.threshold))
    xh = f @ np.asarray(p.W_dec) + np.asarray(p.b_dec)
    assert float(parts.mse) == pytest.approx(np.mean(np.sum((target - xh) ** 2, 1)), rel=1e-10)
