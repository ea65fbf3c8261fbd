"""Benchmark of the SAE train step: throughput, FLOP/s, MFU, memory; sharded vs unsharded.

    python bench/step.py                      # CPU preset (small shapes) + 8 simulated devices
    python bench/step.py --preset gpu         # d ∈ {2304, 3584}, M ∈ {16K, 64K, 128K}, B = 4096,
                                              # fp32 and bf16, MFU, largest width that fits
    python bench/step.py --d 2304 --width 65536 --batch 4096 --dtypes bfloat16 --peak-tflops 989
    python bench/step.py --memory             # optimiser-state bytes, optax Adam vs β₁ = 0 state,
                                              # and the largest width per device memory size
    python bench/step.py --sparse             # sparse vs dense decoder path, L0 ∈ {16, 64, 256},
                                              # M ∈ {16K, 32K, 64K}, d = 256, B = 512 (CPU)

A step does 12·B·d·M FLOPs (encoder and decoder matmuls, 2·B·d·M each, forward + two
backward). Every figure is a ratio within this run: the step's FLOP/s over the dense
matmul FLOP/s measured here (the better of a large square matmul and [B, d] @ [d, M]),
and, on accelerators,
over the device's dense peak (`--peak-tflops`, else the public figure for the device kind
from train.mesh.detect_profile) = MFU. `--profile DIR` writes a jax.profiler trace of a few
steps (look there before optimising). Batches live on device unless `--feed host`, which
places a fresh host batch per step through the prefetching feeder (shows whether
host-to-device transfer hides under compute).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

GPU_D, GPU_M, GPU_B = (2304, 3584), (16384, 65536, 131072), 4096
CPU_SHAPES = ((256, 4096, 1024), (512, 8192, 1024), (768, 16384, 512))


def _jax():
    import jax
    return jax


def _time(fn, *, warmup: int = 2, iters: int = 5) -> float:
    """Seconds per call of fn() (fn returns something to block on)."""
    jax = _jax()
    for _ in range(warmup):
        jax.block_until_ready(fn())
    t0 = time.perf_counter()
    for _ in range(iters):
        out = fn()
    jax.block_until_ready(out)
    return (time.perf_counter() - t0) / iters


def matmul_flops(B: int, d: int, M: int, dtype: str, iters: int) -> float:
    """Measured dense FLOP/s of [B, d] @ [d, M] in `dtype` (fp32 accumulation)."""
    jax = _jax()
    import jax.numpy as jnp
    a = jax.random.normal(jax.random.PRNGKey(0), (B, d), jnp.float32).astype(dtype)
    b = jax.random.normal(jax.random.PRNGKey(1), (d, M), jnp.float32).astype(dtype)
    mm = jax.jit(lambda a, b: jnp.matmul(a, b, preferred_element_type=jnp.float32))
    return 2.0 * B * d * M / _time(lambda: mm(a, b), iters=iters)


def machine_matmul_flops(dtype: str, iters: int, n: int | None = None) -> float:
    """This machine's dense matmul FLOP/s: the best of a large square matmul (n³)."""
    n = n or (2048 if _jax().devices()[0].platform == "cpu" else 8192)
    return matmul_flops(n, n, n, dtype, iters)


def _peak_bytes(device, compiled) -> tuple[int | None, str]:
    stats = device.memory_stats() if hasattr(device, "memory_stats") else None
    if stats and "peak_bytes_in_use" in stats:
        return int(stats["peak_bytes_in_use"]), "device peak"
    m = compiled.memory_analysis() if compiled is not None else None
    if m is None:
        return None, "n/a"
    total = (m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes
             - m.alias_size_in_bytes)
    return int(total), "compiled footprint"


