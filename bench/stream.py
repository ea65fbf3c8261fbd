"""Benchmark of the shared activation stream (issue 6): read paths, throughput, read amplification.

    .venv/bin/python bench/stream.py [--d 2304] [--shards 8] [--rows 8192] [--epochs 2]
                                     [--consumers 1,2,4,8] [--batch 4096] [--buffer 16]

Writes a synthetic float32 cache (Gemma 2 2B residual width by default) to a temp dir,
then, in one run:
1. raw numpy memmap read of the shards (copy into a buffer, warm page cache): the baseline;
2. Ray Data `read_numpy` of the same shards (blocks iterated as numpy);
3. `LocalStream` (one process: shuffled gather, divide by C) — what a trial reading its
   own copy does;
4. brokers -> N consumers (Ray tasks, zero-copy `ray.get`), N in --consumers: GB/s per
   consumer and aggregate, and bytes the brokers read from storage / dataset bytes;
5. N consumers each reading their own copy with `LocalStream` (the no-sharing baseline).
Ratios are within this run. Prints a markdown table.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import numpy as np
import ray

from raysae.activations.shards import Manifest
from raysae.stream import BatchStream, LocalStream, StreamConfig, start_brokers, stop_brokers
from raysae.stream.synthetic import write_synthetic_cache


def gbps(nbytes: float, secs: float) -> float:
    return nbytes / secs / 1e9


def raw_memmap(url: str, m: Manifest) -> float:
    buf = np.empty((m.shards[0].rows, m.width), np.float32)
    total, t = 0, time.perf_counter()
    for s in m.shards:
        mm = np.load(os.path.join(url, s.name), mmap_mode="r")
        np.copyto(buf[: len(mm)], mm)
        total += mm.nbytes
    return gbps(total, time.perf_counter() - t)


def ray_data_read(url: str, m: Manifest) -> float:
    paths = [os.path.join(url, s.name) for s in m.shards]
    ds = ray.data.read_numpy(paths, override_num_blocks=len(paths))
    total, t = 0, time.perf_counter()
    for block in ds.iter_batches(batch_size=None, batch_format="numpy", prefetch_batches=2):
        total += block["data"].nbytes
    return gbps(total, time.perf_counter() - t)


@ray.remote(num_cpus=0)
def shared_consumer(handle, cid):
    s = BatchStream(handle, consumer_id=cid)
    n, t0 = 0, None
    for _, b in s:
        if t0 is None:  # from the first batch: excludes start-up, includes every wait
            t0 = time.perf_counter()
        n += b.nbytes
    t = time.perf_counter() - t0
    s.close()
    return n, t


@ray.remote(num_cpus=0)
def own_copy_consumer(url, cfg):
    s = LocalStream(url, cfg)
    n, t0 = 0, time.perf_counter()
    for _, b in s:
        n += b.nbytes
    return n, time.perf_counter() - t0, s.stats.bytes_read


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--d", type=int, default=2304)
    ap.add_argument("--shards", type=int, default=8)
    ap.add_argument("--rows", type=int, default=8192)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--batch", type=int, default=4096)
    ap.add_argument("--buffer", type=int, default=16)
    ap.add_argument("--consumers", default="1,2,4,8")
    ap.add_argument("--brokers", type=int, default=1)
    ap.add_argument("--object-store-gib", type=float, default=2.0)
    ap.add_argument("--no-preallocate", action="store_true",
                    help="don't pre-fault the object store (ray.put then pays page faults)")
    args = ap.parse_args()
    # Pre-faulting plasma memory at start-up (Ray's preallocate_plasma_memory) makes ray.put a
    # plain memcpy instead of a page-fault-bound copy: ~2x put throughput measured here.
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             object_store_memory=int(args.object_store_gib * 2**30),
             _system_config={"preallocate_plasma_memory": not args.no_preallocate})
    ray.data.DataContext.get_current().enable_progress_bars = False
    url = tempfile.mkdtemp(prefix="raysae-bench-stream-")
    m, _ = write_synthetic_cache(url, [args.rows] * args.shards, d=args.d, norm_scalar=3.0)
    data_bytes = sum(s.rows for s in m.shards) * m.row_bytes
    cfg = StreamConfig(batch_size=args.batch, epochs=args.epochs, buffer_batches=args.buffer,
                       block_batches=4, shuffle_window=4 * args.batch, num_brokers=args.brokers)
    print(f"cache: {args.shards} shards x {args.rows} rows x d={args.d} float32 = "
          f"{data_bytes / 1e9:.2f} GB; batch {args.batch} ({args.batch * m.row_bytes / 2**20:.0f} MiB)"
          f", {args.epochs} epochs, {args.brokers} broker(s), ring {args.buffer} batches, "
          f"2-core machine\n")
    raw_memmap(url, m)  # warm the page cache
    raw = max(raw_memmap(url, m) for _ in range(3))
    rd = max(ray_data_read(url, m) for _ in range(2))
    one = LocalStream(url, cfg)
    n, t = 0, time.perf_counter()
    for _, b in one:
        n += b.nbytes
    local = gbps(n, time.perf_counter() - t)
    rows = [("raw numpy memmap read (copy)", raw, 1.0), ("Ray Data read_numpy", rd, rd / raw),
            ("LocalStream, 1 process (shuffle + /C)", local, local / raw)]
    print("| path | GB/s | vs memmap |\n|---|---:|---:|")
    for name, v, r in rows:
        print(f"| {name} | {v:.2f} | {r:.2f}x |")
    print("\n| consumers | shared: GB/s per consumer (min) | shared: aggregate GB/s | "
          "shared: read amplification | own copy: GB/s per consumer (min) | "
          "own copy: read amplification |\n|---:|---:|---:|---:|---:|---:|")
    for i, N in enumerate(int(x) for x in args.consumers.split(",")):
        c = StreamConfig(**{**cfg.__dict__, "expect_consumers": N})
        h = start_brokers(url, c, name=f"bench{i}")
        res = ray.get([shared_consumer.remote(h, f"c{k}") for k in range(N)])
        read = sum(s["bytes_read"] for s in ray.get([a.stats.remote() for a in h.actors]))
        stop_brokers(h)
        per = min(gbps(b, t) for b, t in res)
        agg = sum(b for b, _ in res) / max(t for _, t in res) / 1e9
        own = ray.get([own_copy_consumer.remote(url, cfg) for _ in range(N)])
        own_per = min(gbps(b, t) for b, t, _ in own)
        own_read = sum(r for _, _, r in own)
        ep = args.epochs * data_bytes
        print(f"| {N} | {per:.2f} ({per / raw:.2f}x memmap) | {agg:.2f} | {read / ep:.2f}x | "
              f"{own_per:.2f} | {own_read / ep:.2f}x |")
    ray.shutdown()


if __name__ == "__main__":
    main()
