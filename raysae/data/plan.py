"""The batch order: a pure function from (manifest, batch size, StreamConfig) to the rows
of every batch.

Everything that produces batches (`LocalStream`, the brokers, a lagging consumer) derives
them from a `BatchPlan`, so they agree without talking to each other. Broker b owns a
contiguous, row-balanced slice of shards; each epoch is its shards in a seeded order, rows
optionally permuted inside windows of `shuffle_window`, cut into batches (local index j).
Global indices interleave the brokers round-robin.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import numpy as np

from raysae.config import check
from raysae.data.config import StreamConfig
from raysae.data.shards import Manifest, ShardError


class Gather(NamedTuple):
    """Rows `rows` of shard `shard` go to output positions `out` of a batch."""

    shard: int
    rows: np.ndarray
    out: np.ndarray


def balanced_slices(shard_rows: list[int], n: int) -> list[range]:
    """Split shards into `n` contiguous, non-empty ranges with near-equal row counts."""
    check(n <= len(shard_rows), "num_brokers",
          f"{n} brokers but the cache has only {len(shard_rows)} shard(s)")
    cum = np.concatenate([[0], np.cumsum(shard_rows)])
    total = cum[-1]
    cuts = [0]
    for b in range(1, n):
        # first shard whose start is at or past b/n of the rows, kept strictly increasing
        # and leaving at least one shard for each later broker
        c = int(np.searchsorted(cum[:-1], total * b / n, side="left"))
        c = max(c, cuts[-1] + 1)
        c = min(c, len(shard_rows) - (n - b))
        cuts.append(c)
    cuts.append(len(shard_rows))
    return [range(cuts[i], cuts[i + 1]) for i in range(n)]


class BatchPlan:
    """The batch order of one cache for one batch size and config.

    Args:
        manifest: the cache's manifest.
        batch_size: rows per batch.
        config: the stream's order fields (shuffle window, seed, epochs, brokers).
    """

    def __init__(self, manifest: Manifest, batch_size: int, config: StreamConfig):
        check(batch_size >= 1, "batch_size", f"must be >= 1, got {batch_size}")
        if not manifest.shards:
            raise ShardError("manifest.json: the cache lists no shards")
        self.manifest = manifest
        self.batch_size = int(batch_size)
        self.config = config
        self.shard_rows = np.array([s.rows for s in manifest.shards], dtype=np.int64)
        if (self.shard_rows <= 0).any():
            bad = manifest.shards[int(np.argmax(self.shard_rows <= 0))]
            raise ShardError(f"{bad.name}: manifest lists {bad.rows} rows")
        self.slices = balanced_slices(list(self.shard_rows), config.num_brokers)
        self.slice_rows = [int(self.shard_rows[list(s)].sum()) for s in self.slices]
        B = self.batch_size
        if config.epochs is None:
            self.broker_batches: list[int | None] = [None] * config.num_brokers
            self.total: int | None = None
        else:
            rows = [config.epochs * n for n in self.slice_rows]
            self.broker_batches = [r // B if config.drop_last else -(-r // B) for r in rows]
            self.total = int(sum(self.broker_batches))
        self._window_perm = functools.lru_cache(maxsize=8)(self._window_perm_uncached)
        self._epoch_order = functools.lru_cache(maxsize=16)(self._epoch_order_uncached)

    @property
    def num_brokers(self) -> int:
        return self.config.num_brokers

    @property
    def stored_batch_bytes(self) -> int:
        """Bytes of one batch as stored and as brokers put it (bf16 caches: half)."""
        return self.batch_size * self.manifest.row_bytes

    @property
    def contiguous(self) -> bool:
        """No row permutation: every batch is a run of consecutive rows of the epoch."""
        return self.config.shuffle_window <= 1

    # --- global <-> (broker, local) -------------------------------------------------------
    def _before_round(self, r: int) -> int:
        """How many global indices come before round r (local index r of every broker)."""
        return sum(r if t is None else min(t, r) for t in self.broker_batches)

    def locate(self, g: int) -> tuple[int, int]:
        """(broker, local index) of global batch `g`."""
        if g < 0 or (self.total is not None and g >= self.total):
            raise IndexError(f"batch {g} is outside the stream (total {self.total})")
        nb = self.num_brokers
        if all(t is None for t in self.broker_batches) or len(set(self.broker_batches)) == 1:
            return g % nb, g // nb
        lo, hi = 0, max(t for t in self.broker_batches)  # finite here
        while lo < hi:  # largest r with _before_round(r) <= g
            mid = (lo + hi + 1) // 2
            if self._before_round(mid) <= g:
                lo = mid
            else:
                hi = mid - 1
        live = [b for b, t in enumerate(self.broker_batches) if t > lo]
        return live[g - self._before_round(lo)], lo

    def global_index(self, broker: int, j: int) -> int:
        """Global index of local batch `j` of `broker`."""
        t = self.broker_batches[broker]
        if j < 0 or (t is not None and j >= t):
            raise IndexError(f"broker {broker} has no batch {j} (it has {t})")
        ahead = sum(1 for b in range(broker)
                    if self.broker_batches[b] is None or self.broker_batches[b] > j)
        return self._before_round(j) + ahead

    def has(self, broker: int, j: int) -> bool:
        t = self.broker_batches[broker]
        return j >= 0 and (t is None or j < t)

    # --- rows of a batch -------------------------------------------------------------
    def _epoch_order_uncached(self, broker: int, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        """(shard indices in this epoch's order, their cumulative start rows)."""
        shards = np.array(self.slices[broker], dtype=np.int64)
        if self.config.shuffle_shards:
            rng = np.random.default_rng([self.config.seed, 1, broker, epoch])
            shards = shards[rng.permutation(len(shards))]
        starts = np.concatenate([[0], np.cumsum(self.shard_rows[shards])[:-1]])
        return shards, starts

    def epoch_order(self, broker: int, epoch: int) -> np.ndarray:
        return self._epoch_order(broker, epoch)[0]

    def _window_perm_uncached(self, broker: int, epoch: int, window: int) -> np.ndarray | None:
        W = self.config.shuffle_window
        if W <= 1:
            return None
        n = min(W, self.slice_rows[broker] - window * W)
        return np.random.default_rng([self.config.seed, 2, broker, epoch, window]).permutation(n)

    def describe(self, g: int) -> str:
        """Where global batch `g`'s rows are stored, for error messages."""
        b, j = self.locate(g)
        parts = []
        for gather in self.batch_rows(b, j):
            name = self.manifest.shards[gather.shard].name
            lo, hi = int(gather.rows.min()), int(gather.rows.max())
            contiguous = hi - lo + 1 == len(gather.rows)
            parts.append(f"{name} rows {lo}..{hi}" if contiguous else
                         f"{len(gather.rows)} rows of {name} within {lo}..{hi}")
        return ", ".join(parts)

    def batch_rows(self, broker: int, j: int) -> list[Gather]:
        """Where the rows of local batch `j` of `broker` come from, grouped by shard."""
        if not self.has(broker, j):
            raise IndexError(f"broker {broker} has no batch {j}")
        B, W, N = self.batch_size, self.config.shuffle_window, self.slice_rows[broker]
        end = (j + 1) * B
        if self.config.epochs is not None:
            end = min(end, self.config.epochs * N)
        pos = np.arange(j * B, end, dtype=np.int64)
        epoch, q = pos // N, pos % N
        src = q.copy()
        if W > 1:
            win = q // W
            # groups of equal (epoch, window) are contiguous runs of pos
            keys = epoch * (N // W + 1) + win
            bounds = np.flatnonzero(np.diff(keys)) + 1
            for a, z in zip(np.concatenate([[0], bounds]), np.concatenate([bounds, [len(pos)]])):
                e, w = int(epoch[a]), int(win[a])
                src[a:z] = w * W + self._window_perm(broker, e, w)[q[a:z] - w * W]
        out: list[Gather] = []
        ebounds = np.flatnonzero(np.diff(epoch)) + 1
        for a, z in zip(np.concatenate([[0], ebounds]), np.concatenate([ebounds, [len(pos)]])):
            shards, starts = self._epoch_order(broker, int(epoch[a]))
            k = np.searchsorted(starts, src[a:z], side="right") - 1
            for kk in np.unique(k):
                sel = np.flatnonzero(k == kk)
                out.append(Gather(int(shards[kk]), src[a:z][sel] - starts[kk], sel + a))
        return out
