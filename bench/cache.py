"""Benchmark the activation cache: job throughput, where its time goes, and shard decode speed.

    .venv/bin/python bench/cache.py                 # all three parts
    .venv/bin/python bench/cache.py --part tiny     # cache job, embedded tiny model
    .venv/bin/python bench/cache.py --part 2b       # cache job, Gemma-2-2B shapes, random weights
    .venv/bin/python bench/cache.py --part decode   # npy memmap vs Ray Data vs parquet layouts

Parts:

- tiny / 2b: `build_cache` on the python-stdlib corpus (context 1,024). Reports tokens/s and
  GiB/s written, and the split of wall time: tokenize (Ray Data tasks), LM forward (summed
  over actors), gather + bucket shuffle, shard writes, and the rest (Ray Data scheduling,
  actor start, model load + jit compile, C and manifests). "2b" uses `random:gemma-2-2b`
  cut to `--layers` blocks (the embedding is full size); on a GPU node the same command
  runs the actors on GPUs (accelerator auto), use `--layers 26` there.
- decode: one [rows, d] float32 matrix stored four ways and read back as a 2-D numpy array:
  npy via memory map, npy via Ray Data `read_numpy`, parquet with Ray's tensor extension and
  parquet `FixedSizeList<float32>` / `fixed_size_binary` via Ray Data (which returns object
  arrays that must be stacked) and via pyarrow directly. Figures are GB/s of float32 payload,
  best of `--repeat` after one warm-up (page cache warm), as ratios within one run.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
import ray  # noqa: E402


def cache_part(name: str, model: str, layers: int | None, tokens: int, site: str, batch: int) -> None:
    from raysae.activations.cache import build_cache
    from raysae.activations.config import CacheConfig

    out = tempfile.mkdtemp(prefix=f"bench-cache-{name}-")
    try:
        cfg = CacheConfig(inputs=["python-stdlib"], output=out, sites=[site], model=model,
                          model_layers=layers, max_tokens=tokens, batch_size=batch,
                          rows_per_shard=1 << 16, progress=False)
        s = build_cache(cfg)
        rest = s.seconds - s.tokenize_s - s.lm_s - s.shuffle_s - s.write_s
        print(f"\n### cache job: {name} ({model}{f', {layers} layers' if layers else ''}, site {site}, "
              f"context 1024, batch {batch})\n")
        print(f"- {s.tokens:,} tokens -> {s.rows:,} rows, {s.gib:.3f} GiB, {s.shards_written} shards, "
              f"{s.seconds:.1f} s wall")
        print(f"- throughput: {s.tokens / s.seconds:,.0f} tokens/s, {s.gib / s.seconds * 1024:.1f} MiB/s written")
        print(f"- LM forward alone: {s.tokens / max(s.lm_s, 1e-9):,.0f} tokens/s")
        print("\n| part | seconds | share of wall |\n|---|---:|---:|")
        for label, v in [("tokenize (Ray Data tasks)", s.tokenize_s), ("LM forward + to host", s.lm_s),
                         ("gather + bucket shuffle", s.shuffle_s), ("shard writes", s.write_s),
                         ("rest: Ray Data/actor start, load + jit, C, manifests", rest)]:
            print(f"| {label} | {v:.2f} | {v / s.seconds:.0%} |")
    finally:
        shutil.rmtree(out, ignore_errors=True)


def _best(fn, repeat: int) -> float:
    fn()  # warm-up: page cache, Ray Data workers
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def decode_part(rows: int, d: int, repeat: int) -> None:
    root = tempfile.mkdtemp(prefix="bench-decode-")
    try:
        x = np.random.default_rng(0).standard_normal((rows, d), dtype=np.float32)
        nbytes = x.nbytes
        npy = os.path.join(root, "shard-00000.npy")
        np.save(npy, x)
        tens = os.path.join(root, "tensor")
        ray.data.from_numpy(x).repartition(1).write_parquet(tens)
        fsl = os.path.join(root, "fsl.parquet")
        pq.write_table(pa.table({"x": pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1)), d)}), fsl)
        fsb = os.path.join(root, "fsb.parquet")
        pq.write_table(pa.table({"x": pa.FixedSizeBinaryArray.from_buffers(
            pa.binary(4 * d), rows, [None, pa.py_buffer(x.tobytes())])}), fsb)
        batch = 4096

        def check(a):
            assert a.shape == (rows, d) and a.dtype == np.float32

        def npy_memmap():
            m = np.load(npy, mmap_mode="r")
            out = [np.array(m[i:i + batch]) for i in range(0, rows, batch)]  # copy = touch every byte
            check(np.concatenate(out))

        def npy_load():
            check(np.load(npy))

        def ray_numpy():
            ds = ray.data.read_numpy(npy)
            check(np.concatenate([b["data"] for b in ds.iter_batches(batch_size=batch, batch_format="numpy")]))

        def ray_tensor():
            ds = ray.data.read_parquet(tens)
            check(np.concatenate([b["data"] for b in ds.iter_batches(batch_size=batch, batch_format="numpy")]))

        def ray_fsl():
            ds = ray.data.read_parquet(fsl)
            parts = []
            for b in ds.iter_batches(batch_size=batch, batch_format="numpy"):
                col = b["x"]
                parts.append(np.stack(col) if col.dtype == object else col)
            check(np.concatenate(parts).astype(np.float32, copy=False))

        def ray_fsb():
            ds = ray.data.read_parquet(fsb)
            parts = [np.frombuffer(b"".join(b["x"]), np.float32).reshape(-1, d)
                     for b in ds.iter_batches(batch_size=batch, batch_format="numpy")]
            check(np.concatenate(parts))

        def arrow_fsl():
            col = pq.read_table(fsl).column("x").combine_chunks()
            check(col.values.to_numpy(zero_copy_only=False).reshape(rows, d))

        def arrow_fsb():
            col = pq.read_table(fsb).column("x").combine_chunks()
            check(np.frombuffer(col.buffers()[1], np.float32, count=rows * d).reshape(rows, d))

        dtype_of = {"Ray Data read_parquet, FixedSizeList": ray.data.read_parquet(fsl).take_batch(2)["x"].dtype}
        cases = [("npy, numpy memmap (shards.py / stream reader)", npy_memmap),
                 ("npy, np.load whole file", npy_load),
                 ("npy, Ray Data read_numpy", ray_numpy),
                 ("parquet, Ray tensor extension, Ray Data", ray_tensor),
                 ("parquet, FixedSizeList, Ray Data (+ np.stack)", ray_fsl),
                 ("parquet, fixed_size_binary, Ray Data (+ frombuffer)", ray_fsb),
                 ("parquet, FixedSizeList, pyarrow direct", arrow_fsl),
                 ("parquet, fixed_size_binary, pyarrow direct", arrow_fsb)]
        res = [(label, nbytes / _best(fn, repeat) / 1e9) for label, fn in cases]
        base = res[0][1]
        print(f"\n### shard decode: {rows:,} x {d} float32 ({nbytes / 2**20:.0f} MiB), best of {repeat}\n")
        print(f"(Ray Data gives a FixedSizeList column as numpy dtype "
              f"{list(dtype_of.values())[0]}: per-row objects.)\n")
        print("| layout, reader | GB/s | vs npy memmap |\n|---|---:|---:|")
        for label, gbs in res:
            print(f"| {label} | {gbs:.2f} | {gbs / base:.2f}x |")
    finally:
        shutil.rmtree(root, ignore_errors=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--part", choices=["all", "tiny", "2b", "decode"], default="all")
    p.add_argument("--tokens", type=int, default=200_000, help="tokens for the tiny cache job")
    p.add_argument("--tokens-2b", type=int, default=8_192, help="tokens for the 2B-shaped job")
    p.add_argument("--layers", type=int, default=2, help="blocks of the 2B-shaped model (26 = all)")
    p.add_argument("--rows", type=int, default=32_768)
    p.add_argument("--d", type=int, default=2_048)
    p.add_argument("--repeat", type=int, default=3)
    a = p.parse_args()
    ray.init(address="local", include_dashboard=False, log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    print(f"cores: {os.cpu_count()}, cluster: {ray.cluster_resources()}")
    if a.part in ("all", "tiny"):
        cache_part("tiny", "tiny", None, a.tokens, "res:2", 8)
    if a.part in ("all", "2b"):
        cache_part("2b-shaped", "random:gemma-2-2b", a.layers, a.tokens_2b, f"res:{a.layers - 1}", 4)
    if a.part in ("all", "decode"):
        decode_part(a.rows, a.d, a.repeat)


if __name__ == "__main__":
    main()