def bench_step(d: int, M: int, B: int, dtype: str, iters: int, *, mesh_shape=None,
               feed: str = "device", profile_dir: str | None = None) -> dict:
    """Time the train step (unsharded, or on a (data, model) mesh of all devices)."""
    jax = _jax()
    import numpy as np
    from raysae.train import TrainConfig, init_state
    from raysae.train.mesh import make_mesh, step_flops
    from raysae.train.sharded import ShardedStep, place_state, prefetch

    config = TrainConfig(width=M, batch_size=B, compute_dtype=dtype, lr=1e-4)
    x_host = np.random.default_rng(0).normal(size=(B, d)).astype(np.float32) / np.sqrt(d)
    state = init_state(config, d)
    # The training loop's own step (a 1x1 mesh for one device), on raw batches divided by C.
    mesh = make_mesh(*(mesh_shape or (1, 1)), devices=None if mesh_shape else jax.devices()[:1])
    step = ShardedStep(config, mesh, norm_scalar=1.0)
    state = place_state(state, mesh)
    place = lambda b: jax.make_array_from_process_local_data(  # noqa: E731
        step.batch_sharding, b, b.shape)
    compiled = step.lower(state, place(x_host)).compile()
    x = place(x_host)
    holder = {"state": state}
    if feed == "host":
        host_batches = (x_host + np.float32(i % 7) * 1e-3 for i in range(10**9))
        feeder = prefetch(host_batches, place, size=2)

        def one():
            holder["state"], m = step(holder["state"], next(feeder))
            return m.loss
    else:
        def one():
            holder["state"], m = step(holder["state"], x)
            return m.loss
    seconds = _time(one, iters=iters)
    if profile_dir:
        with jax.profiler.trace(profile_dir):
            for _ in range(3):
                jax.block_until_ready(one())
    peak, peak_kind = _peak_bytes(jax.devices()[0], compiled)
    flops = step_flops(B, d, M)
    return {"d": d, "M": M, "B": B, "dtype": dtype, "mesh": list(mesh_shape or (1, 1)),
            "feed": feed, "step_ms": seconds * 1e3, "steps_per_s": 1 / seconds,
            "tokens_per_s": B / seconds, "flops_per_s": flops / seconds,
            "peak_bytes": peak, "peak_kind": peak_kind}


MEMORY_D, MEMORY_M = (2304, 3584), (16384, 131072, 1048576)
DEVICE_MEMORY = (("TPU v3 core, 16 GB", 16e9), ("H100, 80 GB", 80e9), ("H200, 141 GB", 141e9))


def opt_state_bytes(d: int, M: int) -> tuple[int, int]:
    """(bytes of optax.scale_by_adam(b1=0)'s chain state, bytes of the β₁ = 0 chain's state)
    for a d × M SAE, from the states' shapes (jax.eval_shape: nothing is allocated)."""
    jax = _jax()
    import optax
    from raysae.train import TrainConfig
    from raysae.train.optimizer import make_optimizer, project_decoder_grads
    from raysae.train.schedules import lr_schedule
    from raysae.sae.params import init_params
    config = TrainConfig(width=M)
    params = jax.eval_shape(lambda: init_params(jax.random.PRNGKey(0), d, M))
    before = optax.chain(project_decoder_grads(),
                         optax.scale_by_adam(b1=0.0, b2=config.adam_b2, eps=config.adam_eps),
                         optax.scale_by_learning_rate(lr_schedule(config)))
    size = lambda tree: sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(tree))  # noqa: E731
    return (size(jax.eval_shape(before.init, params)),
            size(jax.eval_shape(make_optimizer(config).init, params)))


