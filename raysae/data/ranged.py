"""Range reads of remote shards: only the rows a reader's batches need, fetched ahead of use
in a background thread into a buffer bounded by `StreamConfig.read_ahead_mib`.

`RangedShards` is the `SliceReader` source for remote shards (gs://, any non-local fsspec
URL) unless `verify` asks for whole-shard sha256s. Its fetch thread walks the reader's
`BatchPlan` from the batch being read onwards (into the next shard in read order and the next
epoch) and fetches the checksummed blocks (`ShardInfo.block_rows` rows) that each batch's
rows span, every block once while a batch still needs it, with `fs.cat_ranges` (runs of
consecutive blocks one request each, concurrent on async filesystems such as gcsfs). A shard's header is one small ranged read
(`data_offset`). Each block is checked against the manifest's crc32 in the fetch thread, so
batches are built from checked rows only; a mismatch is a `ShardError` naming the shard and
rows. A batch needing more blocks at once than the bound is a ConfigError naming
`read_ahead_mib`. Random access (a seek, a rebuilt batch) restarts the read-ahead there.
"""

from __future__ import annotations

import collections
import threading
import zlib

import numpy as np

from raysae import storage
from raysae.config import ConfigError
from raysae.data.checks import block_error
from raysae.data.plan import BatchPlan, Gather
from raysae.data.shards import Manifest, ShardError, block_rows_for, data_offset, storage_dtype

Key = tuple[int, int]  # (shard, block)
_GROUP = 16  # blocks per cat_ranges call (its requests run concurrently on async filesystems)
_REQUEST_BYTES = 16 << 20  # consecutive blocks are fetched in one request up to this size


