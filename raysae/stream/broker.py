"""Batch brokers: Ray actors that put each batch of their slice in the object store once.

`start_brokers(manifest_url, batch_size, config, name)` creates (or finds, by name)
`config.num_brokers` actors ``raysae-stream:<name>:<b>``. Broker b owns the slice of shards
the `BatchPlan` gives it; a producer thread builds its batches in order (`SliceReader`),
`ray.put`s each one once, raw and as stored, and keeps a ring of the last `buffer_batches`.
Consumers (`raysae.stream.consumer`) fetch refs a block at a time.

Backpressure: the producer stays less than a ring ahead of the slowest active consumer (one
heard from within `consumer_timeout_s`); a consumer behind the ring is told so and loops
or skips by itself, so it never holds the others back. With `expect_consumers=N` the first
ring is held until N consumers joined, so trials Tune starts seconds apart share it.
A restarted broker has lost its ring but nothing else: it seeks to where the first consumer
that asks is, and the plan rebuilds any batch.
"""

from __future__ import annotations

import concurrent.futures
import gc
import logging
import threading
import time
from typing import Any, NamedTuple

import ray

from raysae.config import ConfigError, check
from raysae.data.config import StreamConfig
from raysae.data.plan import BatchPlan
from raysae.data.reader import ReadStats, SliceReader, open_source
from raysae.data.shards import Manifest
from raysae.stream.prefault import populate_object_store
from raysae.stream.protocol import BrokerStats, FetchReply, FetchStatus

log = logging.getLogger(__name__)
_MAX_CONCURRENCY = 64  # fetches long-poll; one in flight per consumer plus control calls


def actor_name(name: str, broker: int) -> str:
    return f"raysae-stream:{name}:{broker}"


class BrokerHandle(NamedTuple):
    """What a trial needs to consume a stream; picklable (pass it in a Tune param space)."""

    name: str
    manifest_url: str
    batch_size: int
    config: StreamConfig
    actors: tuple  # ActorHandles, one per broker

    def plan(self, manifest: Manifest | None = None) -> BatchPlan:
        return BatchPlan(manifest or Manifest.load(self.manifest_url), self.batch_size, self.config)


def shard_source(url: str, manifest: Manifest, plan: BatchPlan, broker: int, stats: ReadStats):
    """Where a broker's reader gets rows: memory maps / range reads (`open_source`), or Ray
    Data read tasks."""
    if plan.config.reader == "ray_data":
        from raysae.stream.raydata import RayDataShards

        return RayDataShards(url, manifest, plan.config, stats)
    return open_source(url, manifest, plan, broker, stats)


class Broker:
    """One broker of a stream, run as a Ray actor by `start_brokers`: a producer thread puts
    its slice's batches in order; `fetch` hands consumers refs a block at a time."""

    def __init__(self, manifest_url: str, batch_size: int, config: StreamConfig, broker: int,
                 seek: bool = False):
        self.url, self.config, self.broker = manifest_url, config, broker
        manifest = Manifest.load(manifest_url)
        self.plan = BatchPlan(manifest, batch_size, config)
        self.reader = SliceReader(manifest_url, manifest, self.plan, broker,
                                  shard_source(manifest_url, manifest, self.plan, broker,
                                               ReadStats()))
        self.K = config.buffer_batches
        self.ring: dict[int, Any] = {}
        self.consumers: dict[str, list] = {}  # id -> [ack (local index), last seen]
        self.cond = threading.Condition()
        self.error: BaseException | None = None
        self.stopped = False
        # A fresh broker starts at 0; a restarted one, or one started to finish a resumed
        # sweep (`seek`), waits for the first consumer to say where it is.
        self.restarted = ray.get_runtime_context().was_current_actor_reconstructed or seek
        self.lo = self.hi = None if self.restarted else 0
        self.idle_floor = self.lo
        self.joined: set[str] = set()  # every consumer ever seen (for expect_consumers)
        self.born = time.monotonic()
        self.prefaulted = 0  # bytes of the object store pre-faulted in this process
        self.first_batch: int | None = None
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
                    if self.first_batch is None:
                        self.first_batch = j
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
              wait_s: float = 10.0, min_count: int = 1) -> FetchReply:
        """Refs for local batches [start, start+count) that exist, waiting up to `wait_s`
        for the first. `ack`: the consumer's next needed batch (for backpressure).
        `min_count`: while the producer is still producing, wait until that many exist
        (a consumer caught up with the producer would otherwise pay one actor call per
        batch, which costs more than producing one).

        Returns:
            A `FetchReply`: refs for [start, ...) with status OK, or BEHIND / END / WAIT.
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
                    return FetchReply(FetchStatus.END, (), self.lo, self.hi)
                if start < self.lo:
                    return FetchReply(FetchStatus.BEHIND, (), self.lo, self.hi)
                left = deadline - time.monotonic()
                if start < self.hi and (self.hi - start >= want or left <= 0
                                        or not self._can_produce()):
                    stop = min(self.hi, start + count)
                    return FetchReply(FetchStatus.OK, tuple(self.ring[k] for k in range(start, stop)),
                                      self.lo, self.hi)
                if left <= 0:
                    return FetchReply(FetchStatus.WAIT, (), self.lo, self.hi)
                self.cond.wait(left)
                self.consumers[consumer][1] = time.monotonic()

    def close(self, consumer: str) -> None:
        """Forget a consumer: it no longer holds the others back."""
        with self.cond:
            self.consumers.pop(consumer, None)
            self.cond.notify_all()

    def describe(self) -> tuple[str, int, StreamConfig]:
        """(manifest URL, batch size, config): what decides this broker's batches."""
        return self.url, self.plan.batch_size, self.config

    def stats(self) -> BrokerStats:
        now = time.monotonic()
        with self.cond:
            r = self.reader.stats
            return BrokerStats(
                broker=self.broker, lo=self.lo, hi=self.hi, restarted=self.restarted,
                buffered=len(self.ring),
                consumers={c: (a, now - t) for c, (a, t) in self.consumers.items()},
                bytes_read=r.bytes_read, rows_read=r.rows_read, batches_built=r.batches,
                prefaulted_bytes=self.prefaulted, wait_s=self.times["wait_s"],
                build_s=self.times["build_s"], put_s=self.times["put_s"],
                error=repr(self.error) if self.error else None, first_batch=self.first_batch,
                expect_consumers=self.config.expect_consumers,
                read_ahead_peak_bytes=r.buffer_peak_bytes)

    def pid(self) -> int:
        import os

        return os.getpid()

    def stop(self) -> None:
        with self.cond:
            self.stopped = True
            self.ring.clear()
            self.cond.notify_all()


