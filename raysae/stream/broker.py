"""Batch brokers: Ray actors that put each batch of their slice in the object store once.

`start_brokers(manifest_url, config, name)` creates (or finds) `config.num_brokers` named
actors ``raysae-stream:<name>:<b>``. Broker b owns the contiguous slice of shards the
`Plan` gives it; a producer thread builds its batches in order with a `SliceReader`,
`ray.put`s each one once, and keeps a ring of the most recent `buffer_batches` refs.
Batches are put as stored (float32, or bf16 bit patterns) and raw, not divided by C: the
broker's only per-batch work is that one copy into the object store, and each consumer
converts (`BatchStream(normalize=...)`). With a contiguous plan (`shuffle_window` <= 1)
the put copies straight from the memory-mapped shard; a window shuffle first gathers
rows into a buffer. The broker pre-faults its view of the object store at start
(`raysae.stream.prefault`; ~4x faster puts until steady state).
Consumers (`BatchStream`) call `fetch` to get a *block* of refs per call (an actor call
costs milliseconds, reading a ref on the same node is zero copy).

Late starters: with `expect_consumers=N` the producer does not move past its first ring
until N consumers have joined (or `consumer_timeout_s` passed), so trials that Tune starts
a few seconds apart all begin at batch 0 from the shared ring.

Backpressure: the producer stays less than K batches ahead of the slowest *active*
consumer (one heard from within `consumer_timeout_s`; closed consumers are forgotten at
once), so nothing it still needs is evicted and the ring stays within the object store.
A consumer that is behind the ring (restarted from an old checkpoint, or stalled past the
timeout) does not hold the others back: `fetch` answers "behind" and the consumer loops
over what it missed or skips, per `lag_policy`.

Failure: brokers are restartable (`max_restarts`). A restarted broker has lost its ring
(objects owned by a dead actor are gone) but nothing else: the `Plan` rebuilds any batch
from the dataset, so it seeks to the position of the first consumer that asks and goes
on. Consumers keep their own positions, so a broker's death never loses one.

Multi-node: with `spread=True` brokers are placed on different nodes; a trial reads
refs from a broker on its own node zero copy and from another node over Ray's object
transfer (one network copy per batch per node, instead of one storage read per trial).
"""

from __future__ import annotations

import concurrent.futures
import gc
import threading
import time
from typing import Any, NamedTuple

import ray

from raysae.activations.shards import Manifest
from raysae.config import ConfigError, check
from raysae.stream.config import StreamConfig
from raysae.stream.plan import Plan
from raysae.stream.prefault import populate_object_store
from raysae.stream.reader import SliceReader

_MAX_CONCURRENCY = 64  # fetches long-poll; one in flight per consumer plus control calls


def actor_name(name: str, broker: int) -> str:
    return f"raysae-stream:{name}:{broker}"


class BrokerHandle(NamedTuple):
    """What a trial needs to consume a stream; picklable (pass it in a Tune param space)."""

    name: str
    manifest_url: str
    config: StreamConfig
    actors: tuple  # ActorHandles, one per broker


