"""Building the batches of one broker's slice of shards, exactly as the `BatchPlan` says.

`SliceReader.rows(j)` is local batch j as stored (float32, or bf16 bit patterns as uint16),
raw: what a broker puts in the object store. With a contiguous plan a batch inside one
shard is a zero-copy view of it; a window shuffle gathers rows into a new array.
`to_float32` widens stored rows for a trainer (which divides by C itself).

Rows come from a source (`open_source` picks it): `ShardFiles` here hands out whole shards
with `get(shard, upcoming)` (local ones memory-mapped; read whole to check their sha256
with `verify`), `RangedShards` (`raysae.data.ranged`) the spans of remote shards a batch
needs with `spans(j, gathers)`, read ahead in bounded memory; the brokers can also use Ray
Data (`raysae.stream.raydata`). Every source counts the bytes it requests (`ReadStats`).
"""

from __future__ import annotations

import collections
import dataclasses

import numpy as np

from raysae import storage
from raysae.data.checks import BlockChecker
from raysae.data.plan import BatchPlan
from raysae.data.ranged import RangedShards
from raysae.data.shards import Manifest, decode_rows, read_shard, storage_dtype


@dataclasses.dataclass
class ReadStats:
    bytes_read: int = 0     # bytes requested from storage
    rows_read: int = 0      # rows gathered into batches
    shards_loaded: int = 0  # shard opens / whole-shard reads
    batches: int = 0        # batches built
    # range reads: most bytes the read-ahead buffer held at once (summed over readers: a
    # bound on what they held together)
    buffer_peak_bytes: int = 0

    def add(self, other: "ReadStats") -> None:
        for f in dataclasses.fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))


class ShardFiles:
    """Whole shards via `read_shard`: memory maps for local files, whole reads otherwise.

    Args:
        url: the cache directory.
        manifest: its manifest.
        verify: check each shard's sha256 when it is loaded (reads it whole).
        stats: where the bytes read are counted.
    """

    wants_upcoming = False  # reads on demand; no read-ahead hint needed

    def __init__(self, url: str, manifest: Manifest, verify: bool, stats: ReadStats):
        self.url, self.manifest, self.stats, self.verify = url, manifest, stats, verify
        self.mapped = storage.is_local(url) and not verify
        # maps cost a file descriptor; in-memory shards cost their size: keep a few
        self._cache: collections.OrderedDict[int, np.ndarray] = collections.OrderedDict()
        self._keep = 16 if self.mapped else 3

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

    def close(self) -> None:
        self._cache.clear()


def open_source(url: str, manifest: Manifest, plan: BatchPlan, broker: int, stats: ReadStats):
    """The shards of `reader="memmap"`: local ones memory-mapped, remote ones range-read
    (`RangedShards`), or read whole where `verify` checks every shard's sha256.

    Args:
        url: the cache directory.
        manifest: its manifest.
        plan: the batch order (range reads follow it ahead of use).
        broker: whose slice.
        stats: where the bytes requested are counted.
    Returns:
        A `ShardFiles` or a `RangedShards`.
    """
    if storage.is_local(url) or plan.config.verify:
        return ShardFiles(url, manifest, plan.config.verify, stats)
    return RangedShards(url, manifest, plan, broker, stats)


class SliceReader:
    """Builds the batches of one broker's slice of shards.

    Args:
        url: the cache directory.
        manifest: its manifest.
        plan: the batch order.
        broker: which slice.
        source: where rows come from (default `open_source`).
    """

    def __init__(self, url: str, manifest: Manifest, plan: BatchPlan, broker: int, source=None):
        self.url, self.manifest, self.plan, self.broker = url, manifest, plan, broker
        if source is None:
            source = open_source(url, manifest, plan, broker, ReadStats())
        self.source = source
        self.stats = source.stats
        self.stored = storage_dtype(manifest.dtype)
        # a ranged source checks the blocks it fetches itself
        self.ranged = getattr(source, "ranged", False)
        check = plan.config.check_blocks and not self.ranged
        self.checker = BlockChecker(url, manifest) if check else None

    def _upcoming(self, epoch: int, shard: int) -> list[int]:
        """Shards after `shard` in read order (rest of this epoch, then the next)."""
        order = list(self.plan.epoch_order(self.broker, epoch))
        rest = order[order.index(shard) + 1:]
        if self.plan.config.epochs is None or epoch + 1 < self.plan.config.epochs:
            rest += list(self.plan.epoch_order(self.broker, epoch + 1))
        return rest

    def _shard(self, shard: int, epoch: int) -> np.ndarray:
        upcoming = self._upcoming(epoch, shard) if (self.source.wants_upcoming or self.checker) else []
        arr = np.asarray(self.source.get(shard, upcoming if self.source.wants_upcoming else []))
        arr = arr.view(self.stored)  # plain ndarray, as stored (bf16: uint16)
        if self.checker is not None:
            self.checker.ahead(shard, arr)
            if upcoming and getattr(self.source, "mapped", False):  # check the next one too
                nxt = upcoming[0]
                self.checker.ahead(nxt, np.asarray(self.source.get(nxt, [])).view(self.stored))
        return arr

    def rows(self, j: int) -> np.ndarray:
        """Local batch `j` as stored: [rows, width] float32, or bf16 bit patterns (uint16);
        raw (not divided by C) and read only. A contiguous batch inside one shard is a view."""
        gathers = self.plan.batch_rows(self.broker, j)
        n = sum(len(g.rows) for g in gathers)
        epoch = j * self.plan.batch_size // self.plan.slice_rows[self.broker]
        # per gather: (stored rows base.. of its shard, checked; base)
        if self.ranged:
            spans = self.source.spans(j, gathers)
        else:
            spans = [(self._checked(g, self._shard(g.shard, epoch)), 0) for g in gathers]
        contiguous = self.plan.contiguous
        if contiguous and len(gathers) == 1:  # the fast path: a view of the shard
            (arr, base), g = spans[0], gathers[0]
            out = arr[g.rows[0] - base:g.rows[0] - base + n]
        else:
            out = np.empty((n, self.manifest.width), dtype=self.stored)
            for g, (arr, base) in zip(gathers, spans):
                if contiguous:  # straddles shards: one slice copy per shard
                    lo = g.rows[0] - base
                    out[g.out[0]:g.out[0] + len(g.rows)] = arr[lo:lo + len(g.rows)]
                elif len(gathers) == 1:  # window shuffle, one shard: gather in place
                    np.take(arr, g.rows - base if base else g.rows, axis=0, out=out)
                else:
                    out[g.out] = arr[g.rows - base]
        for g in gathers:
            self.source.gathered(len(g.rows))
        out.flags.writeable = False  # a view of a cached shard must never be written
        self.stats.rows_read += n
        self.stats.batches += 1
        return out

    def _checked(self, gather, arr: np.ndarray) -> np.ndarray:
        """`arr`, once the blocks the gather's rows come from match the manifest."""
        if self.checker is not None:
            self.checker.wait(gather.shard, arr, int(gather.rows.min()), int(gather.rows.max()) + 1)
        return arr

    def close(self) -> None:
        close = getattr(self.source, "close", None)
        if close:
            close()


def to_float32(stored: np.ndarray, manifest: Manifest) -> np.ndarray:
    """Rows as stored (float32, or bf16 bit patterns) -> float32 (float32 rows: no copy)."""
    if manifest.dtype == "bfloat16":
        return decode_rows(np.asarray(stored).view(np.uint16), manifest.dtype).astype(np.float32)
    return stored