def _check_fits(plan: BatchPlan, config: StreamConfig) -> None:
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


def start_brokers(manifest_url: str, batch_size: int, config: StreamConfig | None = None,
                  name: str = "default", num_cpus: float = 0.0, seek: bool = False) -> BrokerHandle:
    """Create (or reuse, by name) the brokers of a stream.

    Args:
        manifest_url: the activation cache.
        batch_size: rows per batch (the trainers' batch size).
        config: order, reading and buffering settings.
        name: the stream's name; trials find the brokers by it.
        num_cpus: CPUs each broker reserves (0: brokers never block trials from scheduling).
        seek: start where the first consumer asks, not at batch 0 (resuming a sweep whose
            trials continue from their checkpoints' positions).
    Returns:
        A picklable `BrokerHandle`.
    Raises:
        ConfigError when brokers of that name exist with another cache or batch order, or
        the rings would not fit in the object store.

    Connects to Ray (`raysae.connect`: RAY_ADDRESS's cluster, or a private local one) if
    this process has not yet.
    """
    config = config or StreamConfig()
    plan = BatchPlan(Manifest.load(manifest_url), batch_size, config)
    if not ray.is_initialized():   # the object-store check below needs the cluster's nodes
        from raysae.connect import connect

        log.info(connect())
    _check_fits(plan, config)
    actor_cls = ray.remote(Broker)
    actors = []
    for b in range(config.num_brokers):
        opts: dict[str, Any] = dict(
            name=actor_name(name, b), get_if_exists=True, max_restarts=config.max_restarts,
            max_task_retries=0, max_concurrency=_MAX_CONCURRENCY, num_cpus=num_cpus,
            resources=dict(config.broker_resources))
        if config.spread:
            opts["scheduling_strategy"] = "SPREAD"
        actors.append(actor_cls.options(**opts).remote(manifest_url, batch_size, config, b, seek))
    for b, a in enumerate(actors):
        url, bs, cfg = ray.get(a.describe.remote())
        if url != manifest_url or cfg.order_key(bs) != config.order_key(batch_size):
            raise ConfigError(f"stream {name!r}: broker {b} already exists for {url} with a "
                              "different batch order; pick another name or stop it (stop_brokers)")
    return BrokerHandle(name, manifest_url, batch_size, config, tuple(actors))


def get_brokers(name: str) -> BrokerHandle:
    """The handle of running brokers, by stream name (ConfigError if there are none)."""
    try:
        first = ray.get_actor(actor_name(name, 0))
    except ValueError:
        raise ConfigError(f"stream {name!r}: no brokers are running under that name") from None
    url, batch_size, config = ray.get(first.describe.remote())
    actors = [first] + [ray.get_actor(actor_name(name, b)) for b in range(1, config.num_brokers)]
    return BrokerHandle(name, url, batch_size, config, tuple(actors))


def stop_brokers(handle: BrokerHandle) -> None:
    """Stop and kill the brokers (their buffered batches are freed)."""
    for a in handle.actors:
        try:
            ray.get(a.stop.remote(), timeout=10)
        except ray.exceptions.RayError:
            pass
        ray.kill(a, no_restart=True)
