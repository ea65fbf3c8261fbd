"""Behaviour of raysae.evals on the embedded tiny model: exact delta loss of an identity SAE, zero
reconstruction = zero ablation, FVU of the mean predictor, L0 / firing counts / MSE / per-position
curves against a direct numpy computation, r_L0 on hand-built attributions and against a brute-force
per-token gradient, transcoder pairs, batch-size invariance."""

import dataclasses
import glob
import sysconfig

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from raysae.evals import EvalConfig, evaluate, eval_tokens, r_l0_per_token
from raysae.evals.metrics import centred_correct_logit
from raysae.evals.step import token_attribution
from raysae.lm import Site, forward, load_lm, loss_mask, site_activations, target_mask
from raysae.sae.params import SAEParams

SITE = Site(1, "res")
CFG = EvalConfig(num_sequences=6, context_length=48, batch_size=4, progress=False)


@pytest.fixture(scope="module")
def model():
    return load_lm("tiny")


@pytest.fixture(scope="module")
def texts():
    files = sorted(glob.glob(sysconfig.get_paths()["stdlib"] + "/*.py"))[:6]
    return [open(f, encoding="utf-8", errors="replace").read()[:400] for f in files]


@pytest.fixture(scope="module")
def data(model, texts):
    return eval_tokens(model, CFG, texts=texts)


def identity_sae(d):
    # f = [relu(x), relu(-x)] with θ = 0, x̂ = relu(x) - relu(-x) = x bit for bit.
    eye = jnp.eye(d)
    return SAEParams(jnp.concatenate([eye, -eye], 1), jnp.concatenate([eye, -eye], 0), jnp.zeros(2 * d),
                     jnp.zeros(d), jnp.zeros(2 * d))


def random_sae(d, width, seed, threshold=0.8):
    rng = np.random.RandomState(seed)
    W_enc = rng.randn(d, width).astype(np.float32) / np.sqrt(d)
    W_dec = rng.randn(width, d).astype(np.float32) / np.sqrt(width)
    return SAEParams(W_enc, W_dec, rng.randn(width).astype(np.float32) * 0.1,
                     rng.randn(d).astype(np.float32) * 0.1, rng.uniform(0.5, 1.5, width).astype(np.float32) * threshold)


def site_numpy(model, data, site):
    acts = site_activations(model, data.tokens, [site], data.attention_mask)[site]
    mask = np.asarray(loss_mask(data.tokens, model.config, data.attention_mask))
    return np.asarray(acts, np.float64), mask


def test_identity_sae_has_exactly_zero_delta_loss(model, data):
    r = evaluate(identity_sae(model.config.d_model), model, SITE, tokens=data, config=CFG)
    s = r.summary
    assert s["delta_loss"] == 0.0
    assert s["spliced_loss"] == s["clean_loss"]
    assert s["mse"] == 0.0 and s["fvu"] == 0.0
    assert s["loss_recovered_zero"] == 1.0 and s["loss_recovered_mean"] == 1.0
    assert set(r.per_position["delta_loss"]) <= {0.0, None}
    # The ablations really hurt, so the reference points are meaningful.
    assert s["zero_ablation_loss"] > s["clean_loss"] + 0.1
    assert s["mean_ablation_loss"] > s["clean_loss"] + 0.1
    # Clean loss agrees with a plain full forward over the same masked predictions.
    logits = forward(model.params, model.config, jnp.asarray(data.tokens), jnp.asarray(data.attention_mask)).logits
    lg = np.asarray(logits, np.float64)[:, :-1]
    lp = lg - lg.max(-1, keepdims=True)
    lp = lp - np.log(np.exp(lp).sum(-1, keepdims=True))
    nll = -np.take_along_axis(lp, data.tokens[:, 1:, None], -1)[..., 0]
    # (predictions made where the SAE is spliced: not at BOS, EOS or pad)
    tm = np.asarray(target_mask(data.tokens, model.config, data.attention_mask)) & \
        np.asarray(loss_mask(data.tokens, model.config, data.attention_mask))[:, :-1]
    assert s["clean_loss"] == pytest.approx(nll[tm].mean(), rel=1e-5)
    assert s["num_predictions"] == tm.sum()