class Broker:
    """One broker (used as a Ray actor; see the module docstring)."""

    def __init__(self, manifest_url: str, config: StreamConfig, broker: int, start: int = 0):
        self.url, self.config, self.broker = manifest_url, config, broker
        manifest = Manifest.load(manifest_url)
        self.plan = Plan(manifest, config)
        self.reader = SliceReader(manifest_url, manifest, self.plan, broker)
        self.K = config.buffer_batches
        self.ring: dict[int, Any] = {}
        self.consumers: dict[str, list] = {}  # id -> [ack (local index), last seen]
        self.cond = threading.Condition()
        self.error: BaseException | None = None
        self.stopped = False
        self.restarted = ray.get_runtime_context().was_current_actor_reconstructed
        # a fresh broker starts at `start`; a restarted one waits for a consumer to say where
        self.lo = self.hi = None if self.restarted else start
        self.idle_floor = self.lo
        self.joined: set[str] = set()  # every consumer ever seen (for expect_consumers)
        self.born = time.monotonic()
        self.prefaulted = 0  # bytes of the object store pre-faulted in this process
        self.times = {"wait_s": 0.0, "build_s": 0.0, "put_s": 0.0}  # producer time split
        self.thread = threading.Thread(target=self._produce, daemon=True, name="producer")
        self.thread.start()

    # --- producer ------------------------------------------------------------------------
    def _floor(self, now: float) -> int:
        """Lowest local index an active consumer still needs (consumers behind: the ring)."""
        timeout = self.config.consumer_timeout_s
        if len(self.joined) < self.config.expect_consumers and now - self.born < timeout \
                and not self.restarted:
            return self.idle_floor  # trials still starting: keep the first ring for them
        acks = [max(a, self.lo) for a, seen in self.consumers.values() if now - seen < timeout]
        if acks:
            self.idle_floor = min(acks)
        return self.idle_floor

    def _can_produce(self) -> bool:
        return (self.hi is not None and self.plan.has(self.broker, self.hi)
                and self.hi < self._floor(time.monotonic()) + self.K)

    def _produce(self) -> None:
        # Batches go in as stored and raw (no /C, bf16 stays 2 bytes a value): consumers
        # convert, in parallel across trials. Contiguous plans hand over a view of the
        # memory-mapped shard, so ray.put is the one copy from the page cache. The next
        # batch is built in a helper thread while this one is put (a window gather and
        # ray.put both release the GIL, so they overlap).
        pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="reader")
        ahead: tuple[int, concurrent.futures.Future] | None = None
        if self.config.prefault_object_store:
            self.prefaulted = populate_object_store(write=True)
        # A full collection walks every object of this process (Ray, numpy: ~50 ms here)
        # and lands in the middle of a put; nothing made before now is garbage.
        gc.freeze()
        try:
            while True:
                t0 = time.perf_counter()
                with self.cond:
                    while not self.stopped and not self._can_produce():
                        self.cond.wait(0.25)  # also wakes to notice timed-out consumers
                    if self.stopped:
                        return
                    j = self.hi
                t1 = time.perf_counter()
                if ahead is not None and ahead[0] == j:
                    arr = ahead[1].result()
                else:
                    if ahead is not None:  # a seek: drop the read-ahead (reader is not shared)
                        ahead[1].result()
                    arr = self.reader.rows(j)
                ahead = None
                if self.plan.has(self.broker, j + 1):
                    ahead = (j + 1, pool.submit(self.reader.rows, j + 1))
                t2 = time.perf_counter()
                ref = ray.put(arr)
                del arr
                self.times["wait_s"] += t1 - t0
                self.times["build_s"] += t2 - t1  # waiting for the read-ahead's batch
                self.times["put_s"] += time.perf_counter() - t2
                with self.cond:
                    if self.hi != j:  # a seek moved us meanwhile
                        continue
                    self.ring[j] = ref
                    self.hi = j + 1
                    for k in [k for k in self.ring if k < self.hi - self.K]:
                        del self.ring[k]
                    self.lo = max(self.lo, self.hi - self.K)
                    self.cond.notify_all()
        except BaseException as e:  # surfaced to every consumer by fetch
            with self.cond:
                self.error = e
                self.cond.notify_all()
        finally:
            pool.shutdown(wait=False, cancel_futures=True)

    # --- consumer calls ------------------------------------------------------------------
    def fetch(self, consumer: str, start: int, count: int, ack: int,
              wait_s: float = 10.0, min_count: int = 1) -> dict:
        """Refs for local batches [start, start+count) that exist, waiting up to `wait_s`
        for the first. `ack`: the consumer's next needed batch (for backpressure).
        `min_count`: while the producer is still producing, wait until that many exist
        (a consumer caught up with the producer would otherwise pay one actor call per
        batch, which costs more than producing one).

        Returns {"status": "ok"|"behind"|"end"|"wait", "refs": [...], "lo", "hi"}.
        """
        left_in_plan = self.plan.broker_batches[self.broker]
        want = max(1, min(count, min_count,
                          left_in_plan - start if left_in_plan is not None else count))
        deadline = time.monotonic() + wait_s
        with self.cond:
            self.consumers[consumer] = [ack, time.monotonic()]
            self.joined.add(consumer)
            if self.hi is None:  # restarted: resume where the consumer is
                self.lo = self.hi = self.idle_floor = start
            self.cond.notify_all()
            while True:
                if self.error is not None:
                    raise self.error
                if not self.plan.has(self.broker, start):
                    return {"status": "end", "refs": [], "lo": self.lo, "hi": self.hi}
                if start < self.lo:
                    return {"status": "behind", "refs": [], "lo": self.lo, "hi": self.hi}
                left = deadline - time.monotonic()
                if start < self.hi and (self.hi - start >= want or left <= 0
                                        or not self._can_produce()):
                    stop = min(self.hi, start + count)
                    return {"status": "ok", "refs": [self.ring[k] for k in range(start, stop)],
                            "lo": self.lo, "hi": self.hi}
                if left <= 0:
                    return {"status": "wait", "refs": [], "lo": self.lo, "hi": self.hi}
                self.cond.wait(left)
                self.consumers[consumer][1] = time.monotonic()

    def close(self, consumer: str) -> None:
        """Forget a consumer: it no longer holds the others back."""
        with self.cond:
            self.consumers.pop(consumer, None)
            self.cond.notify_all()

    def describe(self) -> dict:
        return {"manifest_url": self.url, "config": self.config, "broker": self.broker}

    def stats(self) -> dict:
        now = time.monotonic()
        with self.cond:
            return {"broker": self.broker, "lo": self.lo, "hi": self.hi,
                    "restarted": self.restarted, "buffered": len(self.ring),
                    "consumers": {c: {"ack": a, "idle_s": now - t}
                                  for c, (a, t) in self.consumers.items()},
                    "bytes_read": self.reader.stats.bytes_read,
                    "rows_read": self.reader.stats.rows_read,
                    "batches_built": self.reader.stats.batches,
                    "prefaulted_bytes": self.prefaulted, **self.times,
                    "error": repr(self.error) if self.error else None}

    def pid(self) -> int:
        import os

        return os.getpid()

    def stop(self) -> None:
        with self.cond:
            self.stopped = True
            self.ring.clear()
            self.cond.notify_all()


