"""The cache job's one progress bar (rich): tokens cached of the total, tokens/s, GiB
written, shards done, elapsed and ETA. Ray Data's own bars are turned off while it shows."""

from __future__ import annotations

import logging
import time


class Progress:
    """`update(tokens, bytes)` once per finished shard; a no-op when disabled or nothing to do.

    Args:
        total_tokens: tokens the job will cache.
        total_shards: shards it will write.
        enabled: show the bar.
    """

    def __init__(self, total_tokens: int, total_shards: int, enabled: bool = True):
        self.t0 = time.perf_counter()
        self._bar = None
        self.total_shards, self.shards, self.tokens = total_shards, 0, 0
        if enabled and total_tokens > 0:
            from ray.data import DataContext
            from rich.progress import BarColumn, Progress as RichProgress
            from rich.progress import TextColumn, TimeElapsedColumn, TimeRemainingColumn

            DataContext.get_current().enable_progress_bars = False  # one bar, not two
            logging.getLogger("ray.data").setLevel(logging.ERROR)
            self._bar = RichProgress(TextColumn("caching"), BarColumn(),
                                     TextColumn("{task.fields[info]}"), TimeElapsedColumn(),
                                     TextColumn("ETA"), TimeRemainingColumn(), transient=False)
            self._task = self._bar.add_task("cache", total=total_tokens, info=self._info(0))
            self._bar.start()

    def _info(self, nbytes: int) -> str:
        rate = self.tokens / max(time.perf_counter() - self.t0, 1e-9)
        return (f"{self.tokens:,} tokens  {rate:,.0f} tok/s  {nbytes / 2**30:.2f} GiB  "
                f"shards {self.shards}/{self.total_shards}")

    def update(self, tokens: int, nbytes: int) -> None:
        """A shard is done: it held `tokens`; `nbytes` written in all so far."""
        self.shards += 1
        self.tokens += tokens
        if self._bar is not None:
            self._bar.update(self._task, advance=tokens, info=self._info(nbytes))

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None
