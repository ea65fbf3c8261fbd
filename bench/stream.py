"""Benchmark of the shared activation stream: read paths, throughput, read amplification.

    .venv/bin/python bench/stream.py [--d 2304] [--shards 8] [--rows 8192] [--epochs 16]
                                     [--consumers 1,2,4,8] [--batch 4096] [--buffer 16]
                                     [--modes contiguous,window] [--no-gs]
                                     [--gs-shards 2] [--gs-epochs 4] [--read-ahead-mib 64]

Writes a synthetic float32 cache (Gemma 2 2B residual width by default) to a temp dir,
then, in one run:
1. raw numpy memmap read of the shards (copy into a buffer, warm page cache): the baseline;
2. Ray Data `read_numpy` of the same shards (blocks iterated as numpy);
3. `LocalStream` (one process) in each mode — what a trial reading its own copy does;
4. brokers -> N consumers (Ray tasks, `ray.get` zero copy) in each mode, N in
   --consumers: GB/s per consumer and aggregate, and bytes the brokers read from storage /
   dataset bytes;
5. N consumers each reading their own copy with `LocalStream` (the no-sharing baseline);
6. unless --no-gs, the same reads from gs:// (a GCS emulator on loopback, `tests/gcs.py`):
   a whole-shard download (what readers did before range reads), `LocalStream` and a broker
   -> 1 consumer by range reads with `read_ahead_mib` = --read-ahead-mib, each as a ratio to
   the memmap read above, with the reader's read-ahead high-water mark vs the shard size.
   Its cache has --gs-shards shards of 2 x --rows rows; the emulator (a Python HTTP server
   on the same cores) bounds these figures, not the reader.
Modes: `contiguous` = shuffle_window 0 (a batch is a slice of one shard, put zero copy),
`window` = shuffle_window 4 x batch (rows gathered one by one). Batches are raw (the
trainer divides by C on its device); a float32 batch is the object store's buffer.
Consumer GB/s is steady state: timed from the first batch after the brokers' initial
ring (filled before the consumers start) to the last. Ratios are within this run.
Prints markdown tables.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
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


def gs_rows(args, raw: float, config) -> None:
    """Step 6: the gs:// rows (module docstring), printed as a markdown table."""
    from raysae import storage

    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from tests.gcs import BUCKET

    local = tempfile.mkdtemp(prefix="raysae-bench-stream-gs-")
    m, _ = write_synthetic_cache(local, [2 * args.rows] * args.gs_shards, d=args.d,
                                 norm_scalar=3.0)
    url = f"gs://{BUCKET}/bench/cache"
    t = time.perf_counter()
    for name in storage.listdir(local):
        storage.write_bytes_atomic(storage.join(url, name), storage.read_bytes(storage.join(local, name)))
    up = time.perf_counter() - t
    shard = m.shards[0].bytes
    t = time.perf_counter()
    whole = storage.read_bytes(storage.join(url, m.shards[0].name))
    whole_gbps = gbps(len(whole), time.perf_counter() - t)
    del whole
    data = sum(s.rows for s in m.shards) * m.row_bytes
    ring = 4
    cfg = config("contiguous", read_ahead_mib=args.read_ahead_mib, buffer_batches=ring,
                 block_batches=2, epochs=args.gs_epochs)
    s = LocalStream(url, args.batch, cfg)
    n, secs = timed(s, 0)
    local_row = (gbps(n, secs), s.stats.buffer_peak_bytes, s.stats.bytes_read)
    s.close()
    h = start_brokers(url, args.batch, cfg, name="bench-gs")
    (n, secs), = ray.get([shared_consumer.remote(h, "c0", ring)])
    st = ray.get(h.actors[0].stats.remote())
    stop_brokers(h)
    broker_row = (gbps(n, secs), st.read_ahead_peak_bytes, st.bytes_read)
    print(f"\ngs:// (GCS emulator on loopback): {args.gs_shards} shards x {2 * args.rows} rows = "
          f"{shard / 2**20:.0f} MiB per shard, {data / 1e9:.2f} GB, uploaded in {up:.1f} s; "
          f"contiguous, {args.gs_epochs} epochs, read_ahead_mib={args.read_ahead_mib:g}\n")
    print("| path | GB/s | vs local memmap | read-ahead high-water | vs shard size | "
          "read amplification |\n|---|---:|---:|---:|---:|---:|")
    print(f"| gs:// whole-shard download (`fs.cat_file`, the old path) | {whole_gbps:.2f} | "
          f"{whole_gbps / raw:.3f}x | {shard / 2**20:.0f} MiB (the shard) | 1.00x | - |")
    for name, (v, peak, read) in (("`LocalStream`, 1 process, range reads", local_row),
                                  ("broker -> 1 consumer, range reads", broker_row)):
        print(f"| {name} | {v:.2f} | {v / raw:.3f}x | {peak / 2**20:.1f} MiB | "
              f"{peak / shard:.2f}x | {read / (args.gs_epochs * data):.3f}x |")


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
    ap.add_argument("--no-gs", action="store_true", help="skip the gs:// rows (step 6)")
    ap.add_argument("--gs-shards", type=int, default=2)
    ap.add_argument("--gs-epochs", type=int, default=4)
    ap.add_argument("--read-ahead-mib", type=float, default=64.0,
                    help="gs:// rows: StreamConfig.read_ahead_mib (below the shard size)")
    args = ap.parse_args()
    modes = args.modes.split(",")
    with contextlib.ExitStack() as stack:
        env = {}
        if not args.no_gs:  # before ray.init: the brokers need the emulator's address too
            sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
            from tests.gcs import emulator

            env = stack.enter_context(emulator())
        stack.callback(ray.shutdown)
        run(args, modes, env)


def run(args, modes: list[str], env: dict) -> None:
    # Pre-faulting plasma memory at start-up (Ray's preallocate_plasma_memory) makes ray.put a
    # plain memcpy instead of a page-fault-bound copy: ~2x put throughput measured here.
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False,
             object_store_memory=int(args.object_store_gib * 2**30),
             _system_config={"preallocate_plasma_memory": not args.no_preallocate},
             runtime_env={"env_vars": env})
    ray.data.DataContext.get_current().enable_progress_bars = False
    url = tempfile.mkdtemp(prefix="raysae-bench-stream-")
    m, _ = write_synthetic_cache(url, [args.rows] * args.shards, d=args.d, norm_scalar=3.0)
    data_bytes = sum(s.rows for s in m.shards) * m.row_bytes

    def config(mode: str, **kw) -> StreamConfig:
        window = MODES[mode]
        base = dict(epochs=args.epochs, buffer_batches=args.buffer,
                    shuffle_window=4 * args.batch if window is None else window,
                    num_brokers=args.brokers, check_blocks=not args.no_check_blocks,
                    prefault_object_store=not args.no_prefault)
        return StreamConfig(**{**base, **kw})

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
    if not args.no_gs:
        gs_rows(args, raw, config)


if __name__ == "__main__":
    main()