def _check_fits(plan: Plan, config: StreamConfig) -> None:
    """Rings must fit in the object store of a node, so nothing spills."""
    stores = [n["Resources"].get("object_store_memory", 0) for n in ray.nodes() if n["Alive"]]
    if not stores:
        return
    per_node = config.num_brokers if not config.spread else -(-config.num_brokers // len(stores))
    need = per_node * (config.buffer_batches + config.block_batches) * plan.stored_batch_bytes
    have = config.object_store_fraction * min(stores)
    check(need <= have, "buffer_batches",
          f"{config.buffer_batches} batches of {plan.stored_batch_bytes / 2**20:.1f} MiB x "
          f"{per_node} broker(s) per node need {need / 2**30:.2f} GiB, more than "
          f"object_store_fraction={config.object_store_fraction} of the smallest node's "
          f"object store ({min(stores) / 2**30:.2f} GiB)")


def start_brokers(manifest_url: str, config: StreamConfig | None = None,
                  name: str = "default", start: int = 0, detached: bool = False,
                  num_cpus: float = 0.0) -> BrokerHandle:
    """Create (or reuse, by name) the brokers of a stream; returns a `BrokerHandle`.

    `start`: the local index every new broker begins at (0 for a new sweep). Reusing
    brokers with a different manifest or batch order raises ConfigError. `num_cpus=0`
    by default so brokers never block trials from being scheduled.
    """
    config = config or StreamConfig()
    plan = Plan(Manifest.load(manifest_url), config)
    _check_fits(plan, config)
    actor_cls = ray.remote(Broker)
    actors = []
    for b in range(config.num_brokers):
        opts: dict[str, Any] = dict(
            name=actor_name(name, b), get_if_exists=True, max_restarts=config.max_restarts,
            max_task_retries=0, max_concurrency=_MAX_CONCURRENCY, num_cpus=num_cpus)
        if detached:
            opts["lifetime"] = "detached"
        if config.spread:
            opts["scheduling_strategy"] = "SPREAD"
        actors.append(actor_cls.options(**opts).remote(manifest_url, config, b, start))
    for b, a in enumerate(actors):
        d = ray.get(a.describe.remote())
        if d["manifest_url"] != manifest_url or d["config"].order_key() != config.order_key():
            raise ConfigError(f"stream {name!r}: broker {b} already exists for "
                              f"{d['manifest_url']} with a different batch order; "
                              f"pick another name or stop it (stop_brokers)")
    return BrokerHandle(name, manifest_url, config, tuple(actors))


def get_brokers(name: str) -> BrokerHandle:
    """The handle of running brokers, by stream name."""
    try:
        first = ray.get_actor(actor_name(name, 0))
    except ValueError:
        raise ConfigError(f"stream {name!r}: no brokers are running under that name") from None
    d = ray.get(first.describe.remote())
    actors = [first] + [ray.get_actor(actor_name(name, b))
                        for b in range(1, d["config"].num_brokers)]
    return BrokerHandle(name, d["manifest_url"], d["config"], tuple(actors))


def stop_brokers(handle: BrokerHandle) -> None:
    """Stop and kill the brokers (their buffered batches are freed)."""
    for a in handle.actors:
        try:
            ray.get(a.stop.remote(), timeout=10)
        except ray.exceptions.RayError:
            pass
        ray.kill(a, no_restart=True)
