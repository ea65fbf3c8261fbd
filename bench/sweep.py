"""Whole-sweep wall time and trial throughput: shared brokers vs each trial reading its own data.

Runs the same sweep twice on one local Ray cluster (same process, same data, same trials):
`shared_stream: true` (every trial of the site reads the batches the brokers put in the
object store once) and `shared_stream: false` (each trial reads and shuffles its own copy
of the cache with LocalStream). Reports wall time, trials/minute, SAE steps/s over the
whole sweep, and their ratio, plus how many batches the shared trials had to rebuild
themselves because they started after the ring had moved on (stream/looped).

    .venv/bin/python bench/sweep.py                  # the tiny sweep (sweeps/tiny.yaml)
    .venv/bin/python bench/sweep.py --set tokens=131072 --cpus 2

The activation cache is built once before timing (it is shared by both runs).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")


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
    args = ap.parse_args()
    root = tempfile.mkdtemp(prefix="raysae-bench-sweep-")
    base = [f"storage={root}", f"data.cache_url={root}/cache", "final_eval.enabled=false",
            *args.overrides]
    ray.init(address="local", num_cpus=args.cpus, include_dashboard=False, log_to_driver=False)
    prepare_data(load_sweep(sweep_file(args.file), base + ["name=prep"]))  # cache once, untimed
    out = {}
    for shared in (True, False):
        name = "shared" if shared else "private"
        config = load_sweep(sweep_file(args.file), base + [f"name={name}", f"shared_stream={shared}"])
        t0 = time.perf_counter()
        result = run_sweep(config, verbose=0)
        wall = time.perf_counter() - t0
        metrics = [r.metrics for r in result.results]
        steps = sum(m["step"] for m in metrics)
        looped = sum(m.get("stream/looped", 0) for m in metrics)
        out[name] = dict(wall=wall, trials=len(metrics), steps=steps, looped=looped,
                         train_s=sum(m["time_total_s"] for m in metrics))
    print(f"sweep {args.file}: {out['shared']['trials']} trials, "
          f"{out['shared']['steps'] // out['shared']['trials']} steps each, {args.cpus} CPUs")
    print(f"{'mode':<9}{'wall s':>9}{'trials/min':>12}{'steps/s':>10}{'sum trial s':>13}{'looped':>8}")
    for name, o in out.items():
        print(f"{name:<9}{o['wall']:9.1f}{o['trials'] / o['wall'] * 60:12.2f}"
              f"{o['steps'] / o['wall']:10.1f}{o['train_s']:13.1f}{o['looped']:8d}")
    print(f"shared / private wall-time ratio: {out['shared']['wall'] / out['private']['wall']:.2f} "
          f"(< 1: the shared stream is faster)")
    ray.shutdown()


if __name__ == "__main__":
    main()
