"""Folding (App. A) and the released file formats."""

import io

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from raysae import storage
from raysae.sae import SAEParams, decode, encode, fold, forward, init_params, unfold
from raysae.sae.formats import SAEFormatError, load_npz, save_npz


def trained_like(d=16, M=40, seed=0, transcoder=False):
    rng = np.random.default_rng(seed)
    p = init_params(jax.random.PRNGKey(seed), d, M, transcoder=transcoder)
    return SAEParams(W_enc=p.W_enc + 0.05 * rng.standard_normal((d, M)), W_dec=p.W_dec,
                     b_enc=jnp.asarray(0.1 * rng.standard_normal(M), jnp.float32),
                     b_dec=jnp.asarray(0.3 * rng.standard_normal(d), jnp.float32),
                     threshold=jnp.asarray(rng.uniform(0.01, 0.2, M), jnp.float32))


def test_folded_on_raw_equals_trained_on_normalised():
    p, C = trained_like(), 7.5
    x = np.random.default_rng(1).standard_normal((64, 16)).astype(np.float32) * C
    folded = fold(p, C)
    f_trained = encode(p, x / C, pre_encoder_bias=True)
    f_folded = encode(folded, x)
    assert np.mean(np.asarray(f_trained) > 0) > 0.1  # some latents active: a real check
    np.testing.assert_allclose(f_folded, C * f_trained, rtol=1e-4, atol=1e-4)
    recon_trained = C * decode(p, f_trained)          # back in raw space
    np.testing.assert_allclose(forward(folded, x), recon_trained, rtol=1e-4, atol=1e-4)


def test_fold_changes_only_biases_and_threshold():
    p = trained_like()
    q = fold(p, 3.0)
    np.testing.assert_array_equal(q.W_enc, p.W_enc)
    np.testing.assert_array_equal(q.W_dec, p.W_dec)
    np.testing.assert_allclose(q.threshold, 3.0 * p.threshold, rtol=1e-6)


@pytest.mark.parametrize("pre_bias", [True, False])
def test_unfold_inverts_fold(pre_bias):
    p = trained_like()
    back = unfold(fold(p, 4.25, pre_encoder_bias=pre_bias), 4.25, pre_encoder_bias=pre_bias)
    for a, b in zip(back, p):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_transcoder_fold_scales_reconstruction():
    p, C = trained_like(transcoder=True), 2.5
    x = np.random.default_rng(2).standard_normal((32, 16)).astype(np.float32) * C
    folded = fold(p, C, pre_encoder_bias=False)
    np.testing.assert_allclose(forward(folded, x), C * forward(p, x / C), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("base", ["local", "memory"])
def test_npz_round_trip(tmp_path, base):
    p = trained_like()
    url = str(tmp_path / "sae") if base == "local" else "memory://fmt/npz-rt"
    path = save_npz(p, url)
    assert path.endswith("params.npz")
    with np.load(io.BytesIO(storage.read_bytes(path)), allow_pickle=False) as z:
        assert sorted(z.files) == sorted(["W_enc", "W_dec", "b_enc", "b_dec", "threshold"])
        assert z["W_enc"].shape == (16, 40) and z["W_dec"].shape == (40, 16)
    q = load_npz(url)
    for a, b in zip(q, p):
        np.testing.assert_array_equal(a, np.asarray(b))


def _write_npz(path, **arrays):
    with open(path, "wb") as f:
        np.savez(f, **arrays)


def test_malformed_npz_errors_name_file_and_key(tmp_path):
    good = {k: np.asarray(v) for k, v in trained_like()._asdict().items()}
    missing = dict(good)
    del missing["threshold"]
    _write_npz(tmp_path / "missing.npz", **missing)
    with pytest.raises(SAEFormatError, match=r"missing\.npz.*'threshold'"):
        load_npz(str(tmp_path / "missing.npz"))
    bad_shape = dict(good, b_enc=np.zeros(7, np.float32))
    _write_npz(tmp_path / "shape.npz", **bad_shape)
    with pytest.raises(SAEFormatError, match=r"shape\.npz.*'b_enc'.*shape"):
        load_npz(str(tmp_path / "shape.npz"))
    bad_dtype = dict(good, W_dec=good["W_dec"].astype(np.int32))
    _write_npz(tmp_path / "dtype.npz", **bad_dtype)
    with pytest.raises(SAEFormatError, match=r"dtype\.npz.*'W_dec'.*dtype"):
        load_npz(str(tmp_path / "dtype.npz"))
    pickled = dict(good, W_enc=np.array([{"evil": 1}], dtype=object))
    with open(tmp_path / "pickle.npz", "wb") as f:
        np.savez(f, **pickled)
    with pytest.raises(SAEFormatError, match=r"pickle\.npz.*'W_enc'.*pickle"):
        load_npz(str(tmp_path / "pickle.npz"))
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(SAEFormatError, match=r"junk\.npz"):
        load_npz(str(tmp_path / "junk.npz"))