class RangedShards:
    """Rows of remote shards by range reads, read ahead along the plan (module docstring).

    Args:
        url: the cache directory (a non-local fsspec URL).
        manifest: its manifest.
        plan: the batch order; the read-ahead follows `broker`'s batches in it.
        broker: whose slice of shards.
        stats: where the bytes requested and the buffer's high-water mark are counted.
    """

    ranged = True          # SliceReader asks for `spans(j, gathers)`, already checked
    wants_upcoming = False

    def __init__(self, url: str, manifest: Manifest, plan: BatchPlan, broker: int, stats):
        self.url, self.manifest, self.plan, self.broker, self.stats = url, manifest, plan, broker, stats
        self.fs, self.root = storage.fs_and_path(url)
        self.limit = int(plan.config.read_ahead_mib * 2**20)
        # Plan no further ahead than the bound could hold distinct batches: when every block
        # is already wanted (a cache smaller than the bound) admission never waits, and an
        # endless stream would otherwise be planned forever.
        self.horizon = max(1, self.limit // max(1, plan.stored_batch_bytes))
        self.check = plan.config.check_blocks
        self.stored = storage_dtype(manifest.dtype)
        self._offsets: dict[int, int] = {}        # shard -> byte offset of row 0 (fetch thread)
        self._cond = threading.Condition()
        self._want: dict[Key, int] = {}           # blocks of admitted batches -> last batch using it
        self._pending: collections.deque[Key] = collections.deque()  # admitted, not yet fetched
        self._blocks: dict[Key, np.ndarray] = {}  # fetched and checked
        self._failed: dict[Key, BaseException] = {}
        self._reserved = 0      # bytes of wanted blocks, plus stale ones still in flight
        self._held = 0          # bytes fetched or in flight: the memory actually held
        self._inflight = 0      # bytes of the group being fetched
        self._staged: tuple[int, int, list[Key]] | None = None  # (gen, batch, keys) to admit
        self._next: int | None = None    # next batch to plan
        self._cursor: int | None = None  # the batch the reader will ask for next
        self._error: tuple[int, BaseException] | None = None  # planning stopped at this batch
        self._gen = 0
        self._closed = False
        self._thread: threading.Thread | None = None

    # --- blocks ----------------------------------------------------------------------------
    def _block_rows(self, shard: int) -> int:
        info = self.manifest.shards[shard]
        return info.block_rows or block_rows_for(self.manifest.row_bytes)

    def _rows_of(self, key: Key) -> tuple[int, int]:
        br, rows = self._block_rows(key[0]), self.manifest.shards[key[0]].rows
        return key[1] * br, min(rows, (key[1] + 1) * br)

    def _bytes(self, key: Key) -> int:
        lo, hi = self._rows_of(key)
        return (hi - lo) * self.manifest.row_bytes

    def _keys(self, gather: Gather) -> list[Key]:
        """The blocks spanning a gather's rows (a window's rows are dense in their span)."""
        br = self._block_rows(gather.shard)
        lo, hi = int(gather.rows.min()), int(gather.rows.max())
        return [(gather.shard, b) for b in range(lo // br, hi // br + 1)]

    # --- the reader's side -----------------------------------------------------------------
    def spans(self, j: int, gathers: list[Gather]) -> list[tuple[np.ndarray, int]]:
        """For each gather of local batch `j`: (rows lo..hi of its shard as stored, lo), where
        lo..hi spans the gather's rows. Blocks are checked; raises their ShardError."""
        keys = [self._keys(g) for g in gathers]
        with self._cond:
            if self._cursor != j:
                self._reset(j)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, daemon=True,
                                                name="raysae-range-read")
                self._thread.start()
            self._cond.notify_all()
            for ks in keys:
                for key in ks:
                    while key not in self._blocks:
                        if self._closed:
                            raise RuntimeError("the shard reader was closed")
                        if key in self._failed:
                            raise self._failed[key]
                        if self._error is not None and self._error[0] <= j:
                            raise self._error[1]
                        self._cond.wait()
            blocks = [[self._blocks[k] for k in ks] for ks in keys]
        out = []
        for g, ks, bl in zip(gathers, keys, blocks):
            lo, hi = int(g.rows.min()), int(g.rows.max()) + 1
            first = self._rows_of(ks[0])[0]
            if len(bl) == 1:
                out.append((bl[0][lo - first:hi - first], lo))
                continue
            last = self._rows_of(ks[-1])[0]
            parts = [bl[0][lo - first:]] + bl[1:-1] + [bl[-1][:hi - last]]
            out.append((np.concatenate(parts), lo))
        self._release(j)  # what is handed out is a copy, or a view that keeps its block alive
        return out

    def _release(self, j: int) -> None:
        """Batch `j` is built: drop the blocks no later admitted batch needs, but keep those
        batch j+1 shares with it (a block across a batch boundary, a window's blocks) even if
        the fetch thread has not admitted j+1 yet, so no block is fetched twice in a row."""
        nxt = j + 1
        shared = set()
        if self.plan.has(self.broker, nxt):
            shared = {k for g in self.plan.batch_rows(self.broker, nxt) for k in self._keys(g)}
        with self._cond:
            for key in [k for k, last in self._want.items() if last <= j]:
                if key in shared:
                    self._want[key] = nxt
                    continue
                del self._want[key]
                self._blocks.pop(key, None)
                self._failed.pop(key, None)
                self._reserved -= self._bytes(key)
                self._held -= self._bytes(key)
            self._cursor = j + 1
            self._cond.notify_all()

    def _reset(self, j: int) -> None:
        """Read ahead from batch `j` (held lock). A group in flight becomes stale."""
        self._gen += 1
        for d in (self._want, self._blocks, self._failed):
            d.clear()
        self._pending.clear()
        self._staged = self._error = None
        self._reserved = self._held = self._inflight
        self._next = self._cursor = j

    def gathered(self, nrows: int) -> None:
        pass  # bytes are counted as they are fetched

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._reset(self._cursor or 0)
            self._cond.notify_all()

    # --- the fetch thread ------------------------------------------------------------------
    def _run(self) -> None:
        while True:
            with self._cond:
                task = self._task()
            if task is None:
                return
            kind, gen, arg = task
            try:
                if kind == "plan":
                    self._plan(gen, arg)
                else:
                    self._fetch(gen, arg)
            except BaseException as e:  # a bug, never silent: the reader raises it
                with self._cond:
                    if gen == self._gen:
                        self._error = (self._cursor or 0, e)
                    self._cond.notify_all()
                return

    def _task(self):
        """Next thing to do (held lock): admit a planned batch, plan one, or fetch a group."""
        while not self._closed:
            if self._staged is not None and self._admit():
                continue
            if (self._staged is None and self._error is None and len(self._pending) < _GROUP
                    and self._next is not None and self.plan.has(self.broker, self._next)
                    and self._next - (self._cursor or 0) < self.horizon):
                self._next += 1
                return "plan", self._gen, self._next - 1
            if self._pending:
                group = [self._pending.popleft() for _ in range(min(_GROUP, len(self._pending)))]
                self._inflight = sum(self._bytes(k) for k in group)
                self._held += self._inflight
                self.stats.buffer_peak_bytes = max(self.stats.buffer_peak_bytes, self._held)
                return "fetch", self._gen, group
            self._cond.wait()
        return None

    def _admit(self) -> bool:
        """Admit the staged batch if its new blocks fit in the bound (held lock)."""
        gen, k, keys = self._staged
        if gen != self._gen:
            self._staged = None
            return True
        new = [key for key in dict.fromkeys(keys) if key not in self._want]
        need = sum(self._bytes(key) for key in new)
        if self._reserved + need > self.limit:
            return False  # wait for the reader to release blocks
        for key in keys:
            self._want[key] = k
        self._pending.extend(new)
        self._reserved += need
        self._staged = None
        return True

    def _plan(self, gen: int, k: int) -> None:
        keys = [key for g in self.plan.batch_rows(self.broker, k) for key in self._keys(g)]
        total = sum(self._bytes(key) for key in dict.fromkeys(keys))
        with self._cond:
            if gen != self._gen:
                return
            if total > self.limit:
                self._error = (k, ConfigError(
                    f"stream.read_ahead_mib: batch {k} of broker {self.broker} spans "
                    f"{total / 2**20:.2f} MiB of blocks, more than read_ahead_mib="
                    f"{self.plan.config.read_ahead_mib} (a batch, or with a window shuffle "
                    "the windows it draws from, must fit)"))
            else:
                self._staged = (gen, k, keys)
            self._cond.notify_all()

    def _offset(self, shard: int) -> int:
        if shard not in self._offsets:
            info = self.manifest.shards[shard]
            offset, nbytes = data_offset(self.url, self.manifest, info)
            self.stats.bytes_read += nbytes
            self.stats.shards_loaded += 1
            self._offsets[shard] = offset
        return self._offsets[shard]

    def _fetch(self, gen: int, group: list[Key]) -> None:
        results: dict[Key, np.ndarray | BaseException] = {}
        ranges = []
        for key in group:
            try:
                ranges.append((key, self._offset(key[0])))
            except ShardError as e:  # missing, truncated or mislaid shard: its blocks fail
                results[key] = e
        # one request per run of consecutive blocks of a shard, up to _REQUEST_BYTES
        runs: list[list[tuple[Key, int]]] = []
        for key, off in ranges:
            last = runs[-1][-1][0] if runs else None
            if (last is not None and last == (key[0], key[1] - 1)
                    and sum(self._bytes(k) for k, _ in runs[-1]) + self._bytes(key) <= _REQUEST_BYTES):
                runs[-1].append((key, off))
            else:
                runs.append([(key, off)])
        if runs:
            rb = self.manifest.row_bytes
            paths = [storage.join(self.root, self.manifest.shards[r[0][0][0]].name) for r in runs]
            starts = [r[0][1] + self._rows_of(r[0][0])[0] * rb for r in runs]
            ends = [s + sum(self._bytes(k) for k, _ in r) for r, s in zip(runs, starts)]
            self.stats.bytes_read += sum(e - s for s, e in zip(starts, ends))
            try:
                datas = self.fs.cat_ranges(paths, starts, ends)
            except Exception as e:  # e.g. the store unreachable: raised when a block is needed
                datas = [e] * len(runs)
            for run, data, s, e in zip(runs, datas, starts, ends):
                results.update(self._split(run, data, e - s))
        with self._cond:
            self._inflight = 0
            for key, value in results.items():
                if gen != self._gen:  # a reset while in flight: drop it
                    self._held -= self._bytes(key)
                    self._reserved -= self._bytes(key)
                elif isinstance(value, BaseException):
                    self._failed[key] = value
                else:
                    self._blocks[key] = value
            self._cond.notify_all()

    def _split(self, run: list[tuple[Key, int]], data, nbytes: int) -> dict:
        """A fetched run of blocks as checked stored rows per block, or the errors to raise
        when they are needed."""
        info = self.manifest.shards[run[0][0][0]]
        if isinstance(data, BaseException):
            return {key: data for key, _ in run}
        if len(data) != nbytes:
            lo, hi = self._rows_of(run[0][0])[0], self._rows_of(run[-1][0])[1]
            err = ShardError(f"{storage.join(self.url, info.name)}: rows {lo}..{hi - 1}: got "
                             f"{len(data)} of {nbytes} bytes (truncated?)")
            return {key: err for key, _ in run}
        out, at, view = {}, 0, memoryview(data)
        for key, _ in run:
            raw = view[at:at + self._bytes(key)]
            at += len(raw)
            if self.check and info.crc32 and zlib.crc32(raw) != info.crc32[key[1]]:
                out[key] = block_error(self.url, info, key[1])
                continue
            rows = np.frombuffer(raw, dtype=self.stored).reshape(-1, self.manifest.width)
            # a block of a longer run is copied out, so releasing it frees its bytes
            out[key] = rows if len(run) == 1 else rows.copy()
        return out
