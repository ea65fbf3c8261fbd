"""A broker streaming a gs:// cache (GCS emulator) by range reads: the local memmap batches,
and its read-ahead high-water mark in `BrokerStats`, within `read_ahead_mib`."""

import numpy as np
import pytest
import ray

from raysae import storage
from raysae.data import LocalStream, StreamConfig
from raysae.data import shards as shards_mod
from raysae.data.synthetic import write_synthetic_cache
from raysae.stream import BatchStream, start_brokers, stop_brokers
from tests.gcs import BUCKET, emulator

pytestmark = [pytest.mark.ray, pytest.mark.slow]


def test_broker_range_reads_gs_within_the_bound(tmp_path, monkeypatch):
    monkeypatch.setattr(shards_mod, "BLOCK_BYTES", 16 * 32)  # 16-row blocks of 32-byte rows
    url = str(tmp_path / "cache")
    m, _ = write_synthetic_cache(url, [300, 200], d=8, norm_scalar=3.0)
    bound = 4096  # bytes: 128 rows, under either shard
    cfg = StreamConfig(epochs=1, shuffle_window=32, read_ahead_mib=bound / 2**20,
                       buffer_batches=4, block_batches=2)
    want = [b.view(np.uint32) for b in LocalStream(url, 16, cfg)]
    with emulator() as env:
        gurl = f"gs://{BUCKET}/broker/cache"
        for name in storage.listdir(url):
            storage.write_bytes_atomic(storage.join(gurl, name),
                                       storage.read_bytes(storage.join(url, name)))
        ray.init(address="local", num_cpus=2, object_store_memory=100 * 2**20,
                 include_dashboard=False, log_to_driver=False, runtime_env={"env_vars": env})
        try:
            h = start_brokers(gurl, 16, cfg, name="ranged")
            try:
                got = [b.view(np.uint32) for b in BatchStream(h, consumer_id="c")]
                stats = ray.get(h.actors[0].stats.remote())
            finally:
                stop_brokers(h)
        finally:
            ray.shutdown()
    assert len(got) == len(want) and all(np.array_equal(a, b) for a, b in zip(got, want))
    assert 16 * m.row_bytes <= stats.read_ahead_peak_bytes <= bound
    assert stats.bytes_read >= 500 * m.row_bytes
