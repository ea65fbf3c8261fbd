"""The cache job's progress bar (rich): shards done, tokens/s and GiB written so far."""

from __future__ import annotations

import time


class Progress:
    """`update(tokens, bytes)` once per finished shard; a no-op when disabled or total is 0."""

    def __init__(self, total: int, enabled: bool = True):
        self.t0 = time.perf_counter()
        self._bar = None
        if enabled and total > 0:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress as RichProgress
            from rich.progress import TextColumn, TimeElapsedColumn, TimeRemainingColumn

            self._bar = RichProgress(TextColumn("caching shards"), BarColumn(), MofNCompleteColumn(),
                                     TextColumn("{task.fields[rate]}"), TimeElapsedColumn(),
                                     TimeRemainingColumn(), transient=False)
            self._task = self._bar.add_task("cache", total=total, rate="")
            self._bar.start()

    def update(self, tokens: int, nbytes: int) -> None:
        if self._bar is None:
            return
        dt = max(time.perf_counter() - self.t0, 1e-9)
        rate = f"{tokens / dt:,.0f} tok/s  {nbytes / 2**30:.2f} GiB"
        self._bar.update(self._task, advance=1, rate=rate)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None