def test_zero_reconstruction_equals_zero_ablation(model, data):
    d = model.config.d_model
    z = SAEParams(jnp.ones((d, 2 * d)), jnp.zeros((2 * d, d)), jnp.zeros(2 * d), jnp.zeros(d), jnp.full(2 * d, 1e9))
    s = evaluate(z, model, SITE, tokens=data, config=CFG).summary
    assert s["spliced_loss"] == pytest.approx(s["zero_ablation_loss"], abs=1e-6)
    assert s["loss_recovered_zero"] == pytest.approx(0.0, abs=1e-5)
    assert s["l0"] == 0.0 and s["dead_latents"] == 2 * d and s["fvu"] > 1


def test_mean_predictor_has_fvu_one_and_matches_mean_ablation(model, data):
    d = model.config.d_model
    acts, mask = site_numpy(model, data, SITE)
    mean = acts[mask].mean(0)
    sae = SAEParams(jnp.zeros((d, 2 * d)), jnp.zeros((2 * d, d)), jnp.zeros(2 * d), jnp.asarray(mean, jnp.float32),
                    jnp.ones(2 * d))
    s = evaluate(sae, model, SITE, tokens=data, config=CFG).summary
    assert s["fvu"] == pytest.approx(1.0, abs=1e-5)
    assert s["variance"] == pytest.approx(((acts[mask] - mean) ** 2).sum(-1).mean(), rel=1e-5)
    assert s["spliced_loss"] == pytest.approx(s["mean_ablation_loss"], abs=1e-5)


def test_l0_frequencies_mse_and_positions_match_numpy(model, data):
    d = model.config.d_model
    sae = random_sae(d, 2 * d, seed=1)
    r = evaluate(sae, model, SITE, tokens=data, config=CFG)
    acts, mask = site_numpy(model, data, SITE)
    z = acts @ sae.W_enc + sae.b_enc
    active = (z > sae.threshold) & mask[..., None]
    f = np.where(active, z, 0.0)
    x_hat = f @ sae.W_dec + sae.b_dec
    sq = ((acts - x_hat) ** 2).sum(-1)
    n = mask.sum()
    s = r.summary
    assert s["num_tokens"] == n
    assert 1 < s["l0"] < d  # a genuinely sparse, non-trivial case
    assert s["l0"] == pytest.approx(active.sum() / n, rel=1e-6)
    counts = np.rint(r.frequencies * n).astype(int)
    np.testing.assert_array_equal(counts, active.sum((0, 1)))
    assert s["dead_latents"] == int((active.sum((0, 1)) == 0).sum())
    assert s["ultra_high_frequency_latents"] == int((active.sum((0, 1)) / n > CFG.ultra_high_frequency).sum())
    assert s["mse"] == pytest.approx(sq[mask].mean(), rel=1e-4)
    hist = r.frequency_histogram
    assert sum(hist["counts"]) + hist["dead"] == 2 * d
    # Per position: MSE and FVU at each site position against numpy.
    pos_n = mask.sum(0)
    for t in (1, 7, 30):
        assert r.per_position["num_tokens"][t] == pos_n[t]
        assert r.per_position["mse"][t] == pytest.approx(sq[:, t][mask[:, t]].mean(), rel=1e-4)
        xt = acts[:, t][mask[:, t]]
        assert r.per_position["fvu"][t] == pytest.approx(
            sq[:, t][mask[:, t]].mean() / ((xt - xt.mean(0)) ** 2).sum(-1).mean(), rel=1e-4)
    assert r.per_position["num_tokens"][0] == 0 and r.per_position["mse"][0] is None  # BOS never counts
    # Predictions made at BOS (where the SAE is never spliced) do not count in any loss.
    assert r.per_position["num_predictions"][0] == 0 and r.per_position["delta_loss"][0] is None
    from raysae.lm import target_mask
    counted = np.asarray(target_mask(data.tokens, model.config, data.attention_mask)) & mask[:, :-1]
    assert s["num_predictions"] == int(counted.sum()) and counted[:, 0].sum() == 0
    # The per-position delta loss averages back to the overall delta loss.
    pn = np.array(r.per_position["num_predictions"])
    dl = np.array([0.0 if v is None else v for v in r.per_position["delta_loss"]])
    assert (dl * pn).sum() / pn.sum() == pytest.approx(s["delta_loss"], rel=1e-4, abs=1e-6)


