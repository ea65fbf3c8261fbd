"""raysae.evals.dictionary: the independent known-dictionary metrics."""

import numpy as np
import pytest

from raysae.evals.dictionary import dictionary_metrics, interpolate_at_l0
from raysae.synthetic import DictionaryConfig, KnownDictionary


def _orthogonal_problem():
    cfg = DictionaryConfig(d=64, n_features=32, mean_active=3, magnitude_low=0.5,
                           magnitude_high=2.0, seed=0)
    kd = KnownDictionary(cfg)
    q, _ = np.linalg.qr(np.random.default_rng(0).standard_normal((64, 32)))
    kd.features = q.T.astype(np.float32)  # exactly orthonormal: the ideal SAE is exact
    return kd


def _ideal_sae(D, extra=0, rng=None):
    W_dec = D
    if extra:
        W_dec = np.concatenate([D, rng.standard_normal((extra, D.shape[1])).astype(np.float32)])
    M = len(W_dec)
    thr = np.full(M, 0.25, np.float32)
    thr[len(D):] = 1e6  # never fire
    return {"W_enc": W_dec.T.copy(), "W_dec": W_dec, "b_enc": np.zeros(M, np.float32),
            "b_dec": np.zeros(D.shape[1], np.float32), "threshold": thr}


def test_ideal_sae_scores_perfectly():
    kd = _orthogonal_problem()
    x = kd.sample(4096, np.random.default_rng(1))
    m = dictionary_metrics(_ideal_sae(kd.features, extra=8, rng=np.random.default_rng(2)), x,
                           kd.features)
    assert m["fvu"] < 1e-10
    assert m["recovery"] == 1.0 and m["mcc"] == pytest.approx(1.0) and m["precision"] == 1.0
    assert m["dead"] == 8
    assert m["l0"] == pytest.approx(3.0, rel=0.05)


def test_random_sae_recovers_nothing_and_permutation_invariant():
    kd = _orthogonal_problem()
    x = kd.sample(2048, np.random.default_rng(1))
    rng = np.random.default_rng(3)
    W = rng.standard_normal((64, 64)).astype(np.float32)
    rand = {"W_enc": W.T.copy(), "W_dec": W, "b_enc": np.zeros(64, np.float32),
            "b_dec": np.zeros(64, np.float32), "threshold": np.full(64, 0.1, np.float32)}
    m = dictionary_metrics(rand, x, kd.features)
    assert m["recovery"] == 0.0 and m["mcc"] < 0.5
    perm = rng.permutation(32)
    p = _ideal_sae(kd.features[perm])
    assert dictionary_metrics(p, x, kd.features)["mcc"] == pytest.approx(1.0)


def test_interpolation_in_log_l0():
    pts = [{"l0": 4, "fvu": 0.4, "recovery": 0.2}, {"l0": 16, "fvu": 0.2, "recovery": 0.6}]
    out = interpolate_at_l0(pts, (8, 32), keys=("fvu", "recovery"))
    assert out[8]["fvu"] == pytest.approx(0.3) and out[32] is None


def test_without_a_known_dictionary_only_the_reconstruction_metrics():
    kd = _orthogonal_problem()
    x = kd.sample(2048, np.random.default_rng(1))
    sae = _ideal_sae(kd.features, extra=8, rng=np.random.default_rng(2))
    m = dictionary_metrics(sae, x, None)
    full = dictionary_metrics(sae, x, kd.features)
    assert {k: m[k] for k in ("fvu", "l0", "dead")} == {k: full[k] for k in ("fvu", "l0", "dead")}
    assert m["recovery"] is None and m["mcc"] is None
    # interpolation carries None for the metrics a real-activation run does not have
    pts = [dict(m, l0=4.0), dict(m, l0=16.0, fvu=0.1)]
    row = interpolate_at_l0(pts, targets=(8,))[8]
    assert row["recovery"] is None and row["fvu"] == pytest.approx(m["fvu"] + 0.5 * (0.1 - m["fvu"]))
