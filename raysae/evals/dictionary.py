"""Dictionary-recovery metrics of a saved SAE against a known dictionary (numpy + scipy only).

Independent of the training code on purpose: it reads folded parameters in the Gemma Scope
npz layout (raw input space, no pre-encoder bias) and re-implements the forward pass,

    z = x W_enc + b_enc,   f = z · 1{z > θ},   x̂ = f W_dec + b_dec,

so a bug in `raysae.sae` or `raysae.train` cannot hide itself here. Metrics on held-out rows:

- `fvu`: Σ‖x − x̂‖² / Σ‖x − mean x‖²;  `l0`: mean active latents per row;
- `dead`: latents that never fire on the held-out rows (count, and `dead_fraction`);
- `recovery`: share of true features whose best decoder row has cosine > `cos_threshold` (0.9);
  `mean_max_cos`: the mean over true features of that best cosine;
- `mcc`: mean cosine of a one-to-one matching of true features to decoder rows (Hungarian,
  `scipy.optimize.linear_sum_assignment`, maximising the summed cosine; the usual "MCC" of the
  dictionary-learning literature with cosine as the correlation);
- `precision`: share of the latents alive on the held-out rows whose decoder row has cosine
  > `cos_threshold` with some true feature (how much of the live dictionary is real).
"""

from __future__ import annotations

from typing import Mapping

import numpy as np
from scipy.optimize import linear_sum_assignment

KEYS = ("W_enc", "W_dec", "b_enc", "b_dec", "threshold")


def load_params(path: str) -> dict[str, np.ndarray]:
    """The five arrays of a Gemma Scope-layout `params.npz` (local path), as float32."""
    with np.load(path, allow_pickle=False) as z:
        return {k: np.asarray(z[k], np.float32) for k in KEYS}


def _as_arrays(params) -> dict[str, np.ndarray]:
    if isinstance(params, Mapping):
        return {k: np.asarray(params[k], np.float32) for k in KEYS}
    return {k: np.asarray(getattr(params, k), np.float32) for k in KEYS}


def cosines(true_features: np.ndarray, W_dec: np.ndarray) -> np.ndarray:
    """Cosine [n_true, M] between true feature directions and decoder rows."""
    t = np.asarray(true_features, np.float64)
    w = np.asarray(W_dec, np.float64)
    t = t / np.maximum(np.linalg.norm(t, axis=1, keepdims=True), 1e-12)
    w = w / np.maximum(np.linalg.norm(w, axis=1, keepdims=True), 1e-12)
    return t @ w.T


def dictionary_metrics(params, x: np.ndarray, true_features: np.ndarray | None, *,
                       cos_threshold: float = 0.9, batch_rows: int = 8192) -> dict[str, float]:
    """All metrics of the module docstring for folded `params` on held-out rows `x` [N, d].

    `true_features` None (real activations: no known dictionary) gives FVU, L0 and the dead
    count, with the dictionary metrics None."""
    p = _as_arrays(params)
    x = np.asarray(x, np.float32)
    M = p["W_enc"].shape[1]
    sq_err = 0.0
    l0_sum = 0.0
    fired = np.zeros(M, bool)
    for lo in range(0, len(x), batch_rows):
        xb = x[lo:lo + batch_rows]
        z = xb @ p["W_enc"] + p["b_enc"]
        on = z > p["threshold"]
        f = np.where(on, z, 0.0).astype(np.float32)
        x_hat = f @ p["W_dec"] + p["b_dec"]
        sq_err += float(np.sum((xb.astype(np.float64) - x_hat) ** 2))
        l0_sum += float(on.sum())
        fired |= on.any(axis=0)
    centred = x.astype(np.float64) - x.mean(axis=0, dtype=np.float64)
    variance = float(np.sum(centred ** 2))
    dead = int(M - fired.sum())
    out = {"fvu": sq_err / variance, "l0": l0_sum / len(x), "dead": dead, "dead_fraction": dead / M,
           "recovery": None, "mean_max_cos": None, "mcc": None, "precision": None,
           "width": int(M)}
    if true_features is None:
        return out

    cos = cosines(true_features, p["W_dec"])
    best = cos.max(axis=1)
    rows, cols = linear_sum_assignment(cos, maximize=True)
    matched = np.zeros(cos.shape[0])
    matched[rows] = cos[rows, cols]
    alive = np.flatnonzero(fired)
    precision = float(np.mean(cos[:, alive].max(axis=0) > cos_threshold)) if len(alive) else 0.0
    return {**out, "recovery": float(np.mean(best > cos_threshold)),
            "mean_max_cos": float(best.mean()), "mcc": float(matched.mean()),
            "precision": precision}


def interpolate_at_l0(points: list[dict], targets=(8, 16, 32),
                      keys=("fvu", "recovery", "mcc", "mean_max_cos", "dead_fraction")) -> dict:
    """Each metric linearly interpolated in log L0 at each target L0 (None outside the range).

    `points` are metric dicts (with "l0") from one system's λ sweep.
    """
    pts = sorted((q for q in points if q["l0"] > 0), key=lambda q: q["l0"])
    logl0 = np.log([q["l0"] for q in pts])
    out = {}
    for t in targets:
        row = {}
        if len(pts) < 2 or not (logl0[0] <= np.log(t) <= logl0[-1]):
            out[t] = None
            continue
        for k in keys:
            values = [q.get(k) for q in pts]
            row[k] = None if None in values else float(np.interp(np.log(t), logl0, values))
        out[t] = row
    return out
