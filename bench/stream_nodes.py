"""Benchmark of cross-node delivery: brokers on one raylet, consumers on the same or another.

    .venv/bin/python bench/stream_nodes.py [--d 2304] [--shards 4] [--rows 8192] [--epochs 8]
                                           [--batch 4096] [--consumers 1,2]

Two raylets on this machine (`ray.cluster_utils.Cluster`): the head advertises a `data`
resource and holds the brokers (`stream.broker_resources`), the second node has the CPUs.
In one run: the raw memmap read speed of the shards (the baseline), then N consumers on the
brokers' node and N on the other node, contiguous batches: per-consumer GB/s as a ratio of
memmap, and bytes the brokers read from storage / dataset bytes. Both raylets share one
machine here, so "cross-node" pays the object manager's transfer between two object stores
(a real network adds its own bandwidth limit on top). Prints a markdown table.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile

import ray
from ray.cluster_utils import Cluster

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from stream import raw_memmap, timed  # noqa: E402  (bench/stream.py: the same measurements)

from raysae.data import Manifest, StreamConfig  # noqa: E402
from raysae.data.synthetic import write_synthetic_cache  # noqa: E402
from raysae.stream import BatchStream, start_brokers, stop_brokers  # noqa: E402


@ray.remote(num_cpus=0)
def consumer(handle, cid, skip):
    s = BatchStream(handle, consumer_id=cid)
    n, t = timed(s, skip)
    s.close()
    return n, t, ray.get_runtime_context().get_node_id()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--d", type=int, default=2304)
    ap.add_argument("--shards", type=int, default=4)
    ap.add_argument("--rows", type=int, default=8192)
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--batch", type=int, default=4096)
    ap.add_argument("--buffer", type=int, default=16)
    ap.add_argument("--consumers", default="1,2")
    args = ap.parse_args()

    store = 3 * args.buffer * args.batch * args.d * 4 + 200 * 2**20  # rings fit in half
    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 1, "resources": {"data": 1}, "object_store_memory": store,
        "include_dashboard": False})
    other = cluster.add_node(num_cpus=1, resources={"far": 100}, object_store_memory=store)
    ray.init(address=cluster.address, log_to_driver=False)
    cluster.wait_for_nodes()
    head = cluster.head_node.node_id
    try:
        with tempfile.TemporaryDirectory() as tmp:
            url = os.path.join(tmp, "cache")
            m, _ = write_synthetic_cache(url, [args.rows] * args.shards, d=args.d)
            m = Manifest.load(url)
            raw_memmap(url, m)  # warm the page cache
            base = raw_memmap(url, m)
            print(f"memmap read: {base:.2f} GB/s ({args.shards} x {args.rows} rows x d={args.d})\n")
            print("| consumers | where | GB/s per consumer | / memmap | storage reads / dataset |")
            print("|---|---|---|---|---|")
            data_bytes = args.epochs * m.total_rows * m.row_bytes
            for n in map(int, args.consumers.split(",")):
                for where, res in (("same node", {"data": 0.001}), ("other node", {"far": 1})):
                    cfg = StreamConfig(epochs=args.epochs, buffer_batches=args.buffer,
                                       block_batches=4, expect_consumers=n,
                                       broker_resources={"data": 0.001})
                    h = start_brokers(url, args.batch, cfg, name=f"b-{n}-{where[0]}")
                    try:
                        runs = ray.get([consumer.options(resources=res).remote(
                            h, f"c{i}", args.buffer) for i in range(n)])
                        assert all((node == head) == (where == "same node") for *_, node in runs)
                        per = [b / t / 1e9 for b, t, _ in runs]
                        read = sum(s.bytes_read for s in ray.get([a.stats.remote()
                                                                  for a in h.actors]))
                    finally:
                        stop_brokers(h)
                    mean = sum(per) / len(per)
                    print(f"| {n} | {where} | {mean:.2f} | {mean / base:.2f} | "
                          f"{read / data_bytes:.2f} |")
            del other
    finally:
        ray.shutdown()
        cluster.shutdown()


if __name__ == "__main__":
    main()
