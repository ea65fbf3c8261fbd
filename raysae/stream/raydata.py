"""reader="ray_data": shards read by Ray Data tasks, ahead of use, anywhere in the cluster.

A `SliceReader` asks its source for shard s together with the shards it will need next
(the rest of the epoch's order). On a miss this source starts one Ray Data dataset over
``[s] + upcoming``, at most `ray_data_prefetch_shards` shards (`read_numpy`, order
preserved), and hands out whole shards as their rows arrive; Ray Data's streaming
executor reads the next ones ahead, within its memory budget. A seek starts a new one.

Not the default: a dataset costs seconds to start and decodes slower than a memory map
(BENCHMARKS.md). It earns its place where the broker's node should not do the reading:
remote storage with many nodes to spread the read tasks over. memory:// is per process
and cannot be read by Ray Data tasks.
"""

from __future__ import annotations

import collections
from typing import Iterator

import numpy as np
import ray
from pyarrow.fs import FSSpecHandler, PyFileSystem

from raysae import storage
from raysae.config import check
from raysae.data.config import StreamConfig
from raysae.data.shards import Manifest, ShardError, decode_rows, storage_dtype


class RayDataShards:
    """Whole shards (stored dtype, decoded) read by Ray Data; counts bytes read."""

    wants_upcoming = True

    def __init__(self, url: str, manifest: Manifest, config: StreamConfig, stats):
        check(not config.verify, "verify",
              "sha256 verification needs whole-file reads; use reader: memmap with verify")
        self.url, self.manifest, self.stats = url, manifest, stats
        self.prefetch = config.ray_data_prefetch_shards
        self.fs, self.root = storage.fs_and_path(url)
        self.local = "file" in (self.fs.protocol if isinstance(self.fs.protocol, tuple)
                                else (self.fs.protocol,))
        self._cache: collections.OrderedDict[int, np.ndarray] = collections.OrderedDict()
        self._stream: Iterator[tuple[int, np.ndarray]] | None = None
        self._next: list[int] = []  # shards the open dataset will still deliver, in order

    def _path(self, shard: int) -> str:
        return storage.join(self.root, self.manifest.shards[shard].name)

    def _check_size(self, shard: int) -> None:
        info = self.manifest.shards[shard]
        where = storage.join(self.url, info.name)
        try:
            size = self.fs.size(self._path(shard))
        except FileNotFoundError:
            raise ShardError(f"{where}: shard listed in the manifest is missing") from None
        if size != info.bytes:
            raise ShardError(f"{where}: {size} bytes but the manifest lists {info.bytes} "
                             f"(truncated?)")

    def _open(self, shards: list[int]) -> Iterator[tuple[int, np.ndarray]]:
        for s in shards:
            self._check_size(s)
        kw = {} if self.local else {"filesystem": PyFileSystem(FSSpecHandler(self.fs))}
        ds = ray.data.read_numpy([self._path(s) for s in shards], override_num_blocks=len(shards),
                                 **kw)
        ds.context.execution_options.preserve_order = True
        want = storage_dtype(self.manifest.dtype)
        pending: list[np.ndarray] = []
        have, i = 0, 0
        blocks = ds.iter_batches(batch_size=None, batch_format="numpy", prefetch_batches=2)
        for block in blocks:
            arr = block["data"]
            if len(arr) == 0:
                continue
            where = storage.join(self.url, self.manifest.shards[shards[min(i, len(shards) - 1)]].name)
            if arr.dtype != want or arr.ndim != 2 or arr.shape[1] != self.manifest.width:
                raise ShardError(f"{where}: {arr.dtype} {arr.shape} but manifest says "
                                 f"{self.manifest.dtype}, d={self.manifest.d} x "
                                 f"{len(self.manifest.parts)} part(s)")
            pending.append(arr)
            have += len(arr)
            while i < len(shards) and have >= self.manifest.shards[shards[i]].rows:
                rows = self.manifest.shards[shards[i]].rows
                allrows = np.concatenate(pending) if len(pending) > 1 else pending[0]
                yield shards[i], allrows[:rows]
                pending = [allrows[rows:]] if len(allrows) > rows else []
                have -= rows
                i += 1
        if i < len(shards) or have:
            where = storage.join(self.url, self.manifest.shards[shards[min(i, len(shards) - 1)]].name)
            raise ShardError(f"{where}: row count disagrees with the manifest")

    def get(self, shard: int, upcoming: list[int]) -> np.ndarray:
        if shard in self._cache:
            self._cache.move_to_end(shard)
            return self._cache[shard]
        if not self._next or self._next[0] != shard:
            order = list(dict.fromkeys([shard] + upcoming))[: self.prefetch]
            self._stream, self._next = self._open(list(order)), [int(s) for s in order]
        s, arr = next(self._stream)
        self._next.pop(0)
        info = self.manifest.shards[s]
        self.stats.bytes_read += info.bytes
        self.stats.shards_loaded += 1
        self._cache[s] = decode_rows(arr, self.manifest.dtype)
        while len(self._cache) > 3:
            self._cache.popitem(last=False)
        return self._cache[s]

    def gathered(self, nrows: int) -> None:
        pass  # whole shards were counted when read

    def close(self) -> None:
        self._stream, self._next = None, []
        self._cache.clear()