def test_r_l0_hand_built():
    y = jnp.array([[2.0, -2.0, 2.0, 0.0],    # three equal: r = 1
                   [5.0, 0.0, 0.0, 0.0],     # one: r = 1
                   [3.0, 1.0, 0.0, 0.0],     # p = (3/4, 1/4)
                   [0.0, 0.0, 0.0, 0.0]])    # nothing active: not counted
    r, valid = r_l0_per_token(y)
    p = np.array([0.75, 0.25])
    want = np.exp(-(p * np.log(p)).sum()) / 2
    np.testing.assert_allclose(np.asarray(r), [1.0, 1.0, want, 0.0], rtol=1e-6)
    np.testing.assert_array_equal(np.asarray(valid), [True, True, True, False])
    # Concentrating attribution lowers r towards 1/n.
    r2, _ = r_l0_per_token(jnp.array([[100.0, 1.0, 1.0, 1.0]]))
    assert 0.25 < float(r2[0]) < 0.35


def test_r_l0_attribution_is_exact_per_token(model, texts):
    # Short rows, one of them padded (pad queries mask their own diagonal key).
    cfg = EvalConfig(num_sequences=3, context_length=16, batch_size=3, pack=False, progress=False, ablations=(),
                     per_position=False, frequency=False)
    data = eval_tokens(model, cfg, texts=texts[:2] + ["def f(): x"])
    assert not data.attention_mask.all()
    d = model.config.d_model
    sae = random_sae(d, 2 * d, seed=3)
    tok, am = jnp.asarray(data.tokens), jnp.asarray(data.attention_mask)
    y, counted = token_attribution(model.params, SAEParams(*map(jnp.asarray, sae)), tok, am, config=model.config,
                                   in_site=SITE, out_site=SITE)

    # Brute force: one gradient of L_t alone per position t, w.r.t. the spliced reconstruction.
    mask = loss_mask(tok, model.config, am)
    tm = target_mask(tok, model.config, am)
    z = jnp.asarray(site_numpy(model, data, SITE)[0], jnp.float32) @ sae.W_enc + sae.b_enc
    f = jnp.where(z > sae.threshold, z, 0.0)
    x_hat = f @ sae.W_dec + sae.b_dec

    def per_token(xh):
        splice = {SITE: lambda a: jnp.where(mask[..., None], xh, a)}
        logits = forward(model.params, model.config, tok, am, splice=splice).logits
        return jnp.where(tm, centred_correct_logit(logits, tok), 0.0)         # [B, T-1]

    own = jax.jit(lambda t: jax.grad(lambda xh: per_token(xh)[:, t].sum())(x_hat)[:, t])
    T = tok.shape[1]
    g = np.stack([np.asarray(own(t)) for t in range(T - 1)] + [np.zeros((3, d), np.float32)], axis=1)
    want = np.asarray(f) * (g @ np.asarray(sae.W_dec).T)
    scale = np.abs(want).max()
    assert scale > 0
    np.testing.assert_allclose(np.asarray(y), want, rtol=1e-3, atol=1e-4 * scale)
    np.testing.assert_array_equal(np.asarray(counted), np.asarray(mask) & np.pad(np.asarray(tm), ((0, 0), (0, 1))))
    # One plain backward of Σ_t L_t (the old approximation) mixes in later tokens: the check can fail.
    g_sum = np.asarray(jax.jit(jax.grad(lambda xh: per_token(xh).sum()))(x_hat))
    assert np.abs(np.asarray(f) * (g_sum @ np.asarray(sae.W_dec).T) - want).max() > 0.05 * scale

    # evaluate()'s r_L0 is the mean over counted tokens of r computed from the exact attributions.
    r = evaluate(sae, model, SITE, tokens=data, config=cfg).summary
    a = np.abs(want.astype(np.float64))
    valid = (a > 0).any(-1) & np.asarray(counted)
    p = a[valid] / a[valid].sum(-1, keepdims=True)
    ent = -np.where(p > 0, p * np.log(np.where(p > 0, p, 1)), 0).sum(-1)
    assert r["r_l0_tokens"] == valid.sum() > 20
    assert r["r_l0"] == pytest.approx((np.exp(ent) / (a[valid] > 0).sum(-1)).mean(), rel=1e-3)
    assert 0 < r["r_l0"] < 1


