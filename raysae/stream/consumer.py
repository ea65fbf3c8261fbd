"""The trial side of the shared stream: `BatchStream` iterates batches by global index.

It keeps, per broker, a queue of refs fetched a block at a time and asks for the next block
while the current one is consumed, so the actor call is off the critical path. A float32
batch is the object store's buffer itself (read only, zero copy on the broker's node);
bf16 caches are widened. Batches are raw: the trainer divides by C.

A consumer behind the ring loops over what it missed, rebuilding it from storage with the
same plan (`lag_policy: loop`), or skips to the oldest buffered batch (`skip`). A dead
broker is retried until its restart answers; the position lives here, so it is never lost.
`SharedSource` opens streams for the trainer (the `BatchSource` protocol of raysae.train).
"""

from __future__ import annotations

import collections
import time
import uuid
from typing import Any

import numpy as np
import ray

from raysae.data.reader import SliceReader, to_float32
from raysae.data.shards import Manifest
from raysae.stream.broker import BrokerHandle, get_brokers
from raysae.stream.protocol import FetchReply, FetchStatus

_RETRYABLE = (ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError,
              ray.exceptions.ObjectLostError, ray.exceptions.GetTimeoutError)


def join_position(handle: BrokerHandle) -> int:
    """Global index of the oldest batch every broker still buffers (where a late trial joins)."""
    plan = handle.plan()
    stats = ray.get([a.stats.remote() for a in handle.actors])
    live = [(b, s.lo or 0) for b, s in enumerate(stats) if plan.has(b, s.lo or 0)]
    return max((plan.global_index(b, lo) for b, lo in live), default=0)


