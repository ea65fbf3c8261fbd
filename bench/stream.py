"""Benchmark of the shared activation stream: read paths, throughput, read amplification.

    .venv/bin/python bench/stream.py [--d 2304] [--shards 8] [--rows 8192] [--epochs 16]
                                     [--consumers 1,2,4,8] [--batch 4096] [--buffer 16]
                                     [--modes contiguous,window]

Writes a synthetic float32 cache (Gemma 2 2B residual width by default) to a temp dir,
then, in one run:
1. raw numpy memmap read of the shards (copy into a buffer, warm page cache): the baseline;
2. Ray Data `read_numpy` of the same shards (blocks iterated as numpy);
3. `LocalStream` (one process) in each mode — what a trial reading its own copy does;
4. brokers -> N consumers (Ray tasks, `ray.get` zero copy) in each mode, N in
   --consumers: GB/s per consumer and aggregate, and bytes the brokers read from storage /
   dataset bytes;
5. N consumers each reading their own copy with `LocalStream` (the no-sharing baseline).
Modes: `contiguous` = shuffle_window 0 (a batch is a slice of one shard, put zero copy),
`window` = shuffle_window 4 x batch (rows gathered one by one). Batches are raw (the
trainer divides by C on its device); a float32 batch is the object store's buffer.
Consumer GB/s is steady state: timed from the first batch after the brokers' initial
ring (filled before the consumers start) to the last. Ratios are within this run.
Prints markdown tables.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import numpy as np
import ray

from raysae.data import LocalStream, Manifest, StreamConfig
from raysae.data.synthetic import write_synthetic_cache
from raysae.stream import BatchStream, start_brokers, stop_brokers


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


MODES = {"contiguous": 0, "window": None}  # shuffle_window (None: 4 x batch)


def timed(it, skip: int):
    """Bytes and seconds from batch `skip` on (earlier ones were buffered before the start)."""
    n, t0 = 0, None
    for i, b in enumerate(it):
        if i == skip:
            t0 = time.perf_counter()
        elif i > skip:
            n += b.nbytes
    return n, time.perf_counter() - t0


@ray.remote(num_cpus=0)
def shared_consumer(handle, cid, skip):
    s = BatchStream(handle, consumer_id=cid)
    n, t = timed(s, skip)
    s.close()
    return n, t


@ray.remote(num_cpus=0)
def own_copy_consumer(url, batch, cfg):
    s = LocalStream(url, batch, cfg)
    n, t = timed(s, 0)
    return n, t, s.stats.bytes_read


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--d", type=int, default=2304)
    ap.add_argument("--shards", type=int, default=8)
    ap.add_argument("--rows", type=int, default=8192)
    ap.add_argument("--epochs", type=int, default=16)
    ap.add_argument("--batch", type=int, default=4096)
    ap.add_argument("--buffer", type=int, default=16)
    ap.add_argument("--consumers", default="1,2,4,8")
    ap.add_argument("--modes", default="contiguous,window",
                    help=f"comma-separated, of {list(MODES)}")
    ap.add_argument("--brokers", type=int, default=1)
    ap.add_argument("--object-store-gib", type=float, default=2.0)
    ap.add_argument("--no-preallocate", action="store_true",
                    help="don't pre-fault the object store (ray.put then pays page faults)")
    ap.add_argument("--no-prefault", action="store_true",
                    help="brokers don't pre-fault their own view of the object store")
    ap.add_argument("--no-check-blocks", action="store_true",
                    help="don't check the shards' block checksums (on by default)")
    args = ap.parse_args()
    modes = args.modes.split(",")
    # Pre-faulting plasma memory at start-up (Ray's preallocate_plasma_memory) makes ray.put a
    # plain memcpy instead of a page-fault-bound copy: ~2x put throughput measured here.
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False,
             object_store_memory=int(args.object_store_gib * 2**30),
             _system_config={"preallocate_plasma_memory": not args.no_preallocate})
    ray.data.DataContext.get_current().enable_progress_bars = False
    url = tempfile.mkdtemp(prefix="raysae-bench-stream-")
    m, _ = write_synthetic_cache(url, [args.rows] * args.shards, d=args.d, norm_scalar=3.0)
    data_bytes = sum(s.rows for s in m.shards) * m.row_bytes

    def config(mode: str, **kw) -> StreamConfig:
        window = MODES[mode]
        return StreamConfig(epochs=args.epochs, buffer_batches=args.buffer,
                            shuffle_window=4 * args.batch if window is None else window,
                            num_brokers=args.brokers, check_blocks=not args.no_check_blocks,
                            prefault_object_store=not args.no_prefault, **kw)

    print(f"cache: {args.shards} shards x {args.rows} rows x d={args.d} float32 = "
          f"{data_bytes / 1e9:.2f} GB; batch {args.batch} ({args.batch * m.row_bytes / 2**20:.0f} MiB)"
          f", {args.epochs} epochs, {args.brokers} broker(s), ring {args.buffer} batches, "
          f"window shuffle = {4 * args.batch} rows, {os.cpu_count()}-core machine\n")
    raw_memmap(url, m)  # warm the page cache
    raw = max(raw_memmap(url, m) for _ in range(3))
    rd = max(ray_data_read(url, m) for _ in range(2))
    rows = [("raw numpy memmap read (copy)", raw), ("Ray Data read_numpy", rd)]
    for mode in modes:
        n, t = timed(LocalStream(url, args.batch, config(mode)), 0)
        view = " (zero-copy memmap views)" if mode == "contiguous" else ""
        rows.append((f"LocalStream, 1 process, {mode}{view}", gbps(n, t)))
    print("| path | GB/s | vs memmap |\n|---|---:|---:|")
    for name, v in rows:
        print(f"| {name} | {v:.2f} | {v / raw:.2f}x |")
    print("\n| mode | consumers | shared: GB/s per consumer (min) | shared: aggregate GB/s | "
          "shared: read amplification | own copy: GB/s per consumer (min) | "
          "own copy: read amplification |\n|---|---:|---:|---:|---:|---:|---:|")
    ep = args.epochs * data_bytes
    for mode in modes:
        for N in (int(x) for x in args.consumers.split(",")):
            c = config(mode, expect_consumers=N)
            h = start_brokers(url, args.batch, c, name=f"bench-{mode}-{N}")
            res = ray.get([shared_consumer.remote(h, f"c{k}", args.buffer) for k in range(N)])
            read = sum(s.bytes_read for s in ray.get([a.stats.remote() for a in h.actors]))
            stop_brokers(h)
            per = min(gbps(b, t) for b, t in res)
            agg = sum(b for b, _ in res) / max(t for _, t in res) / 1e9
            own = ray.get([own_copy_consumer.remote(url, args.batch, config(mode))
                           for _ in range(N)])
            own_per = min(gbps(b, t) for b, t, _ in own)
            own_read = sum(r for _, _, r in own)
            print(f"| {mode} | {N} | {per:.2f} ({per / raw:.2f}x memmap) | {agg:.2f} | "
                  f"{read / ep:.2f}x | {own_per:.2f} | {own_read / ep:.2f}x |")
    ray.shutdown()


if __name__ == "__main__":
    main()
