"""What a sweep prints while it runs: one line per event, and one live progress display.

`SweepProgress` is a Tune callback in the driver. Events (a trial started, finished or
failed, the frontier rewritten) are one line each (a packed trial's finish: one more per SAE). Progress (per trial: step / total,
tokens/s, L0, FVU, ETA; overall: trials done and ETA) is a live table in a terminal (rich),
and a plain line every `plain_every_s` seconds when the output is a log or runs under
`ray job submit`. Tune's own output is off unless the user asks for it (`-v`).
"""

from __future__ import annotations

import dataclasses
import math
import sys
import threading
import time
from typing import Callable, TextIO

from ray import tune

from raysae import metrics as names


@dataclasses.dataclass
class TrialProgress:
    name: str
    total: int                  # steps the trial trains
    started: float
    step: int = 0
    rate: float = 0.0           # steps per second (recent)
    l0: float | None = None
    fvu: float | None = None
    status: str = "running"     # running | done | failed
    _mark: tuple[float, int] | None = None

    def update(self, step: int, now: float) -> None:
        if self._mark is not None and step > self._mark[1] and now > self._mark[0]:
            recent = (step - self._mark[1]) / (now - self._mark[0])
            self.rate = recent if self.rate == 0 else 0.5 * self.rate + 0.5 * recent
        self._mark = (now, step)
        self.step = step

    def eta_s(self) -> float | None:
        if self.status != "running":
            return 0.0
        return (self.total - self.step) / self.rate if self.rate > 0 else None


def duration(seconds: float | None) -> str:
    """1h02m, 3m05s, 12s; '?' when unknown."""
    if seconds is None:
        return "?"
    s = int(round(seconds))
    if s >= 3600:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"


def _num(v: float | None, fmt: str) -> str:
    return "-" if v is None else format(v, fmt)


