"""Two raylets on this machine (ray.cluster_utils.Cluster): brokers pinned to a data node by a
custom resource, consumers and sweep trials on the other node. The batches are the plan's,
each read from storage once whatever the number of consumers, and each put once."""

from __future__ import annotations

import os

import numpy as np
import pytest
import ray
from ray.cluster_utils import Cluster

from raysae.config import from_dict
from raysae.data import LocalStream, StreamConfig
from raysae.data.synthetic import row_ids, write_synthetic_cache
from raysae.stream import BatchStream, start_brokers, stop_brokers
from tests.helpers import write_cache

pytestmark = [pytest.mark.slow, pytest.mark.ray, pytest.mark.timeout(900)]
SHARDS = [64, 48, 64, 40]
C = 2.0
DATA = {"data": 0.01}  # what a broker asks for: only the head node advertises `data`


@pytest.fixture(scope="module")
def two_nodes():
    # head: the driver and the brokers, no CPUs for trials; worker: the trials
    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 0, "resources": {"data": 1}, "object_store_memory": 150 * 2**20,
        "include_dashboard": False})
    worker = cluster.add_node(num_cpus=2, object_store_memory=150 * 2**20)
    ray.init(address=cluster.address, log_to_driver=False)
    cluster.wait_for_nodes()
    yield cluster.head_node.node_id, worker.node_id
    ray.shutdown()
    cluster.shutdown()


def node_of(actor) -> str:
    return ray.get(actor.__ray_call__.remote(lambda self: ray.get_runtime_context().get_node_id()))


@ray.remote(num_cpus=0.5)
def consume(handle, cid):
    stream = BatchStream(handle, consumer_id=cid)
    got = [row_ids(b, C) for b in stream]
    stream.close()
    return ray.get_runtime_context().get_node_id(), got


def test_brokers_on_one_node_consumers_on_another_get_the_plan_once(two_nodes, tmp_path):
    head, worker = two_nodes
    url = str(tmp_path / "cache")
    m, _ = write_synthetic_cache(url, SHARDS, d=8, norm_scalar=C)
    cfg = StreamConfig(shuffle_window=32, epochs=2, num_brokers=2, buffer_batches=8,
                       block_batches=4, expect_consumers=3, broker_resources=DATA)
    handle = start_brokers(url, 16, cfg, name="two-nodes")
    try:
        assert {node_of(a) for a in handle.actors} == {head}
        results = ray.get([consume.remote(handle, f"c{i}") for i in range(3)])
        want = [row_ids(b, C) for b in LocalStream(url, 16, cfg)]
        for node, got in results:
            assert node == worker  # across the node boundary
            assert len(got) == len(want) and all(np.array_equal(a, b) for a, b in zip(got, want))
        stats = ray.get([a.stats.remote() for a in handle.actors])
        # read amplification 1.0 on the data node: each row read once per epoch, for 3 readers
        assert sum(s.bytes_read for s in stats) == 2 * sum(SHARDS) * m.row_bytes
        assert sum(s.batches_built for s in stats) == len(want)  # each batch put once
    finally:
        stop_brokers(handle)


def test_a_sweep_with_brokers_on_the_data_node_and_trials_on_the_other(two_nodes, tmp_path):
    from raysae.sweep import SweepConfig
    from raysae.sweep.launch import run_sweep

    head, worker = two_nodes
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    cache = write_cache(str(tmp_path / "cache"), shards=2, rows=2048)
    spec = {"name": "nodes", "storage": str(tmp_path / "runs"), "model": "tiny", "sites": ["res:1"],
            "widths": [64], "sparsity": {"grid": [0.003, 0.03]}, "tokens": 256 * 30,
            "train": {"batch_size": 256, "lr": 0.003, "lr_warmup_steps": 5,
                      "sparsity_warmup_steps": 10, "log_every": 10, "checkpoint_every": 10},
            "stream": {"buffer_batches": 8, "broker_resources": DATA},
            "data": {"manifest": cache}, "final_eval": {"activation_batches": 2},
            "resources": {"cpus": 1}}
    result = run_sweep(from_dict(SweepConfig, spec), verbose=0)
    assert len(result.results) == 2 and all(r.error is None for r in result.results)
    for r in result.results:
        assert r.metrics["node_id"] == worker and r.metrics["step"] == 30
    # both trials read one stream: the data node's brokers built each batch once
    (stats,) = result.stream_stats.values()
    built = sum(s.batches_built for s in stats)
    starts = [r.metrics["stream/start"] for r in result.results]
    # the furthest trial's batches, plus at most what the ring (8) let the broker run ahead:
    # not one copy per trial (that would be 60)
    assert max(starts) + 30 <= built <= max(starts) + 30 + 2 * 8
    assert sum(s.bytes_read for s in stats) == built * 256 * 32 * 4
