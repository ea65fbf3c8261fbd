"""The optimiser recipe: schedules, decoder projection/renormalisation, one step's effects."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from raysae.config import ConfigError, from_dict
from raysae.sae import init_params
from raysae.train import TrainConfig, init_state, train_step
from raysae.train.optimizer import make_optimizer, project_decoder_grads, project_params
from raysae.train.schedules import cosine_warmup, linear_warmup


def jit_train_step(config):
    return jax.jit(lambda state, x: train_step(state, x, None, config))


def test_paper_defaults():
    c = TrainConfig()
    assert (c.adam_b1, c.adam_b2, c.adam_eps) == (0.0, 0.999, 1e-8)
    assert (c.lr, c.lr_warmup_steps, c.lr_warmup_start) == (7e-5, 1000, 0.1)
    assert (c.sparsity_warmup_steps, c.batch_size, c.bandwidth, c.threshold_init) == (10_000, 4096, 0.001, 0.001)
    assert c.grad_clip_norm is None
    # Steps default to the width's token budget (Gemma Scope Table 1), recorded as a value.
    assert c.steps * c.batch_size == 4_000_000_000 - 4_000_000_000 % 4096
    assert TrainConfig(width=65536).steps == 8_000_000_000 // 4096
    assert TrainConfig(width=2**20, batch_size=2048).steps == 16_000_000_000 // 2048
    assert TrainConfig(steps=7).steps == 7


def test_schedules():
    lr = cosine_warmup(7e-5, 1000, 0.1)
    assert float(lr(0)) == pytest.approx(7e-6)
    assert float(lr(500)) == pytest.approx(7e-5 * (0.1 + 0.9 * 0.5))
    assert float(lr(1000)) == pytest.approx(7e-5) and float(lr(5000)) == pytest.approx(7e-5)
    lam = linear_warmup(2.0, 10_000)
    assert float(lam(0)) == 0 and float(lam(2500)) == pytest.approx(0.5) and float(lam(20_000)) == 2.0


def test_decoder_gradient_projection_is_orthogonal_to_rows():
    p = init_params(jax.random.PRNGKey(0), 8, 12)
    g = jax.tree.map(lambda a: jax.random.normal(jax.random.PRNGKey(1), a.shape), p)
    tx = project_decoder_grads()
    out, _ = tx.update(g, tx.init(p), p)
    dots = jnp.sum(out.W_dec * p.W_dec, axis=-1)
    np.testing.assert_allclose(dots, 0, atol=1e-6)
    assert not np.allclose(out.W_dec, g.W_dec)            # it did something
    np.testing.assert_array_equal(out.W_enc, g.W_enc)     # and only to W_dec


def test_rows_stay_unit_norm_and_threshold_positive_through_steps():
    cfg = TrainConfig(width=32, steps=10, batch_size=64, lr=0.05, lr_warmup_steps=0,
                      sparsity_warmup_steps=0, sparsity_coefficient=10.0)
    state = init_state(cfg, 16)
    step = jit_train_step(cfg)
    rng = np.random.default_rng(0)
    before = np.asarray(state.params.W_dec).copy()
    for _ in range(5):
        state, _ = step(state, jnp.asarray(rng.standard_normal((64, 16)), jnp.float32))
    norms = np.linalg.norm(np.asarray(state.params.W_dec), axis=-1)
    np.testing.assert_allclose(norms, 1.0, rtol=1e-5)
    assert np.all(np.asarray(state.params.threshold) > 0)
    assert not np.allclose(before, state.params.W_dec)
    assert int(state.step) == 5


def test_project_params_renormalises():
    p = init_params(jax.random.PRNGKey(0), 4, 6)
    q = project_params(p._replace(W_dec=p.W_dec * 3.0, threshold=-jnp.ones(6)))
    np.testing.assert_allclose(jnp.linalg.norm(q.W_dec, axis=-1), 1.0, rtol=1e-6)
    assert np.all(np.asarray(q.threshold) > 0)


def test_optimizer_chain_with_and_without_clipping():
    p = init_params(jax.random.PRNGKey(0), 4, 6)
    g = jax.tree.map(lambda a: 1e3 * jnp.ones_like(a), p)
    for clip in (None, 1.0):
        cfg = TrainConfig(width=6, grad_clip_norm=clip)
        tx = make_optimizer(cfg)
        upd, _ = tx.update(g, tx.init(p), p)
        assert all(np.all(np.isfinite(u)) for u in jax.tree.leaves(upd))
    assert len(make_optimizer(TrainConfig(grad_clip_norm=1.0)).init(p)) == 4
    assert len(make_optimizer(TrainConfig()).init(p)) == 3


def test_first_adam_step_moves_each_param_by_lr():
    # b1 = 0: the first update is lr · g / (|g| + eps) ≈ lr in magnitude per coordinate.
    cfg = TrainConfig(width=6, lr=1e-2, lr_warmup_steps=0)
    p = init_params(jax.random.PRNGKey(0), 4, 6)
    g = jax.tree.map(lambda a: jax.random.normal(jax.random.PRNGKey(2), a.shape), p)
    tx = make_optimizer(cfg)
    upd, _ = tx.update(g, tx.init(p), p)
    np.testing.assert_allclose(np.abs(upd.W_enc), 1e-2, rtol=1e-3)


def test_config_errors_name_the_field():
    with pytest.raises(ConfigError, match="sparsity_coefficient"):
        from_dict(TrainConfig, {"sparsity_coefficient": -1})
    with pytest.raises(ConfigError, match="lr: expected a number"):
        from_dict(TrainConfig, {"lr": "fast"})
    with pytest.raises(ConfigError, match="lr_warmup: unknown key"):
        from_dict(TrainConfig, {"lr_warmup": 3})
    with pytest.raises(ConfigError, match="compute_dtype"):
        from_dict(TrainConfig, {"compute_dtype": "float16"})
    assert from_dict(TrainConfig, {"lr": "3e-4"}).lr == 3e-4


def test_dead_window_fraction_counts_latents_idle_for_the_window():
    # θ huge: nothing ever fires, so every latent is dead exactly once the window has passed.
    cfg = TrainConfig(width=8, steps=10, batch_size=16, lr=1e-9, lr_warmup_steps=0,
                      threshold_init=1e6, dead_window_steps=3)
    state = init_state(cfg, 4)
    step = jit_train_step(cfg)
    x = jnp.ones((16, 4), jnp.float32)
    fractions = []
    for _ in range(4):
        state, m = step(state, x)
        fractions.append(float(m.dead_window_fraction))
    assert fractions == [0.0, 0.0, 1.0, 1.0]  # after 3 updates without firing: dead
    # θ tiny and positive inputs: every latent fires every step, none is ever dead.
    cfg2 = TrainConfig(width=8, steps=10, batch_size=16, lr=1e-9, lr_warmup_steps=0,
                       threshold_init=1e-6, dead_window_steps=1)
    state = init_state(cfg2, 4, params=init_state(cfg2, 4).params._replace(
        W_enc=jnp.ones((4, 8)), W_dec=jnp.ones((8, 4)) / 2.0))
    step2 = jit_train_step(cfg2)
    for _ in range(3):
        state, m = step2(state, x)
    assert float(m.dead_window_fraction) == 0.0