def largest_width_by_formula(memory: float, d: int, B: int, moments: int,
                             quantum: int = 16384) -> int:
    """Largest M (a multiple of `quantum`) whose `mesh.train_memory` fits in `memory` bytes."""
    from raysae.train.mesh import train_memory
    per = train_memory(B, d, quantum, moments=moments).total / quantum  # ≈ linear in M
    M = int(memory // per) // quantum * quantum
    while M > 0 and train_memory(B, d, M, moments=moments).total > memory:
        M -= quantum
    return M


def memory_report(ds=MEMORY_D, Ms=MEMORY_M, B: int = GPU_B) -> tuple[str, list[dict]]:
    """Markdown tables: optimiser-state bytes before/after, and the largest width per device."""
    rows = []
    lines = ["| d | M | opt_state optax Adam (GiB) | opt_state β₁ = 0 (GiB) | after ÷ before "
             "| saved (GiB) |", "|---|---|---|---|---|---|"]
    for d in ds:
        for M in Ms:
            before, after = opt_state_bytes(d, M)
            rows.append({"d": d, "M": M, "opt_state_bytes_before": before,
                         "opt_state_bytes_after": after})
            lines.append(f"| {d} | {M} | {before / 2**30:.2f} | {after / 2**30:.2f} "
                         f"| {after / before:.3f} | {(before - after) / 2**30:.2f} |")
    lines += ["", f"Largest width (multiple of 16,384) whose fp32 step fits, B = {B}, one device:",
              "", "| device memory | d | M with μ and ν | M with ν only (β₁ = 0) | gain |",
              "|---|---|---|---|---|"]
    for name, mem in DEVICE_MEMORY:
        for d in ds:
            m2 = largest_width_by_formula(mem, d, B, 2)
            m1 = largest_width_by_formula(mem, d, B, 1)
            rows.append({"device": name, "d": d, "largest_M_mu_nu": m2, "largest_M_nu": m1})
            lines.append(f"| {name} | {d} | {m2:,} | {m1:,} | {m1 / m2:.2f}× |" if m2 else
                         f"| {name} | {d} | {m2:,} | {m1:,} | – |")
    return "\n".join(lines), rows


SPARSE_M, SPARSE_L0 = (16384, 32768, 65536), (16, 64, 256)


def _state_at_l0(d: int, M: int, B: int, l0: int, x):
    """A fresh state whose θ (one value for all latents) gives mean L0 ≈ `l0` on batch x,
    and the capacity that holds every row's latents (a multiple of 16)."""
    jax = _jax()
    import jax.numpy as jnp
    import numpy as np
    from raysae.sae.model import pre_activations
    from raysae.train import TrainConfig, init_state
    state = init_state(TrainConfig(width=M, batch_size=B), d)
    z = np.asarray(pre_activations(state.params, x, pre_encoder_bias=True))
    theta = float(np.partition(z.ravel(), z.size - l0 * B)[z.size - l0 * B])
    state = state._replace(params=state.params._replace(
        threshold=jnp.full((M,), theta, jnp.float32)))
    needed = (z > theta - 0.0005).sum(axis=1)
    capacity = int(-(-needed.max() // 16) * 16)
    return state, float((z > theta).sum(1).mean()), int(needed.max()), capacity


def bench_sparse(d: int, B: int, Ms=SPARSE_M, L0s=SPARSE_L0, iters: int = 3) -> list[dict]:
    """Train-step time and FLOPs, dense vs sparse decoder, one row per (M, L0).

    The two steps are timed alternately, one call each per round, `iters` rounds after a
    warm-up, and each keeps its fastest round: on a shared machine load only adds time.
    """
    jax = _jax()
    import jax.numpy as jnp
    import numpy as np
    from raysae.sae.sparse import decoder_costs
    from raysae.train import TrainConfig, train_step
    rows = []
    x = jnp.asarray(np.random.default_rng(0).normal(size=(B, d)) / np.sqrt(d) * 4, jnp.float32)
    for M in Ms:
        for l0 in L0s:
            state, mean_l0, max_needed, cap = _state_at_l0(d, M, B, l0, x)
            row = {"d": d, "M": M, "B": B, "L0": mean_l0, "max_row": max_needed,
                   "capacity": cap}
            steps = {}
            for path in ("dense", "sparse"):
                config = TrainConfig(width=M, batch_size=B, lr=1e-9, decoder=path,
                                     decoder_capacity=cap)
                step = jax.jit(lambda s, x, c=config: train_step(s, x, None, c)[1].loss)
                cost = step.lower(state, x).compile().cost_analysis()
                cost = cost[0] if isinstance(cost, (list, tuple)) else cost
                row[f"{path}_xla_flops"] = float(cost.get("flops", float("nan")))
                jax.block_until_ready(step(state, x))
                steps[path] = step
            best = {path: float("inf") for path in steps}
            for _ in range(iters):
                for path, step in steps.items():
                    t0 = time.perf_counter()
                    jax.block_until_ready(step(state, x))
                    best[path] = min(best[path], time.perf_counter() - t0)
            row["dense_ms"], row["sparse_ms"] = best["dense"] * 1e3, best["sparse"] * 1e3
            model = decoder_costs(B, d, M, cap, gather_cost=1.0, select_cost=0.0)
            row["dense_model_flops"], row["sparse_model_flops"] = model.dense, model.sparse
            row["speedup"] = row["dense_ms"] / row["sparse_ms"]
            rows.append(row)
            print(json.dumps(row), flush=True)
    return rows


def fit_sparse_costs(rows: list[dict]) -> tuple[float, float]:
    """Least-squares (gather_cost, select_cost) of `sae.sparse.decoder_costs` from the rows:
    sparse time in dense-FLOP units = 2·B·M·d + g·12·B·k·d + s·B·M (k: the capacity)."""
    import numpy as np
    A, y = [], []
    for r in rows:
        rate = r["dense_model_flops"] / (r["dense_ms"] / 1e3)  # the dense step's FLOP/s
        B, d, M, k = r["B"], r["d"], r["M"], r["capacity"]
        A.append([12.0 * B * k * d, B * M])
        y.append(r["sparse_ms"] / 1e3 * rate - 2.0 * B * M * d)
    (g, s), *_ = np.linalg.lstsq(np.array(A), np.array(y), rcond=None)
    return float(g), float(s)


def _sparse_table(rows: list[dict]) -> str:
    lines = ["| M | L0 (mean) | max row | capacity k | dense ms | sparse ms | dense ÷ sparse "
             "| model FLOPs sparse ÷ dense | XLA FLOPs sparse ÷ dense |", "|" + "---|" * 9]
    for r in rows:
        lines.append(f"| {r['M']} | {r['L0']:.0f} | {r['max_row']} | {r['capacity']} "
                     f"| {r['dense_ms']:.0f} | {r['sparse_ms']:.0f} | {r['speedup']:.2f} "
                     f"| {r['sparse_model_flops'] / r['dense_model_flops']:.3f} "
                     f"| {r['sparse_xla_flops'] / r['dense_xla_flops']:.3f} |")
    return "\n".join(lines)


def _fits(d: int, M: int, B: int, dtype: str) -> bool:
    try:
        bench_step(d, M, B, dtype, iters=1)
        return True
    except Exception as e:  # noqa: BLE001 - XLA raises RESOURCE_EXHAUSTED as various types
        if "RESOURCE_EXHAUSTED" in str(e) or "out of memory" in str(e).lower():
            return False
        raise


def largest_width(d: int, B: int, dtype: str, start: int = 131072, quantum: int = 16384) -> int:
    """Largest M (a multiple of `quantum`) whose train step runs: doubling, then bisection."""
    lo, hi = 0, start
    while _fits(d, hi, B, dtype):
        lo, hi = hi, hi * 2
    while hi - lo > quantum:
        mid = (lo + hi) // 2 // quantum * quantum
        lo, hi = (mid, hi) if _fits(d, mid, B, dtype) else (lo, mid)
    return lo


def sharded_cpu(d: int, M: int, B: int, iters: int) -> list[dict]:
    """Unsharded vs (8,1), (1,8), (2,4) on 8 simulated CPU devices, in a subprocess."""
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8",
               JAX_PLATFORMS="cpu")
    cmd = [sys.executable, __file__, "--_sharded-worker", json.dumps([d, M, B, iters])]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def _sharded_worker(d: int, M: int, B: int, iters: int) -> None:
    # Unsharded: the plain jitted step on device 0 (one of the 8 simulated devices).
    rows = [dict(bench_step(d, M, B, "float32", iters), devices=1)]
    rows[0]["matmul_flops"] = machine_matmul_flops("float32", iters)
    for shape in ((8, 1), (1, 8), (2, 4)):
        rows.append(dict(bench_step(d, M, B, "float32", iters, mesh_shape=shape), devices=8))
    print(json.dumps(rows))


def _table(rows: list[dict], peak: dict[str, float]) -> str:
    head = ("| d | M | B | compute | mesh | feed | step ms | steps/s | tokens/s | GFLOP/s "
            "| ÷ matmul | MFU | peak MiB |\n|" + "---|" * 13)
    lines = [head]
    for r in rows:
        mm = r.get("matmul_flops")
        mfu = r["flops_per_s"] / peak[r["dtype"]] if peak.get(r["dtype"]) else None
        mem = f"{r['peak_bytes'] / 2**20:.0f} ({r['peak_kind']})" if r["peak_bytes"] else "n/a"
        cells = [r["d"], r["M"], r["B"], r["dtype"], f"{r['mesh'][0]}×{r['mesh'][1]}", r["feed"],
                 f"{r['step_ms']:.1f}", f"{r['steps_per_s']:.2f}", f"{r['tokens_per_s']:.3g}",
                 f"{r['flops_per_s'] / 1e9:.1f}", f"{r['flops_per_s'] / mm:.2f}" if mm else "–",
                 f"{mfu:.1%}" if mfu else "–", mem]
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    return "\n".join(lines)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--preset", choices=("cpu", "gpu"), default=None,
                   help="default: gpu if an accelerator is present, else cpu")
    p.add_argument("--d", type=int, nargs="*")
    p.add_argument("--width", type=int, nargs="*")
    p.add_argument("--batch", type=int, nargs="*")
    p.add_argument("--dtypes", nargs="*", default=None, choices=("float32", "bfloat16"))
    p.add_argument("--iters", type=int, default=None)
    p.add_argument("--peak-tflops", type=float, default=None,
                   help="dense peak per device for MFU (bf16; fp32 uses --peak-tflops-fp32)")
    p.add_argument("--peak-tflops-fp32", type=float, default=None)
    p.add_argument("--feed", choices=("device", "host", "both"), default="device")
    p.add_argument("--no-sharded", action="store_true", help="skip the 8-device CPU comparison")
    p.add_argument("--no-largest", action="store_true", help="skip the largest-width search")
    p.add_argument("--profile", default=None, help="write a jax.profiler trace here")
    p.add_argument("--json", default=None, help="also write all rows as JSON here")
    p.add_argument("--memory", action="store_true",
                   help="only the optimiser-state bytes and the largest width per device size")
    p.add_argument("--sparse", action="store_true",
                   help="only the sparse vs dense decoder path (--d, --batch, --width, --l0)")
    p.add_argument("--l0", type=int, nargs="*", default=None)
    p.add_argument("--_sharded-worker", dest="sharded_worker", default=None,
                   help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.sharded_worker:
        _sharded_worker(*json.loads(args.sharded_worker))
        return

    if args.memory:
        table, rows = memory_report(args.d or MEMORY_D, args.width or MEMORY_M,
                                    (args.batch or [GPU_B])[0])
        print("## optimiser state (fp32), optax.scale_by_adam(b1=0) vs the β₁ = 0 state\n")
        print(table)
        if args.json:
            with open(args.json, "w") as f:
                json.dump(rows, f, indent=1)
        return

    if args.sparse:
        d, B = (args.d or [256])[0], (args.batch or [512])[0]
        rows = bench_sparse(d, B, args.width or SPARSE_M, args.l0 or SPARSE_L0,
                            iters=args.iters or 3)
        print(f"\n## sparse vs dense decoder path, train step, d={d}, B={B}, fp32\n")
        print(_sparse_table(rows))
        g, s = fit_sparse_costs(rows)
        print(f"\nfitted cost model: gather_cost = {g:.2f}, select_cost = {s:.1f} "
              "(sparse time in dense-FLOP units = 2·B·M·d + g·12·B·k·d + s·B·M)")
        if args.json:
            with open(args.json, "w") as f:
                json.dump(rows, f, indent=1)
        return

    jax = _jax()
    from raysae.train.mesh import detect_profile
    device = jax.devices()[0]
    preset = args.preset or ("cpu" if device.platform == "cpu" else "gpu")
    if preset == "gpu":
        shapes = [(d, M, GPU_B) for d in (args.d or GPU_D) for M in (args.width or GPU_M)]
        dtypes, iters = args.dtypes or ["float32", "bfloat16"], args.iters or 20
    else:
        shapes = list(CPU_SHAPES)
        if args.d or args.width or args.batch:
            shapes = [(d, M, B) for d in (args.d or [256]) for M in (args.width or [4096])
                      for B in (args.batch or [1024])]
        dtypes, iters = args.dtypes or ["float32"], args.iters or 4
    if args.batch and preset == "gpu":
        shapes = [(d, M, B) for d, M, _ in shapes for B in args.batch]
    peak = {}
    if device.platform != "cpu":
        peak = {"bfloat16": (args.peak_tflops * 1e12 if args.peak_tflops
                             else detect_profile(device, "bfloat16").peak_flops),
                "float32": (args.peak_tflops_fp32 * 1e12 if args.peak_tflops_fp32
                            else detect_profile(device, "float32").peak_flops)}
    print(f"# device: {device.device_kind} ({device.platform}), {jax.device_count()} device(s); "
          f"preset {preset}; peak {({k: f'{v / 1e12:.0f} TFLOP/s' for k, v in peak.items()})}")
    feeds = ("device", "host") if args.feed == "both" else (args.feed,)
    rows = []
    peak_mm = {dtype: machine_matmul_flops(dtype, iters) for dtype in dtypes}
    print("# measured matmul peak: " + ", ".join(f"{k} {v / 1e9:.1f} GFLOP/s"
                                                  for k, v in peak_mm.items()))
    for d, M, B in shapes:
        for dtype in dtypes:
            mm = max(peak_mm[dtype], matmul_flops(B, d, M, dtype, iters))
            for feed in feeds:
                try:
                    r = bench_step(d, M, B, dtype, iters, feed=feed, profile_dir=args.profile)
                except Exception as e:  # noqa: BLE001
                    if "RESOURCE_EXHAUSTED" not in str(e):
                        raise
                    print(f"# d={d} M={M} B={B} {dtype}: out of memory")
                    continue
                r["matmul_flops"] = mm
                rows.append(r)
                print(json.dumps(r), flush=True)
    print("\n## train step\n")
    print(_table(rows, peak))
    print("\n(÷ matmul: step FLOP/s over the best dense matmul FLOP/s measured in this run, square or [B,d]@[d,M])")
    if preset == "gpu" and not args.no_largest:
        print("\n## largest width that fits (multiple of 16384)\n")
        for d in (args.d or GPU_D):
            for dtype in dtypes:
                print(f"- d={d}, B={GPU_B}, {dtype}: M = {largest_width(d, GPU_B, dtype)}")
    if preset == "cpu" and not args.no_sharded:
        d, M, B = 256, 8192, 1024
        srows = sharded_cpu(d, M, B, iters)
        base = srows[0]["flops_per_s"]
        print(f"\n## sharded vs unsharded, 8 simulated CPU devices (d={d}, M={M}, B={B}, "
              "fp32; the 8 devices share this machine's cores)\n")
        print("| mesh (data×model) | devices | step ms | GFLOP/s | ÷ unsharded | ÷ matmul |\n"
              "|---|---|---|---|---|---|")
        for r in srows:
            print(f"| {r['mesh'][0]}×{r['mesh'][1]} | {r['devices']} | {r['step_ms']:.1f} "
                  f"| {r['flops_per_s'] / 1e9:.1f} | {r['flops_per_s'] / base:.2f} "
                  f"| {r['flops_per_s'] / srows[0]['matmul_flops']:.2f} |")
        rows += srows
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
