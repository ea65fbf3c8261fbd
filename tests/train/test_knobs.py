"""The small-budget knobs of TrainConfig: paper defaults unchanged, each knob does what it says."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from raysae.config import ConfigError
from raysae.sae.model import loss_fn
from raysae.sae.params import init_params
from raysae.train import TrainConfig, init_state, train_step
from raysae.config import from_dict, to_dict
from raysae.train.recipes import recipe_values
from raysae.train.schedules import linear_warmup, lr_schedule


def test_the_recipes_fill_what_is_not_given():
    c = TrainConfig()
    assert (c.recipe, c.decoder_init_norm, c.decoder_unit_norm, c.project_decoder_grads,
            c.lr_decay_steps, c.sparsity_warmup_start, c.sparsity_loss,
            c.dead_preact_coefficient, c.encoder_init_norm, c.encoder_lr_scale,
            c.decoder_lr_scale) == ("gemma-scope", 1.0, True, True, 0, 0.0, "l0", 0.0, 1.0, 1.0,
                                    1.0)
    s = TrainConfig(recipe="small-budget", steps=3000, lr=1e-3)
    assert s.lr == 1e-3  # given: kept
    want = recipe_values("small-budget", 3000)
    names = ("sparsity_warmup_steps", "lr_decay_steps", "dead_preact_window_steps", "bandwidth",
             "decoder_unit_norm", "decoder_init_norm", "encoder_init_norm", "encoder_lr_scale",
             "decoder_lr_scale")
    assert tuple(getattr(s, k) for k in names) == (0, 600, 100, 0.07, False, 0.025, 0.4, 4.0,
                                                   0.25) == tuple(want[k] for k in names)
    # step-dependent values follow a new step count; given ones stay
    t = s.with_(steps=1000)
    assert (t.lr_decay_steps, t.dead_preact_window_steps, t.lr) == (200, 33, 1e-3)
    # the record holds the recipe and every effective value, and builds the same config
    d = to_dict(t)
    assert d["recipe"] == "small-budget" and d["lr_decay_steps"] == 200
    assert d["encoder_init_norm"] == 0.4 and d["decoder_lr_scale"] == 0.25
    assert from_dict(TrainConfig, d) == t and "derived" not in d
    with pytest.raises(ConfigError, match="recipe"):
        from_dict(TrainConfig, {"recipe": "nope"})
    with pytest.raises(ValueError):
        recipe_values("nope", 10)


def test_schedules():
    c = TrainConfig(steps=100, lr=1.0, lr_warmup_steps=0, lr_decay_steps=20)
    lr = lr_schedule(c)
    assert [float(lr(t)) for t in (0, 80, 90, 100)] == pytest.approx([1, 1, 0.5, 0])
    lam = linear_warmup(2.0, 10, start_fraction=5.0)
    assert [float(lam(t)) for t in (0, 5, 10, 20)] == pytest.approx([10, 6, 2, 2])
    assert float(linear_warmup(2.0, 10)(5)) == pytest.approx(1.0)  # the paper's warmup


def test_init_and_decoder_constraint():
    p = init_params(jax.random.PRNGKey(0), 8, 32, decoder_norm=0.1)
    assert np.allclose(np.linalg.norm(p.W_dec, axis=1), 0.1, atol=1e-6)
    assert np.allclose(p.W_enc, p.W_dec.T)
    x = jax.random.normal(jax.random.PRNGKey(1), (64, 8))
    drift = {}
    for unit, project in ((True, True), (False, True), (False, False)):
        cfg = TrainConfig(width=32, batch_size=64, steps=20, lr=1e-3, lr_warmup_steps=0,
                          decoder_init_norm=0.1, decoder_unit_norm=unit,
                          project_decoder_grads=project)
        s = init_state(cfg, 8)
        for _ in range(20):
            s, _ = train_step(s, x, None, cfg)
        norms = np.linalg.norm(s.params.W_dec, axis=1)
        drift[unit, project] = np.abs(norms - 0.1).mean()
        if unit:
            assert np.allclose(norms, 1.0, atol=1e-5)
    # projected updates are tangential: the norm moves only at second order
    assert drift[False, False] > 3 * drift[False, True]


def test_quadratic_and_dead_preact_losses():
    p = init_params(jax.random.PRNGKey(0), 8, 16, threshold=0.05)
    x = jax.random.normal(jax.random.PRNGKey(1), (32, 8))
    _, base = loss_fn(p, x, sparsity_coefficient=0.1)
    _, quad = loss_fn(p, x, sparsity_coefficient=0.1, sparsity_loss="quadratic", target_l0=4.0)
    z = (x - p.b_dec) @ p.W_enc + p.b_enc
    l0_rows = jnp.sum(z > p.threshold, axis=-1)
    assert float(quad.sparsity_loss) == pytest.approx(
        float(0.1 * jnp.mean(2 / 4.0 * (l0_rows - 4.0) ** 2)), rel=1e-5)
    assert float(base.sparsity_loss) == pytest.approx(float(0.1 * jnp.mean(l0_rows)), rel=1e-5)
    dead = jnp.zeros(16, bool).at[3].set(True)
    f = lambda q: loss_fn(q, x, sparsity_coefficient=0.1, dead_mask=dead,  # noqa: E731
                          dead_preact_coefficient=1.0)[0]
    g = jax.grad(f)(p)
    g0 = jax.grad(lambda q: loss_fn(q, x, sparsity_coefficient=0.1)[0])(p)
    moved = np.flatnonzero(np.abs(np.asarray(g.b_enc - g0.b_enc)) > 0)
    assert list(moved) == [3]  # only the dead latent is pulled (its z up: negative gradient)
    assert float(g.b_enc[3] - g0.b_enc[3]) < 0
    with pytest.raises((ValueError, ConfigError)):
        TrainConfig(sparsity_loss="quadratic")


def test_encoder_init_norm_and_per_group_learning_rates():
    # the encoder starts as the decoder's transpose with its own column norm
    p = init_params(jax.random.PRNGKey(0), 8, 32, decoder_norm=0.025, encoder_norm=0.4)
    assert np.allclose(np.linalg.norm(p.W_dec, axis=1), 0.025, atol=1e-6)
    assert np.allclose(np.linalg.norm(p.W_enc, axis=0), 0.4, atol=1e-6)
    assert np.allclose(p.W_enc, p.W_dec.T * 16, atol=1e-6)
    assert TrainConfig(decoder_init_norm=0.1).encoder_init_norm == 0.1  # the paper's transpose
    same = init_params(jax.random.PRNGKey(0), 8, 32, decoder_norm=0.1, encoder_norm=0.1)
    assert np.array_equal(same.W_enc, same.W_dec.T)  # exactly, not to rounding
    with pytest.raises(ConfigError, match="encoder_lr_scale"):
        TrainConfig(encoder_lr_scale=0.0)

    # one step: W_enc moves encoder_lr_scale times, W_dec and b_dec decoder_lr_scale times as
    # far as with the base lr (the same gradients, Adam's first step); b_enc and θ as far
    x = jax.random.normal(jax.random.PRNGKey(1), (64, 8))
    base = TrainConfig(width=32, batch_size=64, steps=10, lr=1e-3, lr_warmup_steps=0,
                       decoder_init_norm=0.1, decoder_unit_norm=False,
                       project_decoder_grads=False, threshold_init=0.01)
    moves = {}
    for enc, dec in ((1.0, 1.0), (3.0, 0.5)):
        cfg = base.with_(encoder_lr_scale=enc, decoder_lr_scale=dec)
        s0 = init_state(cfg, 8)
        s1, _ = train_step(s0, x, None, cfg)
        moves[enc, dec] = jax.tree.map(lambda a, b: np.asarray(a - b), s1.params, s0.params)
    one, scaled = moves[1.0, 1.0], moves[3.0, 0.5]
    assert np.abs(one.W_enc).max() > 0 and np.abs(one.b_dec).max() > 0
    np.testing.assert_allclose(scaled.W_enc, 3.0 * one.W_enc, rtol=1e-4, atol=1e-9)
    np.testing.assert_allclose(scaled.W_dec, 0.5 * one.W_dec, rtol=1e-4, atol=1e-9)
    np.testing.assert_allclose(scaled.b_dec, 0.5 * one.b_dec, rtol=1e-4, atol=1e-9)
    np.testing.assert_allclose(scaled.b_enc, one.b_enc, rtol=1e-4, atol=1e-9)
    np.testing.assert_allclose(scaled.threshold, one.threshold, rtol=1e-4, atol=1e-9)
