"""Reading batches of one broker's slice from storage, and the single-process stream.

`SliceReader(url, manifest, plan, broker).batch(j)` builds local batch j of a broker
exactly as the `Plan` says: it gathers the batch's rows from the shards that hold them,
converts to float32 and divides by the manifest's C (transcoder caches: both halves,
C being the input's scale). Shards come from a `ShardSource`:

- `ShardFiles` (reader="memmap", the default): a local shard is memory-mapped (no decode,
  no copy until the gather); a remote one (gs://, s3://, memory://) is read whole, once,
  into memory. With `verify` each shard's sha256 is checked when it is first loaded.
- `raysae.stream.raydata.RayDataShards` (reader="ray_data"): Ray Data read tasks fetch the
  next shards of the epoch ahead of use, anywhere in the cluster.

Every source counts the bytes it reads from storage (`ReadStats`): the figure the read
amplification benchmark and tests use.

`LocalStream` is the whole stream in one process, no Ray: the same batches in the same
order as the brokers for the same config. It is the notebook reader, the "every trial
reads its own copy" baseline, and what a lagging consumer uses to re-read missed batches.
"""

from __future__ import annotations

import collections
import dataclasses
from typing import Iterator

import numpy as np

from raysae import storage
from raysae.activations.shards import Manifest, read_shard
from raysae.stream.config import StreamConfig
from raysae.stream.plan import Plan

_CHUNK_ROWS = 512  # gather + scale in pieces that stay in cache


@dataclasses.dataclass
class ReadStats:
    bytes_read: int = 0     # bytes requested from storage
    rows_read: int = 0      # rows gathered into batches
    shards_loaded: int = 0  # shard opens / whole-shard reads
    batches: int = 0        # batches built


def is_local(url: str) -> bool:
    fs, _ = storage.fs_and_path(url)
    proto = fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,)
    return "file" in proto or "local" in proto


class ShardFiles:
    """Shards via `read_shard`: memory maps for local files, whole reads otherwise."""

    def __init__(self, url: str, manifest: Manifest, config: StreamConfig, stats: ReadStats):
        self.url, self.manifest, self.stats = url, manifest, stats
        self.verify = config.verify
        self.mapped = is_local(url) and not config.verify
        # maps cost a file descriptor; in-memory shards cost their size: keep a few
        self._cache: collections.OrderedDict[int, np.ndarray] = collections.OrderedDict()
        self._keep = 16 if self.mapped else 3

    wants_upcoming = False  # reads on demand; no read-ahead hint needed

    def get(self, shard: int, upcoming: list[int]) -> np.ndarray:
        arr = self._cache.get(shard)
        if arr is None:
            info = self.manifest.shards[shard]
            arr = read_shard(self.url, self.manifest, info, verify=self.verify, mmap=True)
            self.stats.shards_loaded += 1
            if not self.mapped:
                self.stats.bytes_read += info.bytes
            self._cache[shard] = arr
            while len(self._cache) > self._keep:
                self._cache.popitem(last=False)
        else:
            self._cache.move_to_end(shard)
        return arr

    def gathered(self, nrows: int) -> None:
        if self.mapped:  # a memory map reads only the rows we touch
            self.stats.bytes_read += nrows * self.manifest.row_bytes


def make_source(url: str, manifest: Manifest, config: StreamConfig, stats: ReadStats):
    if config.reader == "ray_data":
        from raysae.stream.raydata import RayDataShards  # imports ray

        return RayDataShards(url, manifest, config, stats)
    return ShardFiles(url, manifest, config, stats)


class SliceReader:
    """Builds the batches of one broker's slice of shards (see the module docstring)."""

    def __init__(self, url: str, manifest: Manifest, plan: Plan, broker: int,
                 source=None):
        self.url, self.manifest, self.plan, self.broker = url, manifest, plan, broker
        self.stats = ReadStats()
        self.source = source or make_source(url, manifest, plan.config, self.stats)
        if source is not None:
            self.stats = source.stats
        self.scale = np.float32(manifest.norm_scalar)

    def _upcoming(self, epoch: int, shard: int) -> list[int]:
        """Shards after `shard` in read order (rest of this epoch, then the next)."""
        order = list(self.plan.epoch_order(self.broker, epoch))
        rest = order[order.index(shard) + 1:]
        if self.plan.config.epochs is None or epoch + 1 < self.plan.config.epochs:
            rest += list(self.plan.epoch_order(self.broker, epoch + 1))
        return rest

    def batch(self, j: int) -> np.ndarray:
        """Local batch `j`: float32 [rows, d * len(parts)], divided by C."""
        gathers = self.plan.batch_rows(self.broker, j)
        n = sum(len(g.rows) for g in gathers)
        out = np.empty((n, self.manifest.width), dtype=np.float32)
        B, N = self.plan.config.batch_size, self.plan.slice_rows[self.broker]
        epoch = j * B // N
        for g in gathers:
            arr = self.source.get(g.shard, self._upcoming(epoch, g.shard)
                                  if self.source.wants_upcoming else [])
            contiguous = len(gathers) == 1 and arr.dtype == np.float32
            if contiguous:  # the usual case: gather straight into the output
                for a in range(0, n, _CHUNK_ROWS):
                    z = min(a + _CHUNK_ROWS, n)
                    np.take(arr, g.rows[a:z], axis=0, out=out[a:z])
                    np.divide(out[a:z], self.scale, out=out[a:z])
            else:
                out[g.out] = arr[g.rows]
            self.source.gathered(len(g.rows))
        if not contiguous:
            np.divide(out, self.scale, out=out)
        self.stats.rows_read += n
        self.stats.batches += 1
        return out


class LocalStream:
    """The shared stream's batches in one process, no Ray: `for g, batch in stream`.

    Same order as the brokers for the same `config`. `position` is the next global index
    (store it in checkpoints; pass it back as `start_index` to resume).
    """

    def __init__(self, manifest_url: str, config: StreamConfig | None = None,
                 start_index: int = 0):
        self.url = manifest_url
        self.config = config or StreamConfig()
        self.manifest = Manifest.load(manifest_url)
        self.plan = Plan(self.manifest, self.config)
        self.position = int(start_index)
        self._readers: dict[int, SliceReader] = {}

    def reader(self, broker: int) -> SliceReader:
        if broker not in self._readers:
            self._readers[broker] = SliceReader(self.url, self.manifest, self.plan, broker)
        return self._readers[broker]

    def batch(self, g: int) -> np.ndarray:
        """Global batch `g` (random access)."""
        b, j = self.plan.locate(g)
        return self.reader(b).batch(j)

    @property
    def stats(self) -> ReadStats:
        total = ReadStats()
        for r in self._readers.values():
            for f in dataclasses.fields(ReadStats):
                setattr(total, f.name, getattr(total, f.name) + getattr(r.stats, f.name))
        return total

    def __iter__(self) -> Iterator[tuple[int, np.ndarray]]:
        return self

    def __next__(self) -> tuple[int, np.ndarray]:
        if self.plan.total is not None and self.position >= self.plan.total:
            raise StopIteration
        g = self.position
        out = self.batch(g)
        self.position = g + 1
        return g, out

    def close(self) -> None:
        for r in self._readers.values():
            close = getattr(r.source, "close", None)
            if close:
                close()
        self._readers.clear()
