"""Brokers and BatchStream on a real local Ray: shared order, read-once, backpressure,
slow / killed / lagging consumers, a killed broker, bad shards."""

import threading

import numpy as np
import pytest
import ray

from raysae import storage
from raysae.config import ConfigError
from raysae.data import BatchPlan, LocalStream, ReadStats, ShardError, SliceReader, StreamConfig
from raysae.data.synthetic import row_ids, write_synthetic_cache
from raysae.stream import (BatchStream, FetchStatus, SharedSource, get_brokers, start_brokers,
                           stop_brokers)
from raysae.stream.broker import shard_source

pytestmark = pytest.mark.ray
SHARDS = [64, 48, 64, 40, 56, 64]
C = 3.0


def indexed(stream, n=None):
    """(global index, batch) pairs of a stream (the first n)."""
    out = []
    while n is None or len(out) < n:
        try:
            batch = next(stream)
        except StopIteration:
            break
        out.append((stream.position - 1, batch))  # a skip moves the position while reading
    return out


@pytest.fixture(scope="module")
def ray_local():
    ray.init(address="local", num_cpus=2, object_store_memory=200 * 2**20, include_dashboard=False,
             log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture
def cache(tmp_path):
    url = str(tmp_path / "cache")
    m, rows = write_synthetic_cache(url, SHARDS, d=8, norm_scalar=C)
    return url, m, rows


def reference(url, cfg, n, batch_size=16):
    s = LocalStream(url, batch_size, cfg)
    return [row_ids(s.batch(g), C) for g in range(n)]


@ray.remote(num_cpus=0.25)
def consume_all(handle, cid):
    stream = BatchStream(handle, consumer_id=cid)
    got = [(g, row_ids(b, C)) for g, b in indexed(stream)]
    stream.close()
    return got, stream.metrics()


def test_consumers_see_same_batches_and_data_is_read_once(ray_local, cache):
    url, m, _ = cache
    cfg = StreamConfig(shuffle_window=40, epochs=2, num_brokers=2,
                       buffer_batches=8, block_batches=4, drop_last=False, expect_consumers=3)
    handle = start_brokers(url, 16, cfg, name="shared")
    try:
        results = ray.get([consume_all.remote(handle, f"c{i}") for i in range(3)])
        want = [row_ids(b, C) for b in LocalStream(url, 16, cfg)]
        for got, metrics in results:
            assert [g for g, _ in got] == list(range(len(want)))
            assert all(np.array_equal(a, b) for (_, a), b in zip(got, want))
            assert metrics["stream/looped"] == metrics["stream/missed"] == 0
        # every row exactly once per epoch, across both brokers
        ids = np.concatenate(want)
        assert np.array_equal(np.bincount(ids), np.full(sum(SHARDS), 2))
        stats = ray.get([a.stats.remote() for a in handle.actors])
        read = sum(s.bytes_read for s in stats)
        assert read == 2 * sum(SHARDS) * m.row_bytes  # once per epoch, not once per consumer
        assert sum(s.batches_built for s in stats) == len(want)
    finally:
        stop_brokers(handle)


def test_reuse_by_name_and_conflicting_order(ray_local, cache):
    url, _, _ = cache
    cfg = StreamConfig(buffer_batches=4, block_batches=2)
    h = start_brokers(url, 16, cfg, name="reuse")
    try:
        h2 = start_brokers(url, 16, cfg, name="reuse")
        assert ray.get(h.actors[0].pid.remote()) == ray.get(h2.actors[0].pid.remote())
        got = get_brokers("reuse")
        assert got.config == cfg and got.batch_size == 16
        with pytest.raises(ConfigError, match="different batch order"):
            start_brokers(url, 16, StreamConfig(seed=5, buffer_batches=4, block_batches=2),
                          name="reuse")
        with pytest.raises(ConfigError, match="different batch order"):
            start_brokers(url, 32, cfg, name="reuse")  # the batch size is part of the order
    finally:
        stop_brokers(h)
    with pytest.raises(ConfigError, match="buffer_batches"):
        start_brokers(url, 2**20, StreamConfig(buffer_batches=64), name="big")


def _run_until(stream, n, out):
    for _ in range(n):
        out.append(next(stream))


def test_slow_consumer_holds_back_and_closed_consumer_releases(ray_local, cache):
    url, _, _ = cache
    K = 6
    cfg = StreamConfig(shuffle_window=0, buffer_batches=K, block_batches=2, consumer_timeout_s=60)
    h = start_brokers(url, 16, cfg, name="slow")
    try:
        slow, fast = BatchStream(h, consumer_id="slow"), BatchStream(h, consumer_id="fast")
        next(slow)
        got: list = []
        t = threading.Thread(target=_run_until, args=(fast, 40, got), daemon=True)
        t.start()
        t.join(3.0)
        # the fast one is stopped by the ring: the broker stays < K ahead of the slow one
        assert t.is_alive() and len(got) <= slow.position + K + cfg.block_batches
        hi = ray.get(h.actors[0].stats.remote()).hi
        assert hi <= slow.position + K + cfg.block_batches
        slow.close()  # a finished trial no longer holds the others back
        t.join(30)
        assert not t.is_alive() and len(got) == 40
        fast.close()
    finally:
        stop_brokers(h)


@ray.remote(num_cpus=0.25)
class Trial:
    def __init__(self, handle, cid):
        self.stream = BatchStream(handle, consumer_id=cid)

    def take(self, n):
        return [g for g, _ in indexed(self.stream, n)]


def test_killed_consumer_stops_holding_back_after_timeout(ray_local, cache):
    url, _, _ = cache
    cfg = StreamConfig(buffer_batches=4, block_batches=2, consumer_timeout_s=1.0)
    h = start_brokers(url, 16, cfg, name="killed")
    try:
        trial = Trial.remote(h, "doomed")
        assert ray.get(trial.take.remote(2)) == [0, 1]
        ray.kill(trial)
        s = BatchStream(h, consumer_id="survivor")
        assert [g for g, _ in indexed(s, 30)] == list(range(30))
        s.close()
    finally:
        stop_brokers(h)


@pytest.mark.parametrize("policy", ["loop", "skip"])
def test_consumer_behind_the_ring_loops_or_skips(ray_local, cache, policy):
    url, _, _ = cache
    cfg = StreamConfig(shuffle_window=30, num_brokers=2, buffer_batches=4, block_batches=2,
                       lag_policy=policy)
    want = reference(url, cfg, 40)
    h = start_brokers(url, 16, cfg, name=f"lag-{policy}")
    try:
        lead = BatchStream(h, consumer_id="lead")
        for _ in range(30):
            next(lead)
        lead.close()
        late = SharedSource(h, "late").open(2)  # e.g. resuming an old checkpoint
        got = indexed(late, 10)
        for g, b in got:  # whatever it gets is the right batch for its index
            assert np.array_equal(row_ids(b, C), want[g])
        m = late.metrics()
        if policy == "loop":
            assert [g for g, _ in got] == list(range(2, 12))
            assert m["stream/looped"] > 0 and m["stream/looped_bytes"] > 0
            assert m["stream/missed"] == 0
        else:
            gs = [g for g, _ in got]
            assert gs[0] > 2 and gs == sorted(gs)
            assert m["stream/missed"] == (gs[-1] - 2 + 1) - len(gs)  # every index skipped
            assert m["stream/looped"] == 0
        late.close()
    finally:
        stop_brokers(h)


def test_killed_broker_restarts_and_consumers_continue(ray_local, cache):
    url, _, _ = cache
    cfg = StreamConfig(shuffle_window=30, num_brokers=2, buffer_batches=6, block_batches=3)
    want = reference(url, cfg, 60)
    h = start_brokers(url, 16, cfg, name="restart")
    try:
        s = BatchStream(h, consumer_id="c")
        got = indexed(s, 20)
        pid = ray.get(h.actors[1].pid.remote())
        ray.kill(h.actors[1], no_restart=False)
        got += indexed(s, 40)
        assert [g for g, _ in got] == list(range(60))
        assert all(np.array_equal(row_ids(b, C), want[g]) for g, b in got)
        stats = ray.get(h.actors[1].stats.remote())
        assert stats.restarted and ray.get(h.actors[1].pid.remote()) != pid
        assert s.metrics()["stream/looped"] == 0  # it resumed where the consumer was
        s.close()
    finally:
        stop_brokers(h)


def test_bad_shard_error_reaches_the_consumer_naming_the_shard(ray_local, cache):
    url, _, _ = cache
    p = storage.join(url, "shard-00002.npy")
    data = storage.read_bytes(p)
    with storage.open_url(p, "wb") as f:
        f.write(data[:-100])
    cfg = StreamConfig(buffer_batches=4, block_batches=2, shuffle_shards=False)
    h = start_brokers(url, 16, cfg, name="bad")
    try:
        s = BatchStream(h, consumer_id="c")
        with pytest.raises(ShardError, match=r"shard-00002\.npy.*truncated"):
            for _ in range(40):
                next(s)
    finally:
        stop_brokers(h)


def _slice_rows(url, cfg, batch_size=16):
    """Every batch of every broker, built by the broker's own reader (its shard source)."""
    from raysae.data import Manifest

    m = Manifest.load(url)
    plan = BatchPlan(m, batch_size, cfg)
    stats = ReadStats()
    out = []
    for b in range(cfg.num_brokers):
        reader = SliceReader(url, m, plan, b, shard_source(url, m, plan, b, stats))
        out += [np.asarray(reader.rows(j)) for j in range(plan.broker_batches[b])]
        reader.close()
    return out, stats, m


def test_ray_data_reader_matches_memmap_and_names_bad_shards(ray_local, cache, tmp_path):
    url, _, _ = cache
    kw = dict(shuffle_window=30, epochs=1, num_brokers=2, drop_last=False,
              ray_data_prefetch_shards=2)
    fast, _, _ = _slice_rows(url, StreamConfig(**kw))
    got, stats, m = _slice_rows(url, StreamConfig(reader="ray_data", **kw))
    assert len(got) == len(fast) and all(np.array_equal(a, b) for a, b in zip(got, fast))
    assert stats.bytes_read == sum(i.bytes for i in m.shards)
    with pytest.raises(ConfigError, match="verify"):
        _slice_rows(url, StreamConfig(reader="ray_data", verify=True, **kw))
    bad = str(tmp_path / "bad")
    m, _ = write_synthetic_cache(bad, [20, 20], d=4)
    m.d = 5
    m.save(bad)
    with pytest.raises(ShardError, match=r"shard-0000[01]\.npy.*d=5"):
        _slice_rows(bad, StreamConfig(reader="ray_data", epochs=1), batch_size=8)


@pytest.mark.parametrize("dtype,window", [("float32", 0), ("bfloat16", 0), ("bfloat16", 30)])
def test_brokers_put_raw_rows_and_consumers_get_float32(ray_local, tmp_path, dtype, window):
    url = str(tmp_path / "c")
    write_synthetic_cache(url, [40, 24, 40, 32], d=4, parts=("input", "target"), dtype=dtype,
                          norm_scalar=C)
    cfg = StreamConfig(shuffle_window=window, epochs=2, num_brokers=2, buffer_batches=8,
                       block_batches=4, drop_last=False, expect_consumers=1)
    h = start_brokers(url, 16, cfg, name=f"raw-{dtype}-{window}")
    try:
        s = BatchStream(h, consumer_id="raw")
        want = list(LocalStream(url, 16, cfg))
        got = indexed(s)
        assert [g for g, _ in got] == list(range(len(want)))
        for (_, r), rw in zip(got, want):
            assert r.dtype == np.float32
            np.testing.assert_array_equal(r, rw)   # raw: as stored, widened
            if dtype == "float32":  # the object store's buffer itself
                assert not r.flags.writeable
        stats = ray.get([a.stats.remote() for a in h.actors])
        assert all(st.prefaulted_bytes > 0 for st in stats)  # found and pre-faulted the store
        s.close()
    finally:
        stop_brokers(h)


def test_fetch_waits_for_a_whole_block_unless_the_producer_is_held(ray_local, cache):
    url, _, _ = cache
    cfg = StreamConfig(shuffle_window=0, buffer_batches=4, block_batches=4)
    h = start_brokers(url, 16, cfg, name="block")
    try:
        a = h.actors[0]
        # the producer runs (nothing acked yet, ring of 4): the answer is a whole block
        r = ray.get(a.fetch.remote("x", 0, 4, 0, 60.0, 4), timeout=30)
        assert r.status is FetchStatus.OK and len(r.refs) == 4
        # ack 0 holds the producer at hi = 4: asking for [2, 6) must answer the 2 there
        # are now, not wait out wait_s for a block that cannot come
        r = ray.get(a.fetch.remote("x", 2, 4, 0, 60.0, 4), timeout=30)
        assert r.status is FetchStatus.OK and len(r.refs) == 2 and r.hi == 4
    finally:
        stop_brokers(h)
