"""`BatchStream`: the trial side of the shared stream.

``for g, batch in BatchStream(handle, start_index=ckpt.get("batch", 0)):`` yields the
global batch index and a float32 [B, width] array. Brokers put batches raw and as
stored; the consumer finishes them:
- `normalize=True` (default): divided by the manifest's C (and bf16 widened) into a new
  array: one copy per trial, run in parallel by the trials;
- `normalize=False`: raw rows; a float32 cache's batch is then the object store's buffer
  itself (read only, zero copy on the broker's node), and the trainer divides on device
  (`train(..., norm_scalar=C)`). bf16 caches are widened to float32 (one copy).
`position` is the next index: store it in checkpoints and pass it back as `start_index`
to resume exactly where the trial was.

It keeps, per broker, a queue of refs fetched a block at a time, and asks for the next
block while the current one is being consumed, so the actor call is off the critical
path. If a broker answers "behind" (the consumer fell further behind than the ring):
- lag_policy "loop": the consumer loops over the batches it missed, building them itself
  from storage with the same `Plan` (so its data is exactly what it would have been),
  then rejoins the ring; counted in `looped` / `looped_bytes`;
- lag_policy "skip": it jumps to the oldest buffered batch; counted in `missed`.
A dead broker (its refs lost, calls failing) is retried until its restart answers; the
position lives here, so it is not lost. `close()` tells the brokers to forget this
consumer so it no longer holds back the others.
"""

from __future__ import annotations

import collections
import time
import uuid
from typing import Any, Iterator

import numpy as np
import ray

from raysae.activations.shards import Manifest
from raysae.stream.broker import BrokerHandle, get_brokers
from raysae.stream.plan import Plan
from raysae.stream.reader import SliceReader, to_float32

_RETRYABLE = (ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError,
              ray.exceptions.ObjectLostError, ray.exceptions.GetTimeoutError)


class BatchStream:
    """Iterate a running stream by global batch index (see the module docstring).

    `stream`: a `BrokerHandle` or the stream's name. `start_index`: the first global
    index (a checkpoint's `position`); None joins at the oldest batch still buffered, for
    trials that start late and need not see the stream from its beginning.
    `normalize`: divide by C here (True) or yield raw rows (False; see the module docstring).
    `sharding`: optional `jax.sharding.Sharding`; batches are then `jax.device_put` on it.
    `retry_s`: how long to keep retrying a dead broker before giving up.
    """

    def __init__(self, stream: BrokerHandle | str, start_index: int | None = 0,
                 consumer_id: str | None = None, sharding: Any = None,
                 wait_s: float = 10.0, retry_s: float = 120.0, normalize: bool = True):
        self.normalize = normalize
        self.handle = get_brokers(stream) if isinstance(stream, str) else stream
        self.config = self.handle.config
        self.manifest = Manifest.load(self.handle.manifest_url)
        self.plan = Plan(self.manifest, self.config)
        self.consumer_id = consumer_id or uuid.uuid4().hex
        self.sharding, self.wait_s, self.retry_s = sharding, wait_s, retry_s
        nb = self.config.num_brokers
        self._queues: list[collections.deque] = [collections.deque() for _ in range(nb)]
        self._pending: list[tuple[int, Any] | None] = [None] * nb  # (start, ObjectRef)
        self._lo = [0] * nb            # last known oldest buffered batch per broker
        self._readers: dict[int, SliceReader] = {}
        self.missed = self.looped = self.delivered = self.broker_retries = 0
        self.position = self._join_position() if start_index is None else int(start_index)

    # --- public --------------------------------------------------------------------------
    def __iter__(self) -> Iterator[tuple[int, Any]]:
        return self

    def __next__(self) -> tuple[int, Any]:
        while True:
            g = self.position
            if self.plan.total is not None and g >= self.plan.total:
                raise StopIteration
            b, j = self.plan.locate(g)
            arr = self._get(b, j)
            if arr is None:  # skipped ahead: position moved, go again
                continue
            arr = to_float32(arr, self.manifest, self.normalize)
            self.position = g + 1
            self.delivered += 1
            if self.sharding is not None:
                import jax

                arr = jax.device_put(arr, self.sharding)
            return g, arr

    @property
    def looped_bytes(self) -> int:
        return sum(r.stats.bytes_read for r in self._readers.values())

    def metrics(self) -> dict:
        """Counters for the trial's reports."""
        return {"stream/position": self.position, "stream/delivered": self.delivered,
                "stream/missed": self.missed, "stream/looped": self.looped,
                "stream/looped_bytes": self.looped_bytes,
                "stream/broker_retries": self.broker_retries}

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

    def __enter__(self) -> "BatchStream":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # --- internals -----------------------------------------------------------------------
    def _join_position(self) -> int:
        """Global index of the oldest batch every broker still buffers."""
        stats = ray.get([a.stats.remote() for a in self.handle.actors])
        los = [s["lo"] or 0 for s in stats]
        return max(self.plan.global_index(b, lo) for b, lo in enumerate(los)
                   if self.plan.has(b, lo)) if any(
            self.plan.has(b, lo) for b, lo in enumerate(los)) else 0

    def _request(self, b: int, start: int, min_count: int = 1) -> None:
        ack = self._queues[b][0][0] if self._queues[b] else start
        ref = self.handle.actors[b].fetch.remote(
            self.consumer_id, start, self.config.block_batches, ack, self.wait_s, min_count)
        self._pending[b] = (start, ref)

    def _reset(self, b: int) -> None:
        self._queues[b].clear()
        self._pending[b] = None

    def _get(self, b: int, j: int):
        """Local batch j of broker b as an array, or None after skipping ahead."""
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
                    resp = self._response(b, j)
                    if resp["status"] == "behind":
                        self._lo[b] = resp["lo"]
                        continue
                    if resp["status"] == "end":
                        raise StopIteration
                    if resp["status"] == "wait":
                        continue
                    q.extend((j + i, r) for i, r in enumerate(resp["refs"]))
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

    def _response(self, b: int, j: int) -> dict:
        pend = self._pending[b]
        self._pending[b] = None
        if pend is not None and pend[0] == j:
            return ray.get(pend[1])
        self._request(b, j)
        return self._response(b, j)

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


def batches(stream: BatchStream) -> Iterator[np.ndarray]:
    """Just the arrays (for a trainer loop that takes an iterator of [B, d] batches)."""
    for _, arr in stream:
        yield arr