class BatchStream:
    """Iterate a running stream: `for batch in BatchStream(handle)`; `.position` for checkpoints.

    Args:
        stream: a `BrokerHandle` or the stream's name.
        start_index: the first global index (a checkpoint's position); None joins at the
            oldest batch still buffered.
        consumer_id: this consumer's id at the brokers (unique per reader).
        wait_s: how long one fetch waits for the producer.
        retry_s: how long to keep retrying a dead broker before giving up.
    """

    def __init__(self, stream: BrokerHandle | str, start_index: int | None = 0,
                 consumer_id: str | None = None, wait_s: float = 10.0, retry_s: float = 120.0):
        self.handle = get_brokers(stream) if isinstance(stream, str) else stream
        self.config = self.handle.config
        self.manifest = Manifest.load(self.handle.manifest_url)
        self.plan = self.handle.plan(self.manifest)
        self.consumer_id = consumer_id or uuid.uuid4().hex
        self.wait_s, self.retry_s = wait_s, retry_s
        nb = self.config.num_brokers
        self._queues: list[collections.deque] = [collections.deque() for _ in range(nb)]
        self._pending: list[tuple[int, Any] | None] = [None] * nb  # (start, ObjectRef)
        self._lo = [0] * nb            # last known oldest buffered batch per broker
        self._readers: dict[int, SliceReader] = {}
        self.missed = self.looped = self.delivered = self.broker_retries = 0
        self.position = join_position(self.handle) if start_index is None else int(start_index)
        self.start = self.position

    def __iter__(self) -> "BatchStream":
        return self

    def __next__(self) -> np.ndarray:
        while True:
            g = self.position
            if self.plan.total is not None and g >= self.plan.total:
                raise StopIteration
            b, j = self.plan.locate(g)
            arr = self._get(b, j)
            if arr is None:  # skipped ahead: position moved, go again
                continue
            self.position = g + 1
            self.delivered += 1
            return to_float32(arr, self.manifest)

    def describe(self, g: int) -> str:
        """Where batch `g`'s rows are stored (the shard and rows), for error messages."""
        return f"{self.handle.manifest_url}: {self.plan.describe(g)}"

    @property
    def looped_bytes(self) -> int:
        return sum(r.stats.bytes_read for r in self._readers.values())

    def metrics(self) -> dict[str, int]:
        """Counters for the trial's reports (names in `raysae.metrics`)."""
        from raysae import metrics as m

        return {m.STREAM_START: self.start, m.STREAM_POSITION: self.position,
                m.STREAM_DELIVERED: self.delivered,
                m.STREAM_MISSED: self.missed, m.STREAM_LOOPED: self.looped,
                m.STREAM_LOOPED_BYTES: self.looped_bytes,
                m.STREAM_BROKER_RETRIES: self.broker_retries}

    def close(self) -> None:
        """Deregister from every broker and drop buffered refs."""
        refs = [a.close.remote(self.consumer_id) for a in self.handle.actors]
        try:
            ray.get(refs, timeout=10)
        except ray.exceptions.RayError:
            pass  # a dead broker has forgotten us anyway
        for q in self._queues:
            q.clear()
        self._pending = [None] * len(self._pending)
        for r in self._readers.values():
            r.close()

    def __enter__(self) -> "BatchStream":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # --- internals -----------------------------------------------------------------------
    def _request(self, b: int, start: int, min_count: int = 1) -> None:
        ack = self._queues[b][0][0] if self._queues[b] else start
        ref = self.handle.actors[b].fetch.remote(
            self.consumer_id, start, self.config.block_batches, ack, self.wait_s, min_count)
        self._pending[b] = (start, ref)

    def _reset(self, b: int) -> None:
        self._queues[b].clear()
        self._pending[b] = None

    def _get(self, b: int, j: int):
        """Local batch j of broker b as stored, or None after skipping ahead."""
        q = self._queues[b]
        while q and q[0][0] < j:  # resumed or skipped past them
            q.popleft()
        if q and q[0][0] != j:
            self._reset(b)
        deadline = time.monotonic() + self.retry_s
        while True:
            try:
                if j < self._lo[b]:
                    return self._behind(b, j)
                if not q:
                    reply = self._reply(b, j)
                    if reply.status is FetchStatus.BEHIND:
                        self._lo[b] = reply.lo
                        continue
                    if reply.status is FetchStatus.END:
                        raise StopIteration
                    if reply.status is FetchStatus.WAIT:
                        continue
                    q.extend((j + i, r) for i, r in enumerate(reply.refs))
                _, ref = q.popleft()
                arr = ray.get(ref)
                # keep the next block in flight while this one is consumed; it answers
                # with a whole block unless the producer stalls (one call per block)
                nxt = (q[-1][0] + 1) if q else j + 1
                if self._pending[b] is None and len(q) <= self.config.block_batches // 2 \
                        and self.plan.has(b, nxt):
                    self._request(b, nxt, min_count=self.config.block_batches)
                return arr
            except _RETRYABLE:
                # broker died (or is restarting): its refs are gone, ask again
                self.broker_retries += 1
                self._reset(b)
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)

    def _reply(self, b: int, j: int) -> FetchReply:
        pend = self._pending[b]
        self._pending[b] = None
        if pend is not None and pend[0] == j:
            return ray.get(pend[1])
        self._request(b, j)
        return self._reply(b, j)

    def _behind(self, b: int, j: int):
        if self.config.lag_policy == "skip":
            g = self.plan.global_index(b, self._lo[b])
            self.missed += g - self.position
            self.position = g
            self._reset(b)
            return None
        if b not in self._readers:
            self._readers[b] = SliceReader(self.handle.manifest_url, self.manifest, self.plan, b)
        self.looped += 1
        return self._readers[b].rows(j)


class SharedSource:
    """Opens `BatchStream`s on running brokers for the trainer (`raysae.train` BatchSource).

    Args:
        stream: a `BrokerHandle` or the stream's name.
        consumer_id: this reader's id at the brokers (one per process of a trial).
        join_at: where `open(None)` starts (None: join live, at the oldest buffered batch).
            The processes of one multi-host trial pass the same value, so they read the
            same batches; a resumed run opens at its checkpoint's position instead.
    """

    def __init__(self, stream: BrokerHandle | str, consumer_id: str, join_at: int | None = None):
        self.stream, self.consumer_id, self.join_at = stream, consumer_id, join_at
        self.current: BatchStream | None = None

    def open(self, position: int | None) -> BatchStream:
        self.current = BatchStream(self.stream, consumer_id=self.consumer_id,
                                   start_index=self.join_at if position is None else position)
        return self.current

    def metrics(self) -> dict[str, int]:
        """The open stream's counters (empty before `open`)."""
        return self.current.metrics() if self.current is not None else {}