def test_transcoder_pair(model, data):
    d = model.config.d_model
    cfg = EvalConfig(num_sequences=6, context_length=48, batch_size=4, progress=False, ablations=("zero",),
                     r_l0=False, per_position=False)
    tc = random_sae(d, 2 * d, seed=2, threshold=0.5)
    r = evaluate(tc, model, "mlp_in:1->mlp:1", tokens=data, config=cfg)
    acts = site_activations(model, data.tokens, [Site(1, "mlp_in"), Site(1, "mlp")], data.attention_mask)
    x, target = (np.asarray(acts[Site(1, k)], np.float64) for k in ("mlp_in", "mlp"))
    mask = np.asarray(loss_mask(data.tokens, model.config, data.attention_mask))
    z = x @ tc.W_enc + tc.b_enc
    f = np.where(z > tc.threshold, z, 0.0)
    sq = ((target - (f @ tc.W_dec + tc.b_dec)) ** 2).sum(-1)
    tgt = target[mask]
    assert r.site == "transcoder:1"
    assert r.summary["mse"] == pytest.approx(sq[mask].mean(), rel=1e-4)
    assert r.summary["fvu"] == pytest.approx(sq[mask].mean() / ((tgt - tgt.mean(0)) ** 2).sum(-1).mean(), rel=1e-4)
    assert r.summary["delta_loss"] > 0 and r.per_position is None and r.summary["r_l0"] is None
    # A transcoder predicting zero is the MLP zero-ablated.
    zero = tc._replace(W_dec=np.zeros_like(tc.W_dec), b_dec=np.zeros_like(tc.b_dec))
    s = evaluate(zero, model, "mlp_in:1->mlp:1", tokens=data, config=cfg).summary
    assert s["spliced_loss"] == pytest.approx(s["zero_ablation_loss"], abs=1e-6)


def test_batch_size_does_not_change_results(model, data):
    sae = random_sae(model.config.d_model, 2 * model.config.d_model, seed=1)
    a = evaluate(sae, model, SITE, tokens=data, config=CFG)
    b = evaluate(sae, model, SITE, tokens=data, config=EvalConfig(**{**CFG.__dict__, "batch_size": 5}))
    for k in ("l0", "mse", "fvu", "variance", "delta_loss", "zero_ablation_loss", "mean_ablation_loss", "r_l0"):
        assert a.summary[k] == pytest.approx(b.summary[k], rel=1e-4, abs=1e-6), k
    np.testing.assert_array_equal(a.frequencies, b.frequencies)


def test_firing_frequencies_have_their_own_larger_sample(model, texts):
    """Frequencies (and dead latents) come from `frequency_sequences` rows, the eval set's among
    them; every other metric from the first `num_sequences` (the paper: 20,000 vs 2,048)."""
    d = model.config.d_model
    sae = random_sae(d, 2 * d, seed=3)
    cfg = dataclasses.replace(CFG, num_sequences=3, frequency_sequences=6)
    assert EvalConfig().frequency_sequences == 20_000
    r = evaluate(sae, model, SITE, texts=texts, config=cfg)
    everything = eval_tokens(model, dataclasses.replace(cfg, num_sequences=6), texts=texts)
    acts, mask = site_numpy(model, everything, SITE)
    active = ((acts @ sae.W_enc + sae.b_enc) > sae.threshold) & mask[..., None]
    n_all, n_eval = mask.sum(), mask[:3].sum()
    assert r.summary["num_tokens"] == n_eval and r.summary["frequency_tokens"] == n_all > n_eval
    np.testing.assert_allclose(r.frequencies, active.sum((0, 1)) / n_all, rtol=1e-12)
    assert r.summary["l0"] == pytest.approx(active[:3].sum() / n_eval, rel=1e-6)
    assert r.frequency_histogram["resolution"] == pytest.approx(1 / n_all)
    assert r.summary["dead_latents"] == int((active.sum((0, 1)) == 0).sum())
