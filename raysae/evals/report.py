"""EvalReport: every number an evaluation produced plus the config that made it; JSON and PNGs.

`write_report(report, url)` writes, under the directory URL (any fsspec URL, atomically):
`eval.json` (the report), `frequencies.npy` (per-latent firing frequency, when computed) and
the PNG plots of `raysae.evals.plots` (frontier point, per position, frequency histogram).
`metrics()` is the flat dict of scalars the sweep reports as Tune trial metrics.
"""

from __future__ import annotations

import dataclasses
import io
import json
import math
from typing import Any

import numpy as np

from raysae import metrics as names
from raysae import storage
from raysae.config import to_dict
from raysae.evals.config import EvalConfig

REPORT_NAME = "eval.json"
FREQUENCIES_NAME = "frequencies.npy"
SCALARS = (names.L0, names.FVU, names.MSE, "variance", "clean_loss", "spliced_loss", names.DELTA_LOSS,
           "zero_ablation_loss", "mean_ablation_loss", "loss_recovered_zero", "loss_recovered_mean",
           names.DEAD_LATENTS, names.DEAD_LATENT_FRACTION, "ultra_high_frequency_latents",
           "frequency_tokens", "r_l0", "num_tokens", "num_predictions")


@dataclasses.dataclass
class EvalReport:
    """One SAE evaluated on one model and site. Missing extras are None."""

    model: str
    site: str                      # "res:2", or "transcoder:1"
    width: int
    d_in: int
    d_out: int
    num_sequences: int
    context_length: int
    config: dict                   # the EvalConfig as plain data
    summary: dict                  # l0, fvu, mse, variance, losses, delta_loss, loss_recovered_*, ...
    per_position: dict | None = None
    frequency_histogram: dict | None = None
    frequencies: np.ndarray | None = dataclasses.field(default=None, repr=False)  # [M], not in JSON
    sae: str | None = None         # where the SAE came from, when known

    def __getattr__(self, name: str) -> Any:
        # report.l0, report.delta_loss, ... read from the summary.
        summary = self.__dict__.get("summary") or {}
        if name in summary:
            return summary[name]
        raise AttributeError(name)

    def metrics(self) -> dict:
        """Flat scalars for Tune / TensorBoard (only those computed; NaN kept as NaN)."""
        return {k: self.summary[k] for k in SCALARS if self.summary.get(k) is not None}

    def to_dict(self) -> dict:
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "frequencies"}
        return _json_safe(d)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, allow_nan=False)

    @classmethod
    def from_dict(cls, data: dict) -> "EvalReport":
        fields = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in fields})

    def eval_config(self) -> EvalConfig:
        from raysae.config import from_dict

        return from_dict(EvalConfig, self.config)


def _json_safe(x):
    if isinstance(x, dict):
        return {str(k): _json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_json_safe(v) for v in x]
    if isinstance(x, (np.floating, float)):
        return None if not math.isfinite(float(x)) else float(x)
    if isinstance(x, np.integer):
        return int(x)
    if dataclasses.is_dataclass(x):
        return _json_safe(to_dict(x))
    return x


def read_report(url: str) -> EvalReport:
    """Read `eval.json` (a file URL or the directory holding it) and frequencies.npy beside it."""
    if not url.endswith(".json"):
        url = storage.join(url, REPORT_NAME)
    report = EvalReport.from_dict(json.loads(storage.read_bytes(url)))
    freq_url = url.rsplit("/", 1)[0] + "/" + FREQUENCIES_NAME if "/" in url else FREQUENCIES_NAME
    if storage.exists(freq_url):
        report.frequencies = np.load(io.BytesIO(storage.read_bytes(freq_url)), allow_pickle=False)
    return report


def write_report(report: EvalReport, url: str, plots: bool = True) -> list[str]:
    """Write eval.json, frequencies.npy and (if `plots`) the PNGs under directory `url`.
    Returns the URLs written."""
    written = []
    target = storage.join(url, REPORT_NAME)
    storage.write_bytes_atomic(target, report.to_json().encode())
    written.append(target)
    if report.frequencies is not None:
        buf = io.BytesIO()
        np.save(buf, np.asarray(report.frequencies, np.float64), allow_pickle=False)
        target = storage.join(url, FREQUENCIES_NAME)
        storage.write_bytes_atomic(target, buf.getvalue())
        written.append(target)
    if plots:
        from raysae.evals.plots import write_plots

        written += write_plots(report, url)
    return written
