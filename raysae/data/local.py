"""The activation stream in one process, no Ray: the same batches, in the same order, as the
shared brokers give for the same batch size and config.

`LocalStream` is the notebook reader, the "every trial reads its own copy" baseline and
what a lagging consumer uses to rebuild batches it missed; `LocalSource` opens one at a
position (the trainer's `BatchSource` protocol).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from raysae.config import ConfigError
from raysae.data.config import StreamConfig
from raysae.data.plan import BatchPlan
from raysae.data.reader import ReadStats, SliceReader, to_float32
from raysae.data.shards import Manifest


class LocalStream:
    """`for batch in LocalStream(url, 4096)`: float32 [batch_size, width] raw rows.

    Args:
        manifest_url: the cache directory (any fsspec URL).
        batch_size: rows per batch.
        config: order and reading settings (default `StreamConfig()`).
        start_index: the global index of the first batch (a checkpoint's position).

    `position` is the global index of the next batch; `batch(g)` reads any batch.
    """

    def __init__(self, manifest_url: str, batch_size: int, config: StreamConfig | None = None,
                 start_index: int = 0):
        self.url = manifest_url
        self.config = config or StreamConfig()
        if self.config.reader != "memmap":
            raise ConfigError(f"stream.reader: {self.config.reader!r} reads through Ray "
                              "brokers; a LocalStream reads shards itself (reader: memmap)")
        self.manifest = Manifest.load(manifest_url)
        self.plan = BatchPlan(self.manifest, batch_size, self.config)
        self.position = int(start_index)
        self._readers: dict[int, SliceReader] = {}

    def reader(self, broker: int) -> SliceReader:
        if broker not in self._readers:
            self._readers[broker] = SliceReader(self.url, self.manifest, self.plan, broker)
        return self._readers[broker]

    def batch(self, g: int) -> np.ndarray:
        """Global batch `g` (random access), float32."""
        b, j = self.plan.locate(g)
        return to_float32(self.reader(b).rows(j), self.manifest)

    def describe(self, g: int) -> str:
        """Where batch `g`'s rows are stored (the shard and rows), for error messages."""
        return f"{self.url}: {self.plan.describe(g)}"

    @property
    def stats(self) -> ReadStats:
        total = ReadStats()
        for r in self._readers.values():
            total.add(r.stats)
        return total

    def __iter__(self) -> "LocalStream":
        return self

    def __next__(self) -> np.ndarray:
        if self.plan.total is not None and self.position >= self.plan.total:
            raise StopIteration
        out = self.batch(self.position)
        self.position += 1
        return out

    def close(self) -> None:
        for r in self._readers.values():
            r.close()
        self._readers.clear()

    def __enter__(self) -> "LocalStream":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class LocalSource(NamedTuple):
    """Opens `LocalStream`s: `train(config, LocalSource(url, 4096), norm_scalar=C)`."""

    manifest_url: str
    batch_size: int
    config: StreamConfig = StreamConfig()

    def open(self, position: int | None) -> LocalStream:
        """A stream whose first batch is `position` (None: the beginning)."""
        return LocalStream(self.manifest_url, self.batch_size, self.config, position or 0)
