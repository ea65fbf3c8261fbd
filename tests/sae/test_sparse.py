"""The sparse decoder path equals the dense loss, gradients and train steps (float tolerance),
falls back to dense when a row overflows its capacity, and is chosen as configured."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from raysae.config import ConfigError, from_dict
from raysae.sae.model import loss_fn, pre_activations
from raysae.sae.params import init_params
from raysae.sae.sparse import (_sparse_branch, active_indices, choose_decoder, decoder_costs,
                               sparse_loss_fn)
from raysae.train import TrainConfig, init_state, train_step
from raysae.train.step import decoder_path

D, M, B = 16, 128, 32
THETA = 1.5  # z ~ N(0, 1) per latent: ~7% active, a max row L0 well under M


def _setup(transcoder=False, d_out=D):
    params = init_params(jax.random.PRNGKey(0), D, M, d_out=d_out, transcoder=transcoder,
                         threshold=THETA)
    params = params._replace(b_dec=0.1 * jnp.arange(d_out, dtype=jnp.float32) / d_out,
                             b_enc=0.05 * jnp.cos(jnp.arange(M, dtype=jnp.float32)))
    x = jax.random.normal(jax.random.PRNGKey(1), (B, D)) * 1.2
    return params, x


def _needed(params, x, eps, pre_encoder_bias=True):
    z = pre_activations(params, x, pre_encoder_bias=pre_encoder_bias)
    return np.asarray(z > params.threshold - eps / 2), np.asarray(z > params.threshold)


def _close(a, b, rtol=2e-6):
    for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        u, v = np.asarray(u), np.asarray(v)
        assert np.abs(u - v).max() <= rtol * max(np.abs(u).max(), 1e-6), (u, v)


def test_active_indices_are_each_rows_needed_latents_in_order():
    params, x = _setup()
    eps = 0.3
    needed, _ = _needed(params, x, eps)
    cap = int(needed.sum(1).max())
    z = pre_activations(params, x, pre_encoder_bias=True)
    act = active_indices(z, params.threshold, eps, cap)
    for i in range(B):
        want = np.nonzero(needed[i])[0]
        assert int(act.count[i]) == len(want)
        assert np.array_equal(np.asarray(act.index[i])[np.asarray(act.valid[i])], want)
    small = active_indices(z, params.threshold, eps, 3)  # overflow keeps the first 3
    row = int(np.argmax(needed.sum(1)))
    assert np.array_equal(np.asarray(small.index[row]), np.nonzero(needed[row])[0][:3])


@pytest.mark.parametrize("case", ["sae", "near-threshold", "quadratic", "transcoder"])
def test_sparse_loss_and_every_gradient_equal_the_dense_ones(case):
    transcoder = case == "transcoder"
    params, x = _setup(transcoder=transcoder, d_out=8 if transcoder else D)
    target = jax.random.normal(jax.random.PRNGKey(2), (B, 8)) if transcoder else None
    eps = 0.3 if case == "near-threshold" else 0.001  # 0.3: many inactive latents get a θ grad
    kw = dict(sparsity_coefficient=0.02, bandwidth=eps, pre_encoder_bias=not transcoder)
    if case == "quadratic":
        kw.update(sparsity_loss="quadratic", target_l0=6.0)
    needed, active = _needed(params, x, eps, not transcoder)
    cap = int(needed.sum(1).max())
    assert cap < M // 2 and active.sum() > B
    if case == "near-threshold":
        assert (needed & ~active).sum() > B  # inactive latents whose θ gets a gradient
    dense = jax.jit(jax.value_and_grad(lambda p: loss_fn(p, x, target, **kw), has_aux=True))
    z = jax.lax.stop_gradient(pre_activations(params, x, pre_encoder_bias=not transcoder))

    def forced(p):  # the sparse branch itself, never the fallback
        xc = x if transcoder else x - p.b_dec
        rest = {k: v for k, v in kw.items() if k not in ("bandwidth", "pre_encoder_bias")}
        return _sparse_branch(p, xc, z, x if target is None else target, cap, eps, None, **rest)

    (l_d, parts_d), g_d = dense(params)
    (l_s, parts_s), g_s = jax.jit(jax.value_and_grad(forced, has_aux=True))(params)
    (l_c, _), g_c = jax.jit(jax.value_and_grad(
        lambda p: sparse_loss_fn(p, x, target, capacity=cap, **kw), has_aux=True))(params)
    assert np.isclose(float(l_s), float(l_d), rtol=1e-6)
    assert float(parts_s.l0) == float(parts_d.l0)
    assert np.array_equal(parts_s.fired, parts_d.fired)
    _close(g_s, g_d)
    _close(g_c, g_d)
    assert float(jnp.abs(g_d.W_enc).max()) > 0
    if case == "near-threshold":
        assert float(jnp.abs(g_d.threshold).max()) > 0


def test_overflow_takes_the_dense_path():
    params, x = _setup()
    kw = dict(sparsity_coefficient=0.02, bandwidth=0.001)
    needed, _ = _needed(params, x, 0.001)
    cap = int(needed.sum(1).max()) - 1  # one row does not fit
    (l_d, _), g_d = jax.jit(jax.value_and_grad(lambda p: loss_fn(p, x, **kw),
                                               has_aux=True))(params)
    (l_s, _), g_s = jax.jit(jax.value_and_grad(
        lambda p: sparse_loss_fn(p, x, capacity=cap, **kw), has_aux=True))(params)
    assert float(l_s) == float(l_d)
    _close(g_s, g_d, rtol=1e-6)
    # the truncated sparse branch alone would be wrong: the fallback is what makes it exact
    z = pre_activations(params, x, pre_encoder_bias=True)
    l_t, _ = _sparse_branch(params, x - params.b_dec, z, x, cap, 0.001, None,
                            sparsity_coefficient=0.02)
    assert abs(float(l_t) - float(l_d)) > 1e-4 * abs(float(l_d))


@pytest.mark.parametrize("capacity", [48, 4])  # 48: the sparse path; 4: every step falls back
def test_sparse_train_steps_equal_dense_steps(capacity):
    base = TrainConfig(width=M, batch_size=B, lr=3e-3, lr_warmup_steps=0,
                       threshold_init=THETA, bandwidth=0.05, sparsity_coefficient=0.02)
    sparse = base.with_(decoder="sparse", decoder_capacity=capacity)
    rng = np.random.default_rng(0)
    xs = [jnp.asarray(rng.normal(size=(B, D)) * 1.2, jnp.float32) for _ in range(5)]
    runs = {}
    for name, config in (("dense", base), ("sparse", sparse)):
        state, step = init_state(config, D), jax.jit(lambda s, x, c=config: train_step(s, x, None, c))
        losses = []
        for x in xs:
            state, m = step(state, x)
            losses.append(float(m.loss))
        runs[name] = (state, losses, float(m.l0))
    (sd, ld, l0), (ss, ls, _) = runs["dense"], runs["sparse"]
    assert 1 < l0 < 48 * 0.5
    assert np.allclose(ld, ls, rtol=1e-5)
    _close(ss.params, sd.params, rtol=1e-5)
    _close(ss.opt_state, sd.opt_state, rtol=1e-4)
    assert np.array_equal(ss.last_fired, sd.last_fired)
    assert float(jnp.abs(sd.params.W_dec - init_state(base, D).params.W_dec).max()) > 1e-4


def test_the_decoder_is_chosen_as_configured():
    assert TrainConfig().decoder == "dense"
    assert decoder_path(TrainConfig(), 4096, 2304) == "dense"  # today's step, unchanged
    assert decoder_path(TrainConfig(decoder="sparse"), 8, 4) == "sparse"
    c = from_dict(TrainConfig, {"decoder": "auto", "decoder_capacity": 16, "width": 2**22})
    assert decoder_path(c, 1024, 512) == choose_decoder(1024, 512, 2**22, 16) == "sparse"
    assert decoder_path(c.with_(width=256, decoder_capacity=256), 1024, 512) == "dense"  # k = M
    small_budget = TrainConfig(recipe="small-budget", decoder="auto", steps=100)
    assert decoder_path(small_budget, 1024, 512) == "dense"  # dead-latent loss: dense only
    with pytest.raises(ConfigError, match="decoder"):
        TrainConfig(recipe="small-budget", decoder="sparse", steps=100)
    with pytest.raises(ConfigError, match="decoder"):
        from_dict(TrainConfig, {"decoder": "csr"})
    costs = decoder_costs(1024, 512, 65536, 64, gather_cost=1.0, select_cost=0.0)
    assert costs.dense == 12.0 * 1024 * 65536 * 512
    assert costs.sparse == 2.0 * 1024 * 65536 * 512 + 12.0 * 1024 * 64 * 512


def test_a_sweep_yaml_train_section_takes_the_decoder(tmp_path):
    from raysae.sweep import load_sweep
    url = tmp_path / "sweep.yaml"
    url.write_text("storage: runs\nmodel: tiny\ntrain:\n  decoder: sparse\n"
                   "  decoder_capacity: 96\n")
    sweep = load_sweep(str(url))
    trial = sweep.trial_train_config(4096, 1e-3, "res:0")
    assert (trial.decoder, trial.decoder_capacity) == ("sparse", 96)
