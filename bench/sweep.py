"""Whole-sweep wall time and SAE throughput: shared brokers vs private copies, or packed
trials vs one trial per SAE.

Runs the same sweep twice on one local Ray cluster (same process, same data, same SAEs):

- `--compare stream` (default): `shared_stream: true` (every trial of the site reads the
  batches the brokers put in the object store once) against `shared_stream: false` (each
  trial reads and shuffles its own copy of the cache with LocalStream); also counts the
  batches the shared trials had to rebuild themselves because they started after the ring
  had moved on (stream/looped).
- `--compare pack`: `pack: K` (K grid λ values of a width trained in one vmapped step per
  trial; default K = every λ of the grid) against `pack: 1` (one trial per SAE).

Reports wall time, trials/minute, SAE steps/s over the whole sweep (a packed trial's step
counts once per SAE) and the ratio of the two wall times.

    .venv/bin/python bench/sweep.py                  # the tiny sweep (sweeps/tiny.yaml)
    .venv/bin/python bench/sweep.py --set tokens=131072 --cpus 2
    .venv/bin/python bench/sweep.py --compare pack   # packed vs one trial per SAE
    .venv/bin/python bench/sweep.py --compare pack --synthetic-d 512 \\
        --set 'widths=[2048, 8192]' --set 'sparsity={grid: [0.001, 0.003, 0.01, 0.03]}'

`--synthetic-d D` trains on a synthetic cache of width D (a sparse dictionary, 4 shards of
16,384 rows) instead of the sweep's text. The activation cache is built once before
timing (it is shared by both runs).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")


def synthetic_cache(url: str, d: int, site: str, shards: int = 4, rows: int = 16384) -> str:
    """A cache at `url` of rows from a sparse dictionary in R^d (4·d features, 16 active)."""
    import numpy as np

    from raysae.data import Manifest, write_shard
    from raysae.sites import SAESite
    from raysae.synthetic import SparseDictionary

    sd = SparseDictionary.random(d=d, n_features=4 * d, active=16, seed=0)
    rng = np.random.default_rng(0)
    infos = [write_shard(url, i, sd.sample(rows, rng)) for i in range(shards)]
    s = SAESite.parse(site)
    norm = float(np.sqrt(np.mean(np.sum(sd.sample(4096, rng) ** 2, axis=1))))
    Manifest(model="synthetic", site=str(s), layer=s.layer, d=d, rows_per_shard=rows,
             total_rows=rows * shards, tokens=rows * shards, norm_scalar=norm,
             shards=infos).save(url)
    return url


def sae_steps(metrics: dict) -> int:
    """Optimiser steps of every SAE a trial trained (a pack: its step once per member)."""
    return metrics["step"] * max(1, len(metrics.get("members") or {}))


def main() -> None:
    import ray

    from raysae.cli import sweep_file
    from raysae.sweep import load_sweep
    from raysae.sweep.launch import run_sweep
    from raysae.sweep.prepare import prepare_data

    ap = argparse.ArgumentParser()
    ap.add_argument("--file", default="tiny")
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    ap.add_argument("--cpus", type=int, default=2)
    ap.add_argument("--compare", choices=("stream", "pack"), default="stream")
    ap.add_argument("--pack", type=int, default=0, help="K for --compare pack (0: the grid)")
    ap.add_argument("--synthetic-d", type=int, default=0)
    ap.add_argument("--swap", action="store_true", help="run the second mode first")
    args = ap.parse_args()
    root = tempfile.mkdtemp(prefix="raysae-bench-sweep-")
    base = [f"storage={root}", f"data.cache_url={root}/cache", "final_eval.enabled=false",
            *args.overrides]
    if args.synthetic_d:
        site = load_sweep(sweep_file(args.file), base).sites[0]
        cache = synthetic_cache(f"{root}/synthetic", args.synthetic_d, site)
        base = [o for o in base if not o.startswith("data.cache_url")] + [
            "data.text=null", f"data.manifest={cache}"]
    ray.init(address="local", num_cpus=args.cpus, include_dashboard=False, log_to_driver=False)
    first = load_sweep(sweep_file(args.file), base + ["name=prep"])
    prepare_data(first)  # cache once, untimed
    if args.compare == "stream":
        modes = {"shared": ["shared_stream=true"], "private": ["shared_stream=false"]}
    else:
        k = args.pack or len(first.sparsity.grid)
        modes = {f"pack {k}": [f"pack={k}"], "pack 1": ["pack=1"]}
    order = list(modes)[::-1] if args.swap else list(modes)
    out = {}
    for name in order:
        extra = modes[name]
        config = load_sweep(sweep_file(args.file), base + [f"name={name.replace(' ', '')}", *extra])
        t0 = time.perf_counter()
        result = run_sweep(config, verbose=0)
        wall = time.perf_counter() - t0
        metrics = [r.metrics for r in result.results]
        out[name] = dict(wall=wall, trials=len(metrics), saes=config.num_trials(),
                         steps=sum(sae_steps(m) for m in metrics),
                         looped=sum(m.get("stream/looped", 0) for m in metrics),
                         train_s=sum(m["time_total_s"] for m in metrics))
    out = {name: out[name] for name in modes}  # printed in the same order either way
    a, b = out.values()
    d = args.synthetic_d or "the LM's"
    print(f"sweep {args.file}: {a['saes']} SAEs, {a['steps'] // a['saes']} steps each on average, "
          f"d = {d}, {args.cpus} CPUs")
    print(f"{'mode':<9}{'trials':>7}{'wall s':>9}{'SAEs/min':>10}{'SAE steps/s':>13}"
          f"{'sum trial s':>13}{'looped':>8}")
    for name, o in out.items():
        print(f"{name:<9}{o['trials']:7d}{o['wall']:9.1f}{o['saes'] / o['wall'] * 60:10.2f}"
              f"{o['steps'] / o['wall']:13.1f}{o['train_s']:13.1f}{o['looped']:8d}")
    names = list(out)
    print(f"{names[0]} / {names[1]} wall-time ratio: {a['wall'] / b['wall']:.2f} "
          f"(< 1: {names[0]} is faster)")
    ray.shutdown()


if __name__ == "__main__":
    main()
