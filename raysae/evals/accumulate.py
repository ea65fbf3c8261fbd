"""Host-side running totals of `BatchStats`, in float64 / int64, and the final numbers.

Batches are combined with Chan et al.'s parallel variance update, so the variance behind FVU is
exact to float64 over any number of tokens without keeping activations. Memory is O(M + T·d):
firing counts per latent and, for the per-position curves, a running mean per position.
"""

from __future__ import annotations

import math

import numpy as np

from raysae import metrics as names
from raysae.evals.step import BatchStats


def _merge(n, mean, m2, nb, meanb, m2b):
    """Chan's update of (count, mean, centred sum of squares); works elementwise over positions."""
    tot = n + nb
    safe = np.where(tot > 0, tot, 1.0)
    delta = meanb - mean
    w = (nb / safe)[..., None] if np.ndim(delta) > np.ndim(tot) else nb / safe
    new_mean = mean + delta * w
    new_m2 = m2 + m2b + np.sum(np.square(delta), axis=-1) * n * nb / safe
    return tot, new_mean, new_m2


class Totals:
    """Running sums of the eval statistics; `add(stats)` per batch, then `summary()`."""

    def __init__(self, width: int, d_out: int):
        self.width, self.d_out = width, d_out
        self.n_tokens = 0.0
        self.mean = np.zeros(d_out)
        self.m2 = 0.0
        self.sum_l0 = 0.0
        self.sum_sq_err = 0.0
        self.fire_count = np.zeros(width, np.int64)
        self.extra_fire_count = np.zeros(width, np.int64)  # the frequency sample beyond the eval set
        self.extra_tokens = 0.0
        self.n_preds = 0.0
        self.loss_sums: dict[str, float] = {}
        self.sum_r_l0 = 0.0
        self.n_r_l0 = 0
        self.pos = None  # per-position arrays, allocated at the first batch

    def add(self, s: BatchStats) -> None:
        s = _to_numpy(s)
        self.n_tokens, self.mean, self.m2 = _merge(self.n_tokens, self.mean, self.m2,
                                                   float(s.n_tokens), s.target_mean, float(s.target_m2))
        self.sum_l0 += float(s.sum_l0)
        self.sum_sq_err += float(s.sum_sq_err)
        self.fire_count += s.fire_count
        self.n_preds += float(s.n_preds)
        for k, v in s.loss_sums.items():
            self.loss_sums[k] = self.loss_sums.get(k, 0.0) + float(v)
        self.sum_r_l0 += float(s.sum_r_l0)
        self.n_r_l0 += int(s.n_r_l0)
        if s.pos_n_tokens.size:
            self._add_positions(s)

    def add_frequency(self, n_tokens, fire_count) -> None:
        """Firing counts of a batch of the frequency sample outside the eval set."""
        self.extra_tokens += float(n_tokens)
        self.extra_fire_count += np.asarray(fire_count, np.int64)

    def _add_positions(self, s) -> None:
        if self.pos is None:
            t = s.pos_n_tokens.shape[0]
            self.pos = {"n": np.zeros(t), "mean": np.zeros((t, self.d_out)), "m2": np.zeros(t),
                        "sq": np.zeros(t), "n_preds": np.zeros(t - 1),
                        "loss": {k: np.zeros(t - 1) for k in s.pos_loss_sums}}
        p = self.pos
        p["n"], p["mean"], p["m2"] = _merge(p["n"], p["mean"], p["m2"], s.pos_n_tokens, s.pos_target_mean,
                                            s.pos_target_m2)
        p["sq"] += s.pos_sq_err
        p["n_preds"] += s.pos_n_preds
        for k, v in s.pos_loss_sums.items():
            p["loss"][k] += v

    def summary(self, ultra_high_frequency: float) -> dict:
        """The headline numbers (plain floats; NaN where there was nothing to average)."""
        n, npred = self.n_tokens, self.n_preds
        div = lambda a, b: float(a / b) if b else math.nan
        mse = div(self.sum_sq_err, n)
        variance = div(self.m2, n)
        losses = {k: div(v, npred) for k, v in self.loss_sums.items()}
        out = {"num_tokens": int(n), "num_predictions": int(npred), names.L0: div(self.sum_l0, n),
               names.MSE: mse, "variance": variance,
               names.FVU: div(mse, variance) if variance else math.nan,
               "clean_loss": losses.get("clean"), "spliced_loss": losses.get("spliced"),
               names.DELTA_LOSS: losses["spliced"] - losses["clean"] if "spliced" in losses else None,
               "zero_ablation_loss": losses.get("zero"), "mean_ablation_loss": losses.get("mean")}
        for name in ("zero", "mean"):
            if name in losses:  # 1 = as good as the clean model, 0 = as bad as the ablation
                gap = losses[name] - losses["clean"]
                out[f"loss_recovered_{name}"] = div(losses[name] - losses["spliced"], gap)
        freq = self.frequencies()
        # dead: fired on no token of the frequency sample (not the training-window count)
        out[names.DEAD_LATENTS] = int((freq == 0).sum())
        out[names.DEAD_LATENT_FRACTION] = out[names.DEAD_LATENTS] / self.width
        out["ultra_high_frequency_latents"] = int((freq > ultra_high_frequency).sum())
        out["frequency_tokens"] = int(self.frequency_tokens)
        out["r_l0"] = div(self.sum_r_l0, self.n_r_l0)
        out["r_l0_tokens"] = self.n_r_l0
        return out

    @property
    def frequency_tokens(self) -> float:
        """Tokens the firing frequencies are measured on (the eval set's and the extra sample's)."""
        return self.n_tokens + self.extra_tokens

    def frequencies(self) -> np.ndarray:
        """[M] fraction of the frequency sample's tokens on which each latent fired (resolution
        1 / `frequency_tokens`)."""
        return (self.fire_count + self.extra_fire_count) / max(self.frequency_tokens, 1.0)

    def per_position(self) -> dict | None:
        """Curves by position: site positions 0..T-1 and prediction positions 0..T-2."""
        if self.pos is None:
            return None
        p = self.pos
        with np.errstate(invalid="ignore", divide="ignore"):
            mse = np.where(p["n"] > 0, p["sq"] / p["n"], np.nan)
            var = np.where(p["n"] > 0, p["m2"] / p["n"], np.nan)
            fvu = np.where(var > 0, mse / var, np.nan)
            loss = {k: np.where(p["n_preds"] > 0, v / p["n_preds"], np.nan) for k, v in p["loss"].items()}
        out = {"num_tokens": p["n"].astype(int).tolist(), "mse": _list(mse), "fvu": _list(fvu),
               "num_predictions": p["n_preds"].astype(int).tolist(),
               "clean_loss": _list(loss["clean"]), "delta_loss": _list(loss["spliced"] - loss["clean"])}
        return out


def _list(a: np.ndarray) -> list:
    """JSON-safe list: NaN -> None."""
    return [None if not np.isfinite(v) else float(v) for v in np.asarray(a, np.float64)]


def _to_numpy(s: BatchStats) -> BatchStats:
    import jax

    return jax.tree_util.tree_map(lambda a: np.asarray(a, np.float64 if np.asarray(a).dtype.kind == "f"
                                                       else np.int64), jax.device_get(s))
