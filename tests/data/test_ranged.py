"""Range reads of remote shards (memory:// and a GCS emulator): the same batches as the local
memory map, only the bytes needed, memory within `read_ahead_mib`, corrupted blocks named."""

import time
import uuid

import numpy as np
import pytest

from raysae import storage
from raysae.config import ConfigError
from raysae.data import LocalStream, RangedShards, ShardError, StreamConfig
from raysae.data import shards as shards_mod
from raysae.data.synthetic import row_ids, write_synthetic_cache

SHARDS = [200, 150, 260, 90]  # the largest shard is 8,320 bytes, far over the bounds below
D = 8                         # float32: 32-byte rows
BLOCK_ROWS = 8                # small checksummed blocks, so a shard has many
BOUND_MIB = 3000 / 2**20      # ~94 rows: a batch of 16 (or its <= 2 windows of 24) fits
C = 3.0


def write_cache(url, monkeypatch, dtype="float32", shard_rows=SHARDS):
    row_bytes = D * (2 if dtype == "bfloat16" else 4)
    monkeypatch.setattr(shards_mod, "BLOCK_BYTES", BLOCK_ROWS * row_bytes)
    return write_synthetic_cache(url, shard_rows, d=D, dtype=dtype, norm_scalar=C)


def upload(src, dst):
    for name in storage.listdir(src):
        storage.write_bytes_atomic(storage.join(dst, name), storage.read_bytes(storage.join(src, name)))


@pytest.fixture
def remote(tmp_path, monkeypatch):
    """(local cache, the same cache on memory://, manifest, rows)."""
    url = str(tmp_path / "cache")
    m, rows = write_cache(url, monkeypatch)
    murl = f"memory://ranged-{uuid.uuid4().hex[:8]}/cache"
    upload(url, murl)
    yield url, murl, m, rows
    fs, path = storage.fs_and_path(murl)
    fs.rm(path, recursive=True)


def config(**kw):
    base = dict(epochs=2, num_brokers=2, drop_last=False, read_ahead_mib=BOUND_MIB)
    return StreamConfig(**{**base, **kw})


def headers(m, shards):
    return sum(m.shards[s].bytes - m.shards[s].rows * m.row_bytes for s in shards)


@pytest.mark.parametrize("window", [0, 24])
def test_remote_batches_equal_the_local_memmap_batches_bitwise(remote, window):
    url, murl, m, _ = remote
    cfg = config(shuffle_window=window)
    local, ranged = LocalStream(url, 16, cfg), LocalStream(murl, 16, cfg)
    straddling = 0
    for g in range(local.plan.total):
        a, b = local.batch(g), ranged.batch(g)
        assert a.dtype == b.dtype and np.array_equal(a.view(np.uint32), b.view(np.uint32))
        straddling += len({x.shard for x in local.plan.batch_rows(*local.plan.locate(g))}) > 1
    assert straddling > 0  # batches across a shard boundary were compared too
    assert all(isinstance(r.source, RangedShards) for r in ranged._readers.values())
    stats = ranged.stats
    assert stats.buffer_peak_bytes > 0 and stats.rows_read == local.stats.rows_read


def test_bf16_and_random_access_match(tmp_path, monkeypatch):
    url = str(tmp_path / "bf16")
    # ids * C exact in bf16 (< 256); 1,280 bytes, over the bound
    m, rows = write_cache(url, monkeypatch, dtype="bfloat16", shard_rows=[40, 40])
    murl = f"memory://ranged-{uuid.uuid4().hex[:8]}/bf16"
    upload(url, murl)
    cfg = config(shuffle_window=24, num_brokers=1, read_ahead_mib=1100 / 2**20)
    local, ranged = LocalStream(url, 16, cfg), LocalStream(murl, 16, cfg)
    order = list(range(local.plan.total))
    order = order[5:] + order[:5] + [3, 3, 0]  # seeks backwards, repeats: the read-ahead restarts
    for g in order:
        a, b = local.reader(0).rows(g), ranged.reader(0).rows(g)
        assert b.dtype == np.uint16 and np.array_equal(a, b)
        np.testing.assert_array_equal(ranged.batch(g), rows[row_ids(ranged.batch(g), C)])
    assert 0 < ranged.stats.buffer_peak_bytes <= 1100
    storage.remove(murl, recursive=True)


def test_bytes_requested_are_the_rows_used(remote):
    url, murl, m, _ = remote
    data = sum(SHARDS) * m.row_bytes
    s = LocalStream(murl, 16, config(epochs=1, num_brokers=1))
    list(s)
    assert s.stats.rows_read == sum(SHARDS)
    # every block once, plus one header read per shard: nothing else
    assert s.stats.bytes_read == data + headers(m, range(len(SHARDS)))
    w = LocalStream(murl, 16, config(epochs=1, num_brokers=1, shuffle_window=24))
    list(w)
    assert data < w.stats.bytes_read <= 1.1 * data + headers(m, range(len(SHARDS)))
    # two epochs read it all twice (the bound is far smaller than the cache)
    t = LocalStream(murl, 16, config(epochs=2, num_brokers=1))
    list(t)
    assert t.stats.bytes_read == 2 * data + headers(m, range(len(SHARDS)))


