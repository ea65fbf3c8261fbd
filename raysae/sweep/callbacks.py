"""`FrontierCallback`: keeps frontier.csv / frontier.json / frontier.png current during a sweep.

A Tune callback in the driver: after each result it updates that trial's row (training
L0 / FVU while it runs, the final evaluation once it is in), recomputes the non-dominated
sets per (site, width) with `raysae.evals.frontier` and rewrites the files. Writing happens
in a background thread that coalesces updates, so Tune's loop never waits on storage or
matplotlib. The PNG is redrawn at most every `png_every_s` while trials run and always when
one finishes. A packed trial's SAEs are rows of their own, keyed as they would be alone. State lives on storage: `setup` reads frontier.json back, so a restarted
driver keeps every row.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from typing import Callable

from ray import tune

from raysae import metrics as names
from raysae.storage import join as storage_join
from raysae.evals import frontier
from raysae.sweep.trainable import members_of, trial_key

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
        on_written: called with (rows, png URL) after a write that followed a finished trial.
    """

    def __init__(self, sweep_url: str, png_every_s: float = 30.0, searched: bool = False,
                 on_written: Callable[[list, str], None] | None = None):
        self.sweep_url, self.searched, self.on_written = sweep_url, searched, on_written
        self.png_every_s = png_every_s
        self.rows: dict[str, dict] = {}
        self._last_png = 0.0
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._pending: dict | None = None   # {"png": bool, "announce": bool} to write next
        self._writer: threading.Thread | None = None
        self._stop = False

    def __getstate__(self) -> dict:  # Tune pickles its callbacks with the experiment
        return {k: v for k, v in self.__dict__.items()
                if k not in ("_lock", "_wake", "_writer", "on_written")}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state, on_written=None, _writer=None)
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)

    def setup(self, **info) -> None:
        # Rebuild from disk: a restarted driver continues with every row already written.
        for r in frontier.read_frontier(self.sweep_url):
            self.rows.setdefault(str(r.get("trial")), r)
        self._writer = threading.Thread(target=self._loop, daemon=True, name="frontier-writer")
        self._writer.start()

    def _request(self, png: bool, announce: bool = False) -> None:
        """Ask for a write; requests made while one is being written merge into the next."""
        with self._lock:
            p = self._pending or {"png": False, "announce": False}
            self._pending = {"png": p["png"] or png, "announce": p["announce"] or announce}
            self._wake.notify()
        if self._writer is None:  # used without setup (e.g. directly in tests): write now
            self._flush()

    def _loop(self) -> None:
        while True:
            with self._lock:
                while self._pending is None and not self._stop:
                    self._wake.wait()
                if self._pending is None and self._stop:
                    return
            self._flush()

    def _flush(self) -> None:
        with self._lock:
            todo, self._pending = self._pending, None
            rows = [dict(r) for r in self.rows.values()]
        if todo is None:
            return
        try:
            written = frontier.write_frontier(self.sweep_url, rows, png=todo["png"])
            if todo["png"]:
                self._last_png = time.monotonic()
            if todo["announce"] and self.on_written is not None:
                self.on_written(written, storage_join(self.sweep_url, frontier.PNG_NAME))
        except Exception:  # never let a plotting/storage hiccup kill the sweep
            log.exception("could not write the frontier under %s", self.sweep_url)

    def _saes(self, trial, result: dict) -> list[tuple[str, dict, dict]]:
        """(key, point, result) of each SAE of the trial: itself, or a pack's members."""
        points = members_of(trial.config)
        if len(points) == 1:
            point = points[0]
            key = trial_key(point, trial.trial_id if self.searched else None)
            return [(key, point, result)]
        out = []
        for point in points:
            key = trial_key(point)
            row = result.get(names.MEMBERS, {}).get(key)
            if row is not None:  # a checkpoint-only report carries no member rows
                out.append((key, point, row))
        return out

    def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
        with self._lock:
            for key, point, row in self._saes(trial, result):
                self.rows[key] = row_from_result(key, point, row, False)
        self._request(png=time.monotonic() - self._last_png >= self.png_every_s)

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        result = trial.last_result or {}
        with self._lock:
            for key, point, row in self._saes(trial, result):
                self.rows[key] = row_from_result(key, point, row, True)
        self._request(png=True, announce=True)

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        keys = [trial_key(p, trial.trial_id if self.searched else None)
                for p in members_of(trial.config)]
        with self._lock:
            rows = [self.rows[k] for k in keys if k in self.rows]
            for row in rows:
                row["status"] = "error"
        if rows:
            self._request(png=False)

    def on_experiment_end(self, trials, **info) -> None:
        """The last write happens here, in the driver, so the files are final on return."""
        with self._lock:
            self._stop = True
            self._wake.notify()
        if self._writer is not None:
            self._writer.join()
            self._writer = None
        self._request(png=True)
