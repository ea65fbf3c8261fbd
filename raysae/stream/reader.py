"""Reading batches of one broker's slice from storage, and the single-process stream.

`SliceReader(url, manifest, plan, broker)` builds local batch j of a broker exactly as
the `Plan` says. `.rows(j)` is the batch as stored (float32, or bf16 bit patterns as
uint16), raw: what a broker puts in the object store. With a contiguous plan
(`shuffle_window` <= 1) a batch inside one shard is a zero-copy view of it, so the
broker's `ray.put` is the only copy from the page cache; a window shuffle gathers rows
one by one into a new array instead (measured in BENCHMARKS.md: several times slower).
`to_float32(rows, manifest, normalize)` widens to float32 and divides by the manifest's
C (transcoder caches: both halves, C being the input's scale): the consumer's step, one
copy per trial, in parallel across trials; `.batch(j)` does both. Shards come from a
`ShardSource`:

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
from raysae.activations.shards import Manifest, decode_rows, read_shard, storage_dtype
from raysae.stream.config import StreamConfig
from raysae.stream.plan import Plan

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
        self.stored = storage_dtype(manifest.dtype)

    def _upcoming(self, epoch: int, shard: int) -> list[int]:
        """Shards after `shard` in read order (rest of this epoch, then the next)."""
        order = list(self.plan.epoch_order(self.broker, epoch))
        rest = order[order.index(shard) + 1:]
        if self.plan.config.epochs is None or epoch + 1 < self.plan.config.epochs:
            rest += list(self.plan.epoch_order(self.broker, epoch + 1))
        return rest

    def _shard(self, shard: int, epoch: int) -> np.ndarray:
        arr = self.source.get(shard, self._upcoming(epoch, shard)
                              if self.source.wants_upcoming else [])
        return np.asarray(arr).view(self.stored)  # plain ndarray, as stored (bf16: uint16)

    def rows(self, j: int) -> np.ndarray:
        """Local batch `j` as stored: [rows, width] float32, or bf16 bit patterns (uint16);
        raw, not divided by C. Read only.

        Contiguous plans (shuffle_window <= 1) take a batch that lies in one shard as a
        view of it: zero copy (a memory map's pages go straight to whoever copies them,
        e.g. the broker's `ray.put`). Otherwise rows are gathered into a new array.
        """
        gathers = self.plan.batch_rows(self.broker, j)
        n = sum(len(g.rows) for g in gathers)
        B, N = self.plan.config.batch_size, self.plan.slice_rows[self.broker]
        epoch = j * B // N
        contiguous = self.plan.contiguous
        if contiguous and len(gathers) == 1:  # the fast path: a view of the shard
            g = gathers[0]
            out = self._shard(g.shard, epoch)[g.rows[0]:g.rows[0] + n]
        else:
            out = np.empty((n, self.manifest.width), dtype=self.stored)
            for g in gathers:
                arr = self._shard(g.shard, epoch)
                if contiguous:  # straddles shards: one slice copy per shard
                    out[g.out[0]:g.out[0] + len(g.rows)] = arr[g.rows[0]:g.rows[0] + len(g.rows)]
                elif len(gathers) == 1:  # window shuffle, one shard: gather in place
                    np.take(arr, g.rows, axis=0, out=out)
                else:
                    out[g.out] = arr[g.rows]
        for g in gathers:
            self.source.gathered(len(g.rows))
        out.flags.writeable = False  # a view of a cached shard must never be written
        self.stats.rows_read += n
        self.stats.batches += 1
        return out

    def batch(self, j: int, normalize: bool = True) -> np.ndarray:
        """Local batch `j` as float32 [rows, d * len(parts)], divided by C if `normalize`."""
        return to_float32(self.rows(j), self.manifest, normalize)


def to_float32(stored: np.ndarray, manifest: Manifest, normalize: bool = True) -> np.ndarray:
    """Rows as stored (float32, or bf16 bit patterns) -> float32, divided by C if `normalize`
    (transcoder caches: both halves by the one C, the input's scale).

    float32 rows with `normalize=False` come back as they are (no copy, read only);
    anything else is one pass into a new array (the bf16 widening and /C are exact and
    fused). Identical numbers to dividing the float32 rows by float32(C) in numpy.
    """
    if manifest.dtype == "bfloat16":
        stored = decode_rows(np.asarray(stored).view(np.uint16), manifest.dtype)
    if not normalize:
        return stored if stored.dtype == np.float32 else stored.astype(np.float32)
    out = np.empty(stored.shape, dtype=np.float32)
    np.divide(stored, np.float32(manifest.norm_scalar), out=out, dtype=np.float32)
    return out


class LocalStream:
    """The shared stream's batches in one process, no Ray: `for g, batch in stream`.

    Same batches as a `BatchStream` for the same `config` and `normalize`: float32, divided
    by C when `normalize`, else raw (a trainer given `norm_scalar` divides on device).
    `position` is the next global index (store it in checkpoints; pass it back as
    `start_index` to resume).
    """

    def __init__(self, manifest_url: str, config: StreamConfig | None = None,
                 start_index: int = 0, normalize: bool = True):
        self.url = manifest_url
        self.normalize = normalize
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
        return self.reader(b).batch(j, self.normalize)

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
