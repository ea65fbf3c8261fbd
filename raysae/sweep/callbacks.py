"""`FrontierCallback`: keeps frontier.csv / frontier.json / frontier.png current during a sweep.

A Tune callback in the driver: after each result it updates that trial's row (training
L0 / FVU while it runs, the final evaluation once it is in), recomputes the non-dominated
sets per (site, width) with `raysae.evals.frontier` and rewrites the files. The PNG is
redrawn at most every `png_every_s` while trials run and always when one finishes. State
lives on storage: `setup` reads frontier.json back, so a restarted driver keeps every row.
"""

from __future__ import annotations

import logging
import math
import time

from ray import tune

from raysae import metrics as names
from raysae.evals import frontier
from raysae.sweep.trainable import trial_key

log = logging.getLogger(__name__)


def row_from_result(key: str, config: dict, result: dict, done: bool) -> dict:
    """One frontier row from a trial's config and (latest) result."""
    def pick(*keys):
        for k in keys:
            v = result.get(k)
            if isinstance(v, (int, float)) and not (isinstance(v, float) and math.isnan(v)):
                return float(v)
        return None

    final = names.EVAL_L0 in result
    return frontier.make_row(
        trial=key, site=config.get("site"), width=int(config.get("width", 0)),
        sparsity_coefficient=float(config.get("sparsity_coefficient", 0.0)),
        status="done" if (done and final) else ("evaluated" if final else "running"),
        step=int(result.get(names.STEP, 0) or 0),
        l0=pick(names.EVAL_L0, names.L0), fvu=pick(names.EVAL_FVU, names.FVU),
        delta_loss=pick(names.EVAL_DELTA_LOSS), mse=pick(names.EVAL_MSE),
        sae_url=result.get(names.SAE_URL))


class FrontierCallback(tune.Callback):
    """Keeps the frontier files under `sweep_url` current (see the module docstring for when).

    Args:
        sweep_url: the sweep's directory (any fsspec URL).
        png_every_s: the least time between PNG redraws while trials run.
        searched: a user's searcher proposes the points (trials key on Tune's ids too).
    """

    def __init__(self, sweep_url: str, png_every_s: float = 30.0, searched: bool = False):
        self.sweep_url, self.searched = sweep_url, searched
        self.png_every_s = png_every_s
        self.rows: dict[str, dict] = {}
        self._last_png = 0.0

    def setup(self, **info) -> None:
        # Rebuild from disk: a restarted driver continues with every row already written.
        for r in frontier.read_frontier(self.sweep_url):
            self.rows.setdefault(str(r.get("trial")), r)

    def _write(self, png: bool) -> None:
        try:
            frontier.write_frontier(self.sweep_url, self.rows.values(), png=png)
            if png:
                self._last_png = time.monotonic()
        except Exception:  # never let a plotting/storage hiccup kill the sweep
            log.exception("could not write the frontier under %s", self.sweep_url)

    def _key(self, trial) -> str:
        return trial_key(trial.config, trial.trial_id if self.searched else None)

    def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
        key = self._key(trial)
        self.rows[key] = row_from_result(key, trial.config, result, False)
        self._write(png=time.monotonic() - self._last_png >= self.png_every_s)

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        result = trial.last_result or {}
        key = self._key(trial)
        self.rows[key] = row_from_result(key, trial.config, result, True)
        self._write(png=True)

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        row = self.rows.get(self._key(trial))
        if row is not None:
            row["status"] = "error"
            self._write(png=False)

    def on_experiment_end(self, trials, **info) -> None:
        self._write(png=True)
