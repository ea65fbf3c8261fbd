"""The batch order and the single-process reader (no Ray): coverage, determinism, values,
resume, remote URLs and bad shards."""

import sys

import numpy as np
import pytest

from raysae import storage
from raysae.config import ConfigError, from_dict
from raysae.data import BatchPlan, LocalSource, LocalStream, Manifest, ShardError, StreamConfig, write_shard
from raysae.data.plan import balanced_slices
from raysae.data.synthetic import row_ids, write_synthetic_cache

SHARDS = [50, 37, 64, 20, 41]  # uneven on purpose
C = 3.0


def indexed(stream):
    """(global index, batch) pairs of a stream."""
    while True:
        try:
            batch = next(stream)
        except StopIteration:
            return
        yield stream.position - 1, batch


def test_the_data_core_imports_without_ray():
    import subprocess

    code = ("import sys, raysae.data, raysae.train, raysae.sweep.spec, raysae.sweep.evaluate, "
            "raysae.sweep.trial, raysae.evals, raysae.activations; "
            "print('ray' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


@pytest.fixture
def cache(tmp_path):
    url = str(tmp_path / "cache")
    m, rows = write_synthetic_cache(url, SHARDS, d=6, norm_scalar=C)
    return url, m, rows


def test_config_errors_name_the_field(cache):
    with pytest.raises(ConfigError, match="batch_size"):
        LocalStream(cache[0], 0)
    with pytest.raises(ConfigError, match="reader"):
        LocalStream(cache[0], 8, StreamConfig(reader="ray_data"))
    with pytest.raises(ConfigError, match="lag_policy"):
        from_dict(StreamConfig, {"lag_policy": "wait"})
    with pytest.raises(ConfigError, match="block_batches"):
        StreamConfig(buffer_batches=4, block_batches=5)
    with pytest.raises(ConfigError, match="epochs"):
        from_dict(StreamConfig, {"epochs": 0})
    assert from_dict(StreamConfig, {"epochs": None, "seed": 3}).seed == 3


def test_slices_are_contiguous_balanced_and_complete():
    sl = balanced_slices([10] * 10, 3)
    assert [list(s) for s in sl] == [[0, 1, 2, 3], [4, 5, 6], [7, 8, 9]]
    sl = balanced_slices([100, 1, 1, 1], 3)
    assert sum(len(s) for s in sl) == 4 and all(len(s) >= 1 for s in sl)
    with pytest.raises(ConfigError, match="num_brokers"):
        balanced_slices([1, 2], 3)


@pytest.mark.parametrize("sizes", [[50, 37, 64, 20, 41], [30, 30, 30]])
def test_locate_and_global_index_are_inverse(sizes):
    m = Manifest(model="m", site="s", layer=0, d=2,
                 shards=[type("I", (), {"rows": n, "name": f"s{i}"})() for i, n in enumerate(sizes)])
    for nb in (1, 2, 3):
        plan = BatchPlan(m, 16, StreamConfig(epochs=2, num_brokers=nb, drop_last=False))
        seen = set()
        for g in range(plan.total):
            b, j = plan.locate(g)
            assert plan.global_index(b, j) == g
            seen.add((b, j))
        assert seen == {(b, j) for b in range(nb) for j in range(plan.broker_batches[b])}
        with pytest.raises(IndexError):
            plan.locate(plan.total)


@pytest.mark.parametrize("nb,window", [(1, 0), (2, 23), (3, 1000)])
def test_every_row_exactly_once_per_epoch(cache, nb, window):
    url, m, rows = cache
    cfg = StreamConfig(shuffle_window=window, epochs=3, num_brokers=nb, drop_last=False)
    stream = LocalStream(url, 16, cfg)
    per_broker: dict[int, list[np.ndarray]] = {b: [] for b in range(nb)}
    for g, batch in indexed(stream):
        b, _ = stream.plan.locate(g)
        per_broker[b].append(row_ids(batch, C))
    for b, slc in enumerate(stream.plan.slices):
        ids = np.concatenate(per_broker[b])
        lo = sum(SHARDS[: slc.start])
        want = np.arange(lo, lo + sum(SHARDS[slc.start: slc.stop]))
        n = len(want)
        assert len(ids) == 3 * n
        epochs = [ids[e * n:(e + 1) * n] for e in range(3)]
        for e in epochs:
            np.testing.assert_array_equal(np.sort(e), want)
        if window > 1:  # shuffled, and differently in each epoch
            assert not np.array_equal(epochs[0], want)
            assert not np.array_equal(epochs[0], epochs[1])


def test_batches_are_the_raw_rows_and_full_size(cache):
    url, m, rows = cache
    cfg = StreamConfig(shuffle_window=40, epochs=1, num_brokers=2)
    for batch in LocalStream(url, 32, cfg):
        assert batch.dtype == np.float32 and batch.shape == (32, 6)
        np.testing.assert_array_equal(batch, rows[row_ids(batch, C)])


def test_same_config_same_order_other_seed_differs_and_resume(cache):
    url, _, _ = cache
    cfg = StreamConfig(shuffle_window=50, num_brokers=2)  # endless epochs
    a = [row_ids(x, C) for _, x in zip(range(40), LocalStream(url, 16, cfg))]
    b = [row_ids(x, C) for _, x in zip(range(40), LocalStream(url, 16, cfg))]
    c = [row_ids(x, C) for _, x in zip(range(40), LocalStream(url, 16, StreamConfig(
        shuffle_window=50, num_brokers=2, seed=1)))]
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c))
    resumed = LocalSource(url, 16, cfg).open(25)
    got = [(g, row_ids(x, C)) for _, (g, x) in zip(range(15), indexed(resumed))]
    assert [g for g, _ in got] == list(range(25, 40))
    assert all(np.array_equal(x, a[g]) for g, x in got)
    assert resumed.position == 40
    assert LocalSource(url, 16, cfg).open(None).position == 0


