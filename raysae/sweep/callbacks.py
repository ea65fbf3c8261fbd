"""`FrontierCallback`: keeps frontier.csv / frontier.json / frontier.png current during a sweep.

A Tune `Callback` running in the driver. After every trial result it updates that trial's
row (site, width, λ, step, L0, FVU and, once the final evaluation is in, delta LM loss),
recomputes the non-dominated sets per (site, width) with `raysae.evals.frontier` and
rewrites the files atomically under the sweep's directory. While a trial trains, its row
carries the running training L0/FVU (status "running"); its final report replaces them by
the final evaluation (status "done"). The PNG is redrawn at most every `png_every_s`
seconds while trials run (drawing costs far more than the table) and always when a trial
finishes.

State lives on storage, not in the driver: `setup` reads the existing frontier.json, so
a driver that was killed and restarted with `--resume` carries on with every row it had.
"""

from __future__ import annotations

import logging
import math
import time

from ray import tune

from raysae.evals import frontier

log = logging.getLogger(__name__)


def row_from_result(trial_id: str, config: dict, result: dict, done: bool) -> dict:
    """One frontier row from a trial's config and (latest) result."""
    def pick(*keys):
        for k in keys:
            v = result.get(k)
            if isinstance(v, (int, float)) and not (isinstance(v, float) and math.isnan(v)):
                return float(v)
        return None

    final = "eval/l0" in result
    return {
        "trial_id": trial_id, "site": config.get("site"), "width": int(config.get("width", 0)),
        "sparsity_coefficient": float(config.get("sparsity_coefficient", 0.0)),
        "status": "done" if (done and final) else ("evaluated" if final else "running"),
        "step": int(result.get("step", 0) or 0),
        "l0": pick("eval/l0", "l0"), "fvu": pick("eval/fvu", "fvu"),
        "delta_loss": pick("eval/delta_loss"), "mse": pick("eval/mse"),
        "sae_url": result.get("sae_url"),
    }


class FrontierCallback(tune.Callback):
    """See the module docstring. `sweep_url`: the directory the frontier files go to."""

    def __init__(self, sweep_url: str, png_every_s: float = 30.0):
        self.sweep_url = sweep_url
        self.png_every_s = png_every_s
        self.rows: dict[str, dict] = {}
        self._last_png = 0.0

    def setup(self, **info) -> None:
        # Rebuild from disk: a restarted driver continues with every row already written.
        for r in frontier.read_frontier(self.sweep_url):
            self.rows.setdefault(str(r["trial_id"]), r)

    def _write(self, png: bool) -> None:
        try:
            frontier.write_frontier(self.sweep_url, self.rows.values(), png=png)
            if png:
                self._last_png = time.monotonic()
        except Exception:  # never let a plotting/storage hiccup kill the sweep
            log.exception("could not write the frontier under %s", self.sweep_url)

    def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
        self.rows[trial.trial_id] = row_from_result(trial.trial_id, trial.config, result, False)
        self._write(png=time.monotonic() - self._last_png >= self.png_every_s)

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        result = trial.last_result or {}
        self.rows[trial.trial_id] = row_from_result(trial.trial_id, trial.config, result, True)
        self._write(png=True)

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        row = self.rows.get(trial.trial_id)
        if row is not None:
            row["status"] = "error"
            self._write(png=False)

    def on_experiment_end(self, trials, **info) -> None:
        self._write(png=True)
