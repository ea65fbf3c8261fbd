"""raysae's Gemma 2 against Hugging Face transformers' outputs (fixtures made by
tests/fixtures/make_gemma2_fixtures.py; torch is not needed here).

Every site at every layer and the logits must match to 1e-4 relative; breaking one detail of
the architecture (window layer parity, window boundary, soft-caps, RMSNorm's 1 + w) must not.
"""

import dataclasses
import os

import jax.numpy as jnp
import numpy as np
import pytest

import raysae.lm.model as lm_model
from raysae.lm import LMConfig, Site, forward, load_lm

FIXTURES = os.path.join(os.path.dirname(os.path.dirname(__file__)), "fixtures")
NAMES = ["a", "b"]
RTOL = 1e-4


def _load(name, dtype="float32"):
    d = os.path.join(FIXTURES, f"gemma2_{name}")
    return load_lm(d, dtype), np.load(os.path.join(d, "reference.npz"))


def _run(model, ref, config=None):
    sites = [k for k in ref.files if ":" in k]
    out = forward(model.params, config or model.config, jnp.asarray(ref["tokens"]),
                  jnp.asarray(ref["attention_mask"]), sites=sites)
    return out, sites


def _rel(got, want):
    return float(np.max(np.abs(np.asarray(got, np.float32) - want)) / np.max(np.abs(want)))


def _ours(model, out, key):
    """Our activation at a fixture's site. HF's pre-MLP norm output is our gain-free mlp_in
    times the norm's gain (1 + w): Gemma Scope folds the gain into the MLP (App. B)."""
    site = Site.parse(key)
    got = np.asarray(out.acts[site], np.float32)
    if site.kind == "mlp_in":
        w = np.asarray(model.params["layers"][site.layer]["pre_feedforward_layernorm"], np.float32)
        got = got * (1.0 + w)
    return got


def _worst(model, ref, config=None):
    out, sites = _run(model, ref, config)
    errs = {k: _rel(_ours(model, out, k), ref[k]) for k in sites}
    errs["logits"] = _rel(out.logits, ref["logits"])
    return max(errs.values()), errs


@pytest.mark.parametrize("name", NAMES)
def test_matches_transformers_fp32(name):
    model, ref = _load(name)
    assert set(k for k in ref.files if ":" in k) == {
        f"{kind}:{i}" for i in range(model.config.n_layers) for kind in ("attn", "mlp", "res", "mlp_in")}
    worst, errs = _worst(model, ref)
    assert worst < RTOL, errs
    # The fixture really exercises the soft-caps: logits reach the final cap.
    assert np.abs(ref["logits"]).max() > 0.9 * model.config.final_softcap


@pytest.mark.parametrize("name", NAMES)
def test_matches_transformers_bf16(name):
    model, ref = _load(name, "bfloat16")
    assert model.params["layers"][0]["q_proj"].dtype == jnp.bfloat16
    out, _ = _run(model, ref)
    # bf16 rounding differs op by op between frameworks; both sit this close to fp32.
    assert _rel(out.logits, ref["logits_bf16"]) < 4e-2
    assert _rel(out.logits, ref["logits"]) < 4e-2


def _break_parity(monkeypatch):
    monkeypatch.setattr(LMConfig, "is_sliding", lambda self, layer: layer % 2 == 1)


def _break_norm(monkeypatch):
    def rms_norm_w(x, w, eps):  # x * w instead of x * (1 + w)
        xf = x.astype(jnp.float32)
        y = xf * (1.0 / jnp.sqrt(jnp.mean(xf * xf, -1, keepdims=True) + eps))
        return (y * w.astype(jnp.float32)).astype(x.dtype)
    monkeypatch.setattr(lm_model, "rms_norm", rms_norm_w)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("breakage", ["window_parity", "window_off_by_one", "no_attn_softcap",
                                      "no_final_softcap", "norm_w_not_1_plus_w"])
def test_breaking_one_detail_fails(name, breakage, monkeypatch):
    model, ref = _load(name)
    cfg = model.config
    if breakage == "window_parity":
        _break_parity(monkeypatch)
    elif breakage == "window_off_by_one":
        cfg = dataclasses.replace(cfg, sliding_window=cfg.sliding_window + 1)
    elif breakage == "no_attn_softcap":
        cfg = dataclasses.replace(cfg, attn_softcap=None)
    elif breakage == "no_final_softcap":
        cfg = dataclasses.replace(cfg, final_softcap=None)
    elif breakage == "norm_w_not_1_plus_w":
        _break_norm(monkeypatch)
    worst, errs = _worst(model, ref, cfg)
    assert worst > 100 * RTOL, errs


@pytest.mark.parametrize("name", NAMES)
def test_matches_transformers_with_small_query_blocks(name, monkeypatch):
    monkeypatch.setattr(lm_model, "ATTN_BLOCK", 5)  # T = 12: three blocks, keys sliced per block
    model, ref = _load(name)
    out, sites = _run(model, ref)
    real = ref["attention_mask"]  # padding positions are unspecified when all their keys are padding
    for k in sites:
        assert _rel(_ours(model, out, k)[real], ref[k][real]) < RTOL, k
    assert _rel(np.asarray(out.logits)[real], ref["logits"][real]) < RTOL
