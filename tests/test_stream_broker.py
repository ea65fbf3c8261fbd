"""Brokers and BatchStream on a real local Ray: shared order, read-once, backpressure,
slow / killed / lagging consumers, a killed broker, bad shards."""

import threading
import time

import numpy as np
import pytest
import ray

from raysae import storage
from raysae.activations.shards import ShardError
from raysae.config import ConfigError
from raysae.stream import (BatchStream, LocalStream, StreamConfig, get_brokers, start_brokers,
                           stop_brokers)
from raysae.stream.synthetic import row_ids, write_synthetic_cache

SHARDS = [64, 48, 64, 40, 56, 64]


@pytest.fixture(scope="module")
def ray_local():
    ray.init(num_cpus=2, object_store_memory=200 * 2**20, include_dashboard=False,
             log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture
def cache(tmp_path):
    url = str(tmp_path / "cache")
    m, rows = write_synthetic_cache(url, SHARDS, d=8, norm_scalar=3.0)
    return url, m, rows


def reference(url, cfg, n):
    s = LocalStream(url, cfg)
    return [row_ids(s.batch(g)) for g in range(n)]


@ray.remote(num_cpus=0.25)
def consume_all(handle, cid):
    stream = BatchStream(handle, consumer_id=cid)
    got = [(g, row_ids(b)) for g, b in stream]
    stream.close()
    return got, stream.metrics()


def test_consumers_see_same_batches_and_data_is_read_once(ray_local, cache):
    url, m, _ = cache
    cfg = StreamConfig(batch_size=16, shuffle_window=40, epochs=2, num_brokers=2,
                       buffer_batches=8, block_batches=4, drop_last=False, expect_consumers=3)
    handle = start_brokers(url, cfg, name="shared")
    try:
        results = ray.get([consume_all.remote(handle, f"c{i}") for i in range(3)])
        want = [row_ids(b) for _, b in LocalStream(url, cfg)]
        for got, metrics in results:
            assert [g for g, _ in got] == list(range(len(want)))
            assert all(np.array_equal(a, b) for (_, a), b in zip(got, want))
            assert metrics["stream/looped"] == metrics["stream/missed"] == 0
        # every row exactly once per epoch, across both brokers
        ids = np.concatenate(want)
        assert np.array_equal(np.bincount(ids), np.full(sum(SHARDS), 2))
        stats = ray.get([a.stats.remote() for a in handle.actors])
        read = sum(s["bytes_read"] for s in stats)
        assert read == 2 * sum(SHARDS) * m.row_bytes  # once per epoch, not once per consumer
        assert sum(s["batches_built"] for s in stats) == len(want)
    finally:
        stop_brokers(handle)


def test_reuse_by_name_and_conflicting_order(ray_local, cache):
    url, _, _ = cache
    cfg = StreamConfig(batch_size=16, buffer_batches=4, block_batches=2)
    h = start_brokers(url, cfg, name="reuse")
    try:
        h2 = start_brokers(url, cfg, name="reuse")
        assert ray.get(h.actors[0].pid.remote()) == ray.get(h2.actors[0].pid.remote())
        assert get_brokers("reuse").config == cfg
        with pytest.raises(ConfigError, match="different batch order"):
            start_brokers(url, StreamConfig(batch_size=16, seed=5, buffer_batches=4,
                                            block_batches=2), name="reuse")
    finally:
        stop_brokers(h)
    with pytest.raises(ConfigError, match="buffer_batches"):
        start_brokers(url, StreamConfig(batch_size=2**20, buffer_batches=64), name="big")


def _run_until(stream, n, out):
    for _ in range(n):
        out.append(next(stream))


def test_slow_consumer_holds_back_and_closed_consumer_releases(ray_local, cache):
    url, _, _ = cache
    K = 6
    cfg = StreamConfig(batch_size=16, shuffle_window=0, buffer_batches=K, block_batches=2,
                       consumer_timeout_s=60)
    h = start_brokers(url, cfg, name="slow")
    try:
        slow, fast = BatchStream(h, consumer_id="slow"), BatchStream(h, consumer_id="fast")
        next(slow)
        got: list = []
        t = threading.Thread(target=_run_until, args=(fast, 40, got), daemon=True)
        t.start()
        t.join(3.0)
        # the fast one is stopped by the ring: the broker stays < K ahead of the slow one
        assert t.is_alive() and len(got) <= slow.position + K + cfg.block_batches
        hi = ray.get(h.actors[0].stats.remote())["hi"]
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
        return [next(self.stream)[0] for _ in range(n)]


def test_killed_consumer_stops_holding_back_after_timeout(ray_local, cache):
    url, _, _ = cache
    cfg = StreamConfig(batch_size=16, buffer_batches=4, block_batches=2, consumer_timeout_s=1.0)
    h = start_brokers(url, cfg, name="killed")
    try:
        trial = Trial.remote(h, "doomed")
        assert ray.get(trial.take.remote(2)) == [0, 1]
        ray.kill(trial)
        s = BatchStream(h, consumer_id="survivor")
        assert [next(s)[0] for _ in range(30)] == list(range(30))
        s.close()
    finally:
        stop_brokers(h)


@pytest.mark.parametrize("policy", ["loop", "skip"])
def test_consumer_behind_the_ring_loops_or_skips(ray_local, cache, policy):
    url, _, _ = cache
    cfg = StreamConfig(batch_size=16, shuffle_window=30, num_brokers=2, buffer_batches=4,
                       block_batches=2, lag_policy=policy)
    want = reference(url, cfg, 40)
    h = start_brokers(url, cfg, name=f"lag-{policy}")
    try:
        lead = BatchStream(h, consumer_id="lead")
        for _ in range(30):
            next(lead)
        lead.close()
        late = BatchStream(h, start_index=2, consumer_id="late")  # e.g. an old checkpoint
        got = [next(late) for _ in range(10)]
        for g, b in got:  # whatever it gets is the right batch for its index
            assert np.array_equal(row_ids(b), want[g])
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
    cfg = StreamConfig(batch_size=16, shuffle_window=30, num_brokers=2, buffer_batches=6,
                       block_batches=3)
    want = reference(url, cfg, 60)
    h = start_brokers(url, cfg, name="restart")
    try:
        s = BatchStream(h, consumer_id="c")
        got = [next(s) for _ in range(20)]
        pid = ray.get(h.actors[1].pid.remote())
        ray.kill(h.actors[1], no_restart=False)
        got += [next(s) for _ in range(40)]
        assert [g for g, _ in got] == list(range(60))
        assert all(np.array_equal(row_ids(b), want[g]) for g, b in got)
        stats = ray.get(h.actors[1].stats.remote())
        assert stats["restarted"] and ray.get(h.actors[1].pid.remote()) != pid
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
    cfg = StreamConfig(batch_size=16, buffer_batches=4, block_batches=2, shuffle_shards=False)
    h = start_brokers(url, cfg, name="bad")
    try:
        s = BatchStream(h, consumer_id="c")
        with pytest.raises(ShardError, match=r"shard-00002\.npy.*truncated"):
            for _ in range(40):
                next(s)
    finally:
        stop_brokers(h)


def test_ray_data_reader_matches_memmap_and_names_bad_shards(ray_local, cache, tmp_path):
    url, _, _ = cache
    kw = dict(batch_size=16, shuffle_window=30, epochs=1, num_brokers=2, drop_last=False,
              ray_data_prefetch_shards=2)
    fast = [row_ids(b) for _, b in LocalStream(url, StreamConfig(**kw))]
    rd = LocalStream(url, StreamConfig(reader="ray_data", **kw))
    got = [row_ids(b) for _, b in rd]
    assert len(got) == len(fast) and all(np.array_equal(a, b) for a, b in zip(got, fast))
    assert rd.stats.bytes_read == sum(i.bytes for i in rd.manifest.shards)
    with pytest.raises(ConfigError, match="verify"):
        list(LocalStream(url, StreamConfig(reader="ray_data", verify=True, **kw)))
    bad = str(tmp_path / "bad")
    m, _ = write_synthetic_cache(bad, [20, 20], d=4)
    m.d = 5
    m.save(bad)
    with pytest.raises(ShardError, match=r"shard-0000[01]\.npy.*d=5"):
        list(LocalStream(bad, StreamConfig(reader="ray_data", batch_size=8, epochs=1)))


@pytest.mark.parametrize("dtype,window", [("float32", 0), ("bfloat16", 0), ("bfloat16", 30)])
def test_brokers_put_raw_rows_and_consumers_normalize_or_not(ray_local, tmp_path, dtype, window):
    url = str(tmp_path / "c")
    write_synthetic_cache(url, [40, 24, 40, 32], d=4, parts=("input", "target"), dtype=dtype,
                          norm_scalar=3.0)
    cfg = StreamConfig(batch_size=16, shuffle_window=window, epochs=2, num_brokers=2,
                       buffer_batches=8, block_batches=4, drop_last=False, expect_consumers=2)
    h = start_brokers(url, cfg, name=f"raw-{dtype}-{window}")
    try:
        raw_s = BatchStream(h, consumer_id="raw", normalize=False)
        norm_s = BatchStream(h, consumer_id="norm")
        raw_want = list(LocalStream(url, cfg, normalize=False))
        norm_want = list(LocalStream(url, cfg))
        for (g, r), (h_, x), (gw, rw), (_, xw) in zip(raw_s, norm_s, raw_want, norm_want):
            assert g == h_ == gw
            assert r.dtype == x.dtype == np.float32
            np.testing.assert_array_equal(r, rw)   # raw: as stored, widened
            np.testing.assert_array_equal(x, xw)   # normalised on the consumer, bitwise
            np.testing.assert_array_equal(x, r / np.float32(3.0))
            if dtype == "float32":  # the object store's buffer itself
                assert not r.flags.writeable
        assert raw_s.position == norm_s.position == len(raw_want)
        stats = ray.get([a.stats.remote() for a in h.actors])
        assert all(s["prefaulted_bytes"] > 0 for s in stats)  # found and pre-faulted the store
        raw_s.close()
        norm_s.close()
    finally:
        stop_brokers(h)


def test_fetch_waits_for_a_whole_block_unless_the_producer_is_held(ray_local, cache):
    url, _, _ = cache
    cfg = StreamConfig(batch_size=16, shuffle_window=0, buffer_batches=4, block_batches=4)
    h = start_brokers(url, cfg, name="block")
    try:
        a = h.actors[0]
        # the producer runs (nothing acked yet, ring of 4): the answer is a whole block
        r = ray.get(a.fetch.remote("x", 0, 4, 0, 60.0, 4), timeout=30)
        assert r["status"] == "ok" and len(r["refs"]) == 4
        # ack 0 holds the producer at hi = 4: asking for [2, 6) must answer the 2 there
        # are now, not wait out wait_s for a block that cannot come
        r = ray.get(a.fetch.remote("x", 2, 4, 0, 60.0, 4), timeout=30)
        assert r["status"] == "ok" and len(r["refs"]) == 2 and r["hi"] == 4
    finally:
        stop_brokers(h)