def test_transcoder_and_bf16_caches(tmp_path):
    url = str(tmp_path / "tc")
    m, rows = write_synthetic_cache(url, [40, 40], d=4, parts=("input", "target"),
                                    dtype="bfloat16", norm_scalar=0.5)
    got = list(LocalStream(url, 20, StreamConfig(shuffle_window=30, epochs=1)))
    assert len(got) == 4
    for batch in got:  # bf16 widened exactly, both halves raw
        assert batch.shape == (20, 8) and batch.dtype == np.float32
        np.testing.assert_array_equal(batch, rows[row_ids(batch, 0.5)])


def test_remote_url_reads_each_shard_once_per_epoch(cache):
    url, m, rows = cache
    murl = "memory://stream-test/remote"
    fs, path = storage.fs_and_path(murl)
    for name in storage.listdir(url):
        storage.write_bytes_atomic(storage.join(murl, name), storage.read_bytes(storage.join(url, name)))
    s = LocalStream(murl, 16, StreamConfig(shuffle_window=20, epochs=1, verify=True))
    ids = np.concatenate([row_ids(b, C) for b in s])
    assert len(np.unique(ids)) == len(ids) == (sum(SHARDS) // 16) * 16
    assert s.stats.bytes_read == sum(i.bytes for i in m.shards)
    fs.rm(path, recursive=True)


def _corrupt(url, name, how):
    p = storage.join(url, name)
    data = bytearray(storage.read_bytes(p))
    if how == "truncate":
        data = data[:-10]
    else:
        data[-1] ^= 0xFF
    with storage.open_url(p, "wb") as f:
        f.write(bytes(data))


@pytest.mark.parametrize("how,verify,msg", [("truncate", False, "truncated"),
                                            ("flip", True, "sha256")])
def test_bad_shard_is_named(cache, how, verify, msg):
    url, _, _ = cache
    _corrupt(url, "shard-00003.npy", how)
    cfg = StreamConfig(epochs=1, verify=verify, shuffle_shards=False)
    with pytest.raises(ShardError, match=rf"shard-00003\.npy.*{msg}"):
        list(LocalStream(url, 16, cfg))


def test_manifest_d_disagreeing_with_a_shard_is_named(tmp_path):
    url = str(tmp_path / "c")
    m, _ = write_synthetic_cache(url, [10, 10], d=4)
    m.shards[1] = write_shard(url, 1, np.zeros((10, 5), np.float32))
    m.save(url)
    with pytest.raises(ShardError, match=r"shard-00001\.npy.*d=4"):
        list(LocalStream(url, 5, StreamConfig(epochs=1)))


# --- the contiguous fast path (shuffle_window <= 1) --------------------------------------

def _expected_contiguous(stream, b, j):
    """Global row ids of local batch j of broker b with no row shuffle, from first principles:
    each epoch is the slice's shards in the plan's seeded order, concatenated."""
    plan = stream.plan
    B, N = plan.batch_size, plan.slice_rows[b]
    starts = np.concatenate([[0], np.cumsum(SHARDS)])
    ids = []
    for pos in range(j * B, min((j + 1) * B, (plan.config.epochs or 10**9) * N)):
        e, q = divmod(pos, N)
        for s in plan.epoch_order(b, e):
            if q < SHARDS[s]:
                ids.append(starts[s] + q)
                break
            q -= SHARDS[s]
    return np.array(ids)


@pytest.mark.parametrize("window", [0, 1])
@pytest.mark.parametrize("nb,bs", [(1, 16), (2, 7), (3, 64)])
def test_contiguous_batches_are_shard_runs_in_seeded_order(cache, window, nb, bs):
    url, m, rows = cache
    cfg = StreamConfig(shuffle_window=window, epochs=3, num_brokers=nb, drop_last=False)
    stream = LocalStream(url, bs, cfg)
    per_broker: dict[int, list[np.ndarray]] = {b: [] for b in range(nb)}
    views = copies = 0
    for g, batch in indexed(stream):
        b, j = stream.plan.locate(g)
        want = _expected_contiguous(stream, b, j)
        np.testing.assert_array_equal(row_ids(batch, C), want)
        np.testing.assert_array_equal(batch, rows[want])  # raw: exactly the stored rows
        assert not batch.flags.writeable
        raw = stream.reader(b).rows(j)
        one_shard = len(np.unique(np.searchsorted(np.cumsum(SHARDS), want, side="right"))) == 1
        if one_shard and np.array_equal(want, np.arange(want[0], want[0] + len(want))):
            assert not raw.flags.owndata  # one run inside one shard: a view, no copy
            views += 1
        else:  # straddles shards (or an epoch boundary): copied
            assert raw.flags.owndata
            copies += 1
        per_broker[b].append(want)
    assert views > 0 and copies > 0  # both the view and the straddling copy were exercised
    for b, slc in enumerate(stream.plan.slices):  # every row exactly once per epoch
        ids = np.concatenate(per_broker[b])
        n = sum(SHARDS[slc.start: slc.stop])
        assert len(ids) == 3 * n
        for e in range(3):
            assert sorted(ids[e * n:(e + 1) * n]) == sorted(
                range(sum(SHARDS[: slc.start]), sum(SHARDS[: slc.start]) + n))
        if len(slc) > 1:  # shards reshuffled per epoch
            assert not all(np.array_equal(ids[:n], ids[e * n:(e + 1) * n]) for e in (1, 2))


def test_fast_path_matches_the_window_gather_path(cache):
    """The fast path's batches equal a window gather whose permutation is the identity."""
    url, m, _ = cache
    cfg = StreamConfig(shuffle_window=0, epochs=2, num_brokers=2)
    fast = LocalStream(url, 16, cfg)
    slow = LocalStream(url, 16, cfg)
    W = 10**6  # one window per epoch, its permutation the identity: the gather path, no shuffle
    slow.plan.config = StreamConfig(shuffle_window=W, epochs=2, num_brokers=2)
    slow.plan._window_perm = lambda b, e, w: np.arange(min(W, slow.plan.slice_rows[b] - w * W))
    assert fast.plan.contiguous and not slow.plan.contiguous
    for (g, a), (h, b) in zip(indexed(fast), indexed(slow)):
        assert g == h
        np.testing.assert_array_equal(a, b)
    assert fast.position == slow.position == fast.plan.total


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("window", [0, 30])
def test_batches_are_raw_rows_widened_to_float32(tmp_path, dtype, window):
    url = str(tmp_path / dtype)
    m, rows = write_synthetic_cache(url, [40, 40, 24], d=4, parts=("input", "target"),
                                    dtype=dtype, norm_scalar=C)
    cfg = StreamConfig(shuffle_window=window, epochs=2, num_brokers=2, drop_last=False)
    raw = list(LocalStream(url, 16, cfg))
    assert len(raw) > 0
    for r in raw:
        assert r.dtype == np.float32
        np.testing.assert_array_equal(r, rows[row_ids(r, C)])  # bf16: widened exactly
    stored = LocalStream(url, 16, cfg).reader(0).rows(0)
    assert stored.dtype == (np.uint16 if dtype == "bfloat16" else np.float32)


def test_a_nan_in_the_cache_is_named_by_batch_shard_and_rows(tmp_path):
    """The training error names the global batch and where its rows are stored."""
    from raysae.train import TrainConfig, TrainingDataError, train

    url = str(tmp_path / "nan")
    m, rows = write_synthetic_cache(url, [64, 64], d=4, norm_scalar=C)
    stored = np.load(f"{url}/shard-00001.npy")
    stored[40, 2] = np.nan                                   # shard 1, row 40
    m.shards[1] = write_shard(url, 1, stored)
    m.save(url)
    cfg = StreamConfig(shuffle_shards=False, epochs=1)
    tc = TrainConfig(width=8, steps=8, batch_size=16, lr=1e-3, lr_warmup_steps=0, log_every=1)
    with pytest.raises(TrainingDataError,
                       match=r"batch 6 \(.*shard-00001\.npy rows 32\.\.47\) \(step 6\) contains NaN"):
        train(tc, LocalSource(url, 16, cfg), norm_scalar=C)


def _alter_one_value(url, name, row, col, value=1e6):
    """Change one value of a stored shard in place, keeping its size (no header change)."""
    arr = np.load(f"{url}/{name}", mmap_mode="r+")
    arr[row, col] = value
    arr.flush()
    del arr


@pytest.mark.parametrize("window", [0, 30])
def test_an_altered_shard_is_caught_before_its_rows_are_used(cache, window):
    url, m, rows = cache
    _alter_one_value(url, "shard-00002.npy", 10, 3)
    cfg = StreamConfig(shuffle_window=window, epochs=1, shuffle_shards=False)
    delivered = []
    with pytest.raises(ShardError, match=r"shard-00002\.npy: rows 0\.\.63 do not match the "
                                         r"manifest's checksum"):
        for batch in LocalStream(url, 16, cfg):
            delivered.append(batch)
    assert delivered and not any((b == 1e6).any() for b in delivered)  # never handed out
    # with the check off (not the default), the altered value goes to training unnoticed
    off = list(LocalStream(url, 16, StreamConfig(shuffle_window=window, epochs=1,
                                                 shuffle_shards=False, check_blocks=False)))
    assert any((b == 1e6).any() for b in off)


def test_block_checksums_are_in_the_manifest_and_old_caches_still_read(cache):
    url, m, _ = cache
    info = m.shards[0]
    assert info.block_rows > 0 and len(info.crc32) == -(-info.rows // info.block_rows)
    for s in m.shards:  # a cache written before block checksums: nothing to check
        s.crc32, s.block_rows = [], 0
    m.save(url)
    _alter_one_value(url, "shard-00001.npy", 5, 1)
    assert len(list(LocalStream(url, 16, StreamConfig(epochs=1)))) > 0