@pytest.mark.parametrize("window", [0, 24])
def test_memory_stays_within_the_bound_though_shards_are_larger(remote, window):
    url, murl, m, _ = remote
    limit = int(BOUND_MIB * 2**20)
    assert max(s.bytes for s in m.shards) > 2 * limit
    s = LocalStream(murl, 16, config(num_brokers=1, shuffle_window=window))
    list(s)
    peak = s.stats.buffer_peak_bytes
    assert 16 * m.row_bytes <= peak <= limit
    # a bound no batch fits in is a config error naming the field, not a hang
    small = LocalStream(murl, 16, config(read_ahead_mib=8 * m.row_bytes / 2**20))
    with pytest.raises(ConfigError, match="read_ahead_mib"):
        next(small)
    with pytest.raises(ConfigError, match="read_ahead_mib"):
        StreamConfig(read_ahead_mib=0)


def test_read_ahead_runs_ahead_of_the_reader(remote):
    url, murl, m, _ = remote
    s = LocalStream(murl, 16, config(num_brokers=1))
    next(s)
    src = s.reader(0).source
    deadline = time.monotonic() + 10
    while src._held < int(BOUND_MIB * 2**20) - 3 * 16 * m.row_bytes and time.monotonic() < deadline:
        time.sleep(0.01)  # the fetch thread fills the buffer while nobody reads
    assert s.stats.bytes_read - headers(m, [0]) > 3 * 16 * m.row_bytes
    s.close()


def test_an_endless_stream_of_a_cache_smaller_than_the_bound_plans_only_so_far_ahead(remote):
    # every block fits in the bound, so admission never waits: without a horizon the fetch
    # thread planned an endless stream (epochs: null) forever, holding the GIL
    url, murl, m, _ = remote
    s = LocalStream(murl, 16, config(num_brokers=1, epochs=None, read_ahead_mib=1.0))
    for _ in range(3):
        next(s)
    src = s.reader(0).source
    time.sleep(0.5)
    planned = src._next
    assert src.horizon == 2**20 // (16 * m.row_bytes)
    assert planned - src._cursor <= src.horizon
    time.sleep(0.3)
    assert src._next == planned            # idle until the reader moves on
    next(s)
    deadline = time.monotonic() + 5
    while src._next == planned and time.monotonic() < deadline:
        time.sleep(0.01)
    assert src._next == planned + 1
    s.close()


@pytest.mark.parametrize("window", [0, 24])
def test_a_corrupted_byte_in_a_remote_shard_is_named(remote, window):
    url, murl, m, _ = remote
    info = m.shards[2]
    path = storage.join(murl, info.name)
    data = bytearray(storage.read_bytes(path))
    row = 37  # block 4: rows 32..39
    data[info.bytes - info.rows * m.row_bytes + row * m.row_bytes + 5] ^= 0x40
    storage.write_bytes_atomic(path, bytes(data))
    cfg = config(num_brokers=1, epochs=1, shuffle_shards=False, shuffle_window=window)
    delivered = []
    with pytest.raises(ShardError, match=r"shard-00002\.npy: rows 32\.\.39 do not match the "
                                         r"manifest's checksum"):
        for batch in LocalStream(murl, 16, cfg):
            delivered.append(row_ids(batch, C))
    first = sum(SHARDS[:2])  # shard 2's global row 0
    assert delivered and first + row not in np.concatenate(delivered)
    # unchecked (not the default), the altered row is handed out
    off = LocalStream(murl, 16, config(num_brokers=1, epochs=1, shuffle_shards=False,
                                       shuffle_window=window, check_blocks=False))
    assert first + row in np.concatenate([row_ids(b, C) for b in off])


def test_truncated_or_mislaid_remote_shard_is_named(remote):
    url, murl, m, _ = remote
    path = storage.join(murl, m.shards[1].name)
    storage.write_bytes_atomic(path, storage.read_bytes(path)[:-10])
    cfg = config(num_brokers=1, epochs=1, shuffle_shards=False)
    with pytest.raises(ShardError, match=r"shard-00001\.npy.*truncated"):
        list(LocalStream(murl, 16, cfg))
    storage.remove(path)
    with pytest.raises(ShardError, match=r"shard-00001\.npy.*missing"):
        list(LocalStream(murl, 16, cfg))


@pytest.mark.slow
def test_gs_range_reads_match_local(tmp_path, monkeypatch):
    """gcsfs's concurrent ranged requests against a GCS emulator, through the same reader."""
    from tests.gcs import BUCKET, emulator

    url = str(tmp_path / "cache")
    m, _ = write_cache(url, monkeypatch)
    with emulator():
        gurl = f"gs://{BUCKET}/ranged/cache"
        upload(url, gurl)
        cfg = config(num_brokers=1, epochs=1, shuffle_window=24)
        local, remote = LocalStream(url, 16, cfg), LocalStream(gurl, 16, cfg)
        for a, b in zip(local, remote):
            assert np.array_equal(a.view(np.uint32), b.view(np.uint32))
        assert remote.position == local.position == local.plan.total
        assert remote.stats.buffer_peak_bytes <= int(BOUND_MIB * 2**20)
        remote.close()
