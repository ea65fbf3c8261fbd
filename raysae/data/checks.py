"""Checking shards against their manifest's per-block crc32s before any of their rows is used.

A `BlockChecker` checks the blocks of the shards a reader touches in a background thread,
running ahead (the reader hands it the next shard of the epoch too), and `wait(...)` holds a
batch back until the blocks its rows come from are checked, checking them itself if the
thread has not got there yet. A mismatch is a `ShardError` naming the shard and the rows,
so altered or corrupted data is never trained on. zlib's crc32 releases the GIL, so the
thread runs beside the reader. Caches written before block checksums are not checked.
Range-read shards (`raysae.data.ranged`) are checked block by block as they are fetched.
"""

from __future__ import annotations

import queue
import threading
import zlib

import numpy as np

from raysae import storage
from raysae.data.shards import Manifest, ShardError, ShardInfo

_UNCHECKED, _BUSY, _OK, _BAD = 0, 1, 2, 3


def block_error(url: str, info: ShardInfo, block: int) -> ShardError:
    """The error for a block of shard `info` whose rows do not match its crc32."""
    lo = block * info.block_rows
    hi = min(info.rows, lo + info.block_rows) - 1
    return ShardError(f"{storage.join(url, info.name)}: rows {lo}..{hi} do not match "
                      "the manifest's checksum (corrupted or altered shard)")


class BlockChecker:
    """Per-block crc32 checks of one cache's shards (see the module docstring).

    Args:
        url: the cache directory (for error messages).
        manifest: its manifest (the checksums).
    """

    def __init__(self, url: str, manifest: Manifest):
        self.url, self.manifest = url, manifest
        self._state: dict[int, np.ndarray] = {}
        self._arrays: dict[int, np.ndarray] = {}
        self._cond = threading.Condition()
        self._queue: queue.Queue = queue.Queue()
        self._thread: threading.Thread | None = None
        self.blocks_checked = 0

    def _blocks(self, shard: int) -> np.ndarray:
        if shard not in self._state:
            self._state[shard] = np.full(len(self.manifest.shards[shard].crc32), _UNCHECKED, np.int8)
        return self._state[shard]

    def ahead(self, shard: int, arr: np.ndarray) -> None:
        """Check `shard` (rows as stored, `arr`) in the background."""
        if not self.manifest.shards[shard].crc32:
            return
        with self._cond:
            if shard in self._arrays:
                return
            self._arrays[shard] = arr
            self._blocks(shard)
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="raysae-block-check",
                                            daemon=True)
            self._thread.start()
        self._queue.put(shard)

    def _run(self) -> None:
        while True:
            shard = self._queue.get()
            for block in range(len(self.manifest.shards[shard].crc32)):
                try:
                    self._check(shard, block)
                except ShardError:
                    break  # recorded: the reader raises it when it needs those rows

    def _check(self, shard: int, block: int) -> None:
        """Check one block (or wait while another thread does); raise if it is bad."""
        with self._cond:
            states = self._blocks(shard)
            while states[block] == _BUSY:
                self._cond.wait()
            if states[block] == _UNCHECKED:
                states[block] = _BUSY
                arr = self._arrays[shard]
            else:
                arr = None
        if arr is not None:
            info = self.manifest.shards[shard]
            lo = block * info.block_rows
            raw = np.ascontiguousarray(arr[lo:lo + info.block_rows]).view(np.uint8)
            good = zlib.crc32(raw) == info.crc32[block]
            with self._cond:
                states[block] = _OK if good else _BAD
                self.blocks_checked += 1
                self._cond.notify_all()
        if states[block] == _BAD:
            raise block_error(self.url, self.manifest.shards[shard], block)

    def wait(self, shard: int, arr: np.ndarray, lo: int, hi: int) -> None:
        """Return once rows [lo, hi) of `shard` are checked; ShardError if one is bad."""
        info = self.manifest.shards[shard]
        if not info.crc32 or hi <= lo:
            return
        with self._cond:
            self._arrays.setdefault(shard, arr)
            self._blocks(shard)
        for block in range(lo // info.block_rows, (hi - 1) // info.block_rows + 1):
            self._check(shard, block)