class SweepProgress(tune.Callback):
    """Prints the sweep's events and progress (see the module docstring).

    Args:
        total_trials: trials the sweep runs.
        steps_of: a trial's config -> the steps it trains.
        name_of: a trial's config -> its display name.
        batch_size: rows per step (for tokens/s).
        out: where to print (default stdout).
        live: a live table (default: when `out` is a terminal).
        plain_every_s: seconds between progress lines without a live table.
    """

    def __init__(self, total_trials: int, steps_of: Callable[[dict], int],
                 name_of: Callable[[dict], str], batch_size: int, out: TextIO | None = None,
                 live: bool | None = None, plain_every_s: float = 60.0):
        self.total, self.steps_of, self.name_of = total_trials, steps_of, name_of
        self.batch_size, self.out = batch_size, out or sys.stdout
        self.live_wanted = self.out.isatty() if live is None else live
        self.plain_every_s = plain_every_s
        self.trials: dict[str, TrialProgress] = {}
        self.t0 = time.monotonic()
        self._last_plain = self.t0
        self._live = None
        self._lock = threading.Lock()

    def __getstate__(self) -> dict:  # Tune pickles its callbacks with the experiment
        return {k: v for k, v in self.__dict__.items() if k not in ("out", "_live", "_lock")}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state, out=sys.stdout, _live=None, _lock=threading.Lock())

    # --- events ------------------------------------------------------------------------
    def say(self, line: str) -> None:
        """One event line (above the live table when there is one)."""
        with self._lock:
            if self._live is not None:
                self._live.console.print(line, highlight=False, markup=False)
            else:
                print(line, file=self.out, flush=True)

    def setup(self, **info) -> None:
        if self.live_wanted:
            from rich.console import Console
            from rich.live import Live

            self._live = Live(self._table(), console=Console(file=self.out),
                              refresh_per_second=2, transient=False)
            self._live.start()

    def on_trial_start(self, iteration, trials, trial, **info) -> None:
        name = self.name_of(trial.config)
        self.trials[trial.trial_id] = TrialProgress(name, self.steps_of(trial.config),
                                                    time.monotonic())
        self.say(f"started  {name} ({len(self.trials)}/{self.total})")

    def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
        p = self.trials.get(trial.trial_id)
        if p is None:
            return
        now = time.monotonic()
        p.update(int(result.get(names.STEP, p.step) or 0), now)
        for attr, keys in (("l0", (names.EVAL_L0, names.L0)), ("fvu", (names.EVAL_FVU, names.FVU))):
            v = next((result[k] for k in keys if isinstance(result.get(k), (int, float))), None)
            if v is not None:
                setattr(p, attr, float(v))
        self._refresh(now)

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        p = self.trials.get(trial.trial_id)
        result = trial.last_result or {}
        if p is None:  # finished before a restart: its saved result was reported again
            p = self.trials[trial.trial_id] = TrialProgress(
                self.name_of(trial.config), self.steps_of(trial.config), time.monotonic())
        p.status, p.step = "done", p.total
        dl = result.get(names.EVAL_DELTA_LOSS)
        self.on_trial_result(iteration, trials, trial, result)
        members = result.get(names.MEMBERS) or {}
        self.say(f"done     {p.name}"
                 + ("" if members else f"  L0 {_num(p.l0, '.1f')}  FVU {_num(p.fvu, '.3f')}")
                 + (f"  dLoss {dl:.4f}" if isinstance(dl, (int, float)) else "")
                 + f"  ({duration(time.monotonic() - p.started)})  {self._done()}/{self.total} done")
        for key, row in members.items():  # a pack's SAEs, one line each
            l0, fvu = (next((row[k] for k in keys if isinstance(row.get(k), (int, float))), None)
                       for keys in ((names.EVAL_L0, names.L0), (names.EVAL_FVU, names.FVU)))
            dl = row.get(names.EVAL_DELTA_LOSS)
            self.say(f"         {key}  L0 {_num(l0, '.1f')}  FVU {_num(fvu, '.3f')}"
                     + (f"  dLoss {dl:.4f}" if isinstance(dl, (int, float)) else ""))

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        p = self.trials.get(trial.trial_id)
        name = p.name if p else self.name_of(trial.config)
        if p:
            p.status = "failed"
        where = getattr(trial, "path", None) or ""
        self.say(f"failed   {name}: see {where}/error.txt; `--resume` retries it")

    def frontier_written(self, rows: list[dict], url: str) -> None:
        """Called by the frontier writer: one line when the finished SAEs' frontier changes."""
        done = [r for r in rows if r.get("status") == "done"]
        on = tuple(sorted(str(r.get("trial")) for r in done
                          if r.get("frontier_delta_loss") or r.get("frontier_fvu")))
        if on == getattr(self, "_frontier", None):
            return
        self._frontier = on
        self.say(f"frontier {len(on)} of {len(done)} finished SAEs on it: {url}")

    def on_experiment_end(self, trials, **info) -> None:
        if self._live is not None:
            self._live.update(self._table())
            self._live.stop()
            self._live = None

    # --- progress ----------------------------------------------------------------------
    def _done(self) -> int:
        return sum(1 for p in self.trials.values() if p.status == "done")

    def _eta(self) -> float | None:
        """All trials' ETA at the running ones' pace (trials not started wait for a slot)."""
        running = [p for p in self.trials.values() if p.status == "running"]
        waiting = self.total - len(self.trials)
        if not running:
            return 0.0 if not waiting else None
        if any(p.rate <= 0 for p in running):
            return None
        eta = max(p.eta_s() for p in running)
        if waiting:
            eta += max(p.total / p.rate for p in running) * math.ceil(waiting / len(running))
        return eta

    def _refresh(self, now: float) -> None:
        if self._live is not None:
            self._live.update(self._table())
        elif now - self._last_plain >= self.plain_every_s:
            self._last_plain = now
            self.say(self.plain_line())

    def plain_line(self) -> str:
        """Progress in one line, for logs: the sweep, and its slowest running trial."""
        running = [p for p in self.trials.values() if p.status == "running"]
        line = f"progress {self._done()}/{self.total} done, {len(running)} running"
        if running:
            rate = sum(p.rate for p in running) * self.batch_size
            slow = max(running, key=lambda p: (p.eta_s() is None, p.eta_s() or 0))
            line += (f", {rate / 1e3:.1f}k tok/s in all; slowest {slow.name} "
                     f"{slow.step}/{slow.total} L0 {_num(slow.l0, '.1f')} "
                     f"FVU {_num(slow.fvu, '.3f')}")
        return line + f"; ETA {duration(self._eta())}"

    def _table(self):
        from rich.table import Table

        table = Table(title=f"{self._done()}/{self.total} SAEs done, "
                            f"{duration(time.monotonic() - self.t0)} elapsed, "
                            f"ETA {duration(self._eta())}", title_justify="left")
        for col in ("trial", "step", "tok/s", "L0", "FVU", "ETA"):
            table.add_column(col, justify="left" if col == "trial" else "right")
        for p in self.trials.values():
            table.add_row(p.name, f"{p.step}/{p.total}",
                          f"{p.rate * self.batch_size / 1e3:.1f}k" if p.status == "running" else "",
                          _num(p.l0, ".1f"), _num(p.fvu, ".3f"),
                          p.status if p.status != "running" else duration(p.eta_s()))
        return table
