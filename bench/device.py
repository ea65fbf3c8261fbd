"""The GPU check (issue 16): one run on one accelerator, one JSON with every figure.

    python bench/device.py --out device.json            # on the device (bench/device.sh runs it)
    python bench/device.py --dry-run --out /tmp/d.json  # the same driver, tiny shapes, on CPU

Sections (keys of the JSON): `device`; `matmul` (measured dense matmul FLOP/s per dtype) and
`peak_flops` (the public peak for the device kind, train.mesh.detect_profile); `step` (train
step time, FLOP/s, MFU against the peak and against the measured matmul, for d ∈ {2304, 3584},
M ∈ {16K, 131K}, B = 4096, fp32 and bf16); `targets` (the issue's: 131K × 3,584 bf16 step
≤ 45 ms and ≥ 60% MFU); `sparse` (the sparse decoder path vs dense at L0 ∈ {16, 64, 256});
`feed` (host→device rate of LocalStream batches from a synthetic cache); `lm` (a Gemma 2
2B-shaped forward to a site, random weights, few layers); `memory` (device peak bytes);
`packed` (K = 8 SAEs of 16K at d = 2304 in one vmapped step vs 8 lone steps, bench/pack.py);
`skipped` (sections not run, and why: e.g. the time budget). Every section runs inside the
`--budget-s` wall-clock budget (default 420 s, bench/device.sh allows 8 minutes in all).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

FULL = dict(ds=(2304, 3584), Ms=(16384, 131072), B=4096, dtypes=("bfloat16", "float32"),
            iters=10, matmul_n=8192, sparse=(2304, 131072, 1024), l0s=(16, 64, 256),
            feed_rows=65536, feed_d=2304, feed_batch=4096, lm_layers=4, lm_batch=8, lm_seq=1024,
            packed=(2304, 16384, 8, 4096))
DRY = dict(ds=(32,), Ms=(256, 512), B=64, dtypes=("bfloat16", "float32"), iters=2,
           matmul_n=256, sparse=(32, 2048, 64), l0s=(4, 16), feed_rows=2048, feed_d=32,
           feed_batch=256, lm_layers=2, lm_batch=2, lm_seq=32,
           packed=(32, 256, 3, 64))


def _time(fn, iters: int, warmup: int = 1) -> float:
    import jax
    for _ in range(warmup):
        jax.block_until_ready(fn())
    t0 = time.perf_counter()
    out = None
    for _ in range(iters):
        out = fn()
    jax.block_until_ready(out)
    return (time.perf_counter() - t0) / iters


def device_info() -> dict:
    """The device the run measured."""
    import jax
    d = jax.devices()[0]
    return {"platform": d.platform, "kind": d.device_kind, "count": jax.device_count(),
            "jax": jax.__version__}


def matmul_rates(dtypes, n: int, iters: int) -> dict:
    """Measured n³ dense matmul FLOP/s per dtype (fp32 accumulation)."""
    import jax
    import jax.numpy as jnp
    out = {}
    for dtype in dtypes:
        a = jax.random.normal(jax.random.PRNGKey(0), (n, n), jnp.float32).astype(dtype)
        b = jax.random.normal(jax.random.PRNGKey(1), (n, n), jnp.float32).astype(dtype)
        mm = jax.jit(lambda a, b: jnp.matmul(a, b, preferred_element_type=jnp.float32))
        out[dtype] = 2.0 * n ** 3 / _time(lambda: mm(a, b), iters)
    return out


def peak_rates(dtypes) -> dict:
    """The public dense peak per dtype for this device kind (CPU: a nominal figure)."""
    from raysae.train.mesh import detect_profile
    return {dtype: detect_profile(None, dtype).peak_flops for dtype in dtypes}


def _peak_bytes() -> float:
    """The device's peak bytes in use; without device memory stats (CPU), the process's
    peak resident set size."""
    import jax
    stats = jax.devices()[0].memory_stats() or {}
    if "peak_bytes_in_use" in stats:
        return float(stats["peak_bytes_in_use"])
    import resource
    return float(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)


def step_row(d: int, M: int, B: int, dtype: str, iters: int, matmul: dict, peak: dict,
             decoder: str = "dense", capacity: int = 256, state=None, x=None) -> dict:
    """Time one jitted, state-donating train step (raysae.train.ShardedStep on one device)."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    from raysae.train import TrainConfig, init_state
    from raysae.train.mesh import make_mesh, step_flops
    from raysae.train.sharded import ShardedStep, place_batch
    config = TrainConfig(width=M, batch_size=B, compute_dtype=dtype, lr=1e-9, decoder=decoder,
                         decoder_capacity=capacity)
    mesh = make_mesh(1, 1, devices=jax.devices()[:1])
    step = ShardedStep(config, mesh, norm_scalar=1.0)
    if x is None:
        x = np.random.default_rng(0).normal(size=(B, d)).astype(np.float32) / np.sqrt(d)
    x = place_batch(x, step.batch_sharding)
    state = init_state(config, d) if state is None else jax.tree.map(jnp.copy, state)
    holder = {"state": step.place_state(state)}  # the step donates it

    def one():
        holder["state"], m = step(holder["state"], x)
        return m.loss

    t0 = time.perf_counter()
    jax.block_until_ready(one())
    compile_s = time.perf_counter() - t0
    seconds = _time(one, iters, warmup=0)
    rate = step_flops(B, d, M) / seconds
    row = {"d": d, "M": M, "B": B, "dtype": dtype, "decoder": decoder,
           "step_ms": seconds * 1e3, "compile_s": compile_s, "flops_per_s": rate,
           "mfu_peak": rate / peak[dtype], "mfu_measured_matmul": rate / matmul[dtype],
           "peak_bytes_so_far": _peak_bytes()}
    del holder
    return row


def sparse_rows(d: int, M: int, B: int, l0s, iters: int, matmul: dict, peak: dict) -> list:
    """The sparse decoder path vs dense at each L0 (θ set so that the mean L0 is l0)."""
    import jax.numpy as jnp
    import numpy as np
    from raysae.sae.model import pre_activations
    from raysae.train import TrainConfig, init_state
    rows = []
    x = (np.random.default_rng(0).normal(size=(B, d)) / np.sqrt(d) * 4).astype(np.float32)
    base = init_state(TrainConfig(width=M, batch_size=B), d)
    z = np.asarray(pre_activations(base.params, jnp.asarray(x), pre_encoder_bias=True))
    dense = step_row(d, M, B, "float32", iters, matmul, peak, state=base, x=x)
    for l0 in l0s:
        theta = float(np.partition(z.ravel(), z.size - l0 * B)[z.size - l0 * B])
        state = base._replace(params=base.params._replace(
            threshold=jnp.full((M,), theta, jnp.float32)))
        needed = int((z > theta - 0.0005).sum(axis=1).max())
        cap = -(-needed // 16) * 16
        try:
            r = step_row(d, M, B, "float32", iters, matmul, peak, decoder="sparse",
                         capacity=cap, state=state, x=x)
        except Exception as e:  # noqa: BLE001 - e.g. the gathered [B, k, d] runs out of memory
            rows.append({"L0": l0, "capacity": cap, "skipped": str(e)[:200]})
            continue
        rows.append({"L0": float((z > theta).sum(1).mean()), "max_row": needed,
                     "capacity": cap, "dense_ms": dense["step_ms"], "sparse_ms": r["step_ms"],
                     "dense_over_sparse": dense["step_ms"] / r["step_ms"], "d": d, "M": M,
                     "B": B})
    return rows


def feed_rate(rows: int, d: int, batch: int) -> dict:
    """LocalStream batches of a synthetic float32 cache, read and put on the device."""
    import jax
    from raysae.data.local import LocalStream
    from raysae.data.synthetic import write_synthetic_cache
    with tempfile.TemporaryDirectory() as tmp:
        shard = max(batch, rows // 8)
        write_synthetic_cache(tmp, [shard] * (rows // shard), d=d)
        n = rows // batch
        stream = LocalStream(tmp, batch)
        t0 = time.perf_counter()
        host = [next(stream) for _ in range(n)]
        read_s = time.perf_counter() - t0
        stream = LocalStream(tmp, batch)
        dev = jax.devices()[0]
        t0 = time.perf_counter()
        last = None
        for _ in range(n):
            last = jax.device_put(next(stream), dev)
        jax.block_until_ready(last)
        fed_s = time.perf_counter() - t0
        nbytes = sum(h.nbytes for h in host)
    return {"rows": rows, "d": d, "batch": batch, "read_bytes_per_s": nbytes / read_s,
            "fed_bytes_per_s": nbytes / fed_s, "fed_rows_per_s": rows / fed_s}


def lm_forward(layers: int, batch: int, seq: int, dry: bool) -> dict:
    """A Gemma 2 2B-shaped forward (random weights, `layers` layers) to the middle res site."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    from raysae.lm import GEMMA2_2B, LanguageModel, Site, init_params
    from raysae.lm.api import _sites_jit
    cfg = dataclasses.replace(GEMMA2_2B, n_layers=layers)
    if dry:  # the 2B layout at toy widths (the real embedding alone is 2.4 GB in fp32)
        cfg = dataclasses.replace(cfg, d_model=64, n_heads=2, n_kv_heads=1, head_dim=32,
                                  d_mlp=128, vocab_size=512)
    dtype = jnp.float32 if dry else jnp.bfloat16
    model = LanguageModel(cfg, init_params(jax.random.PRNGKey(0), cfg, dtype=dtype), None,
                          "2b-shaped")
    site = Site(max(layers // 2 - 1, 0), "res")
    tok = np.random.RandomState(0).randint(3, cfg.vocab_size, (batch, seq)).astype(np.int32)
    tok[:, 0] = cfg.bos_id
    tok, am = jnp.asarray(tok), jnp.ones((batch, seq), bool)
    seconds = _time(lambda: _sites_jit(model.params, model.config, tok, am, (site,)), 3)
    return {"layers": layers, "d_model": cfg.d_model, "batch": batch, "seq": seq,
            "dtype": jnp.dtype(dtype).name, "site": str(site), "tokens_per_s": batch * seq / seconds}


def packed(d: int, M: int, K: int, B: int, iters: int) -> list:
    """K SAEs of width M in one vmapped step vs K lone steps (bench/pack.py), bf16 and fp32;
    the issue's target is speedup ≥ 4 at K = 8, M = 16K."""
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from pack import time_pack
    return [time_pack(d, M, K, B, iters, dtype) for dtype in ("bfloat16", "float32")]


def _write(path: str | None, result: dict) -> None:
    if path:
        tmp = path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(result, f, indent=1, default=str)
        os.replace(tmp, path)


def run(dry: bool, budget_s: float, path: str | None = None) -> dict:
    """Every section in order, each skipped (with the reason) once the budget is spent; the
    JSON at `path` is rewritten after each section (a run cut short still leaves one)."""
    import jax
    p = DRY if dry else FULL
    start = time.perf_counter()
    out: dict = {"dry_run": dry, "device": device_info(), "skipped": {}, "notes": [
        "MFU = 12·B·d·M / step time / peak; mfu_measured_matmul divides by the n³ matmul "
        "FLOP/s measured in this run instead of the public peak",
        "fp32 matmuls run at JAX's default precision (TF32 on NVIDIA GPUs), so fp32 MFU "
        "against the fp32 peak can exceed 1",
        "sparse rows: fp32, B as in the row; dense_ms is the same shape's dense step"]}
    left = lambda: budget_s - (time.perf_counter() - start)  # noqa: E731

    def section(name, fn):
        if left() <= 0:
            out["skipped"][name] = "time budget spent"
            return
        try:
            out[name] = fn()
        except Exception as e:  # noqa: BLE001 - one failing section must not lose the others
            if "RESOURCE_EXHAUSTED" in str(e) or "out of memory" in str(e).lower():
                out["skipped"][name] = f"out of memory: {str(e)[:200]}"
            else:
                out["skipped"][name] = f"{type(e).__name__}: {str(e)[:300]}"
        out["wall_s"] = time.perf_counter() - start
        _write(path, out)

    section("matmul", lambda: matmul_rates(p["dtypes"], p["matmul_n"], p["iters"]))
    section("peak_flops", lambda: peak_rates(p["dtypes"]))

    def steps():
        rows = []
        for d in p["ds"]:
            for M in p["Ms"]:
                for dtype in p["dtypes"]:
                    if left() <= 0:
                        out["skipped"][f"step d={d} M={M} {dtype}"] = "time budget spent"
                        continue
                    try:
                        rows.append(step_row(d, M, p["B"], dtype, p["iters"], out["matmul"],
                                             out["peak_flops"]))
                    except Exception as e:  # noqa: BLE001
                        out["skipped"][f"step d={d} M={M} {dtype}"] = str(e)[:200]
        return rows

    section("step", steps)

    def targets():
        d, M = max(p["ds"]), max(p["Ms"])
        row = next(r for r in out["step"] if (r["d"], r["M"], r["dtype"]) == (d, M, "bfloat16"))
        return {"shape": f"{M} x {d} bf16, B={p['B']}", "step_ms": row["step_ms"],
                "mfu_peak": row["mfu_peak"], "step_le_45ms": row["step_ms"] <= 45.0,
                "mfu_ge_60pct": row["mfu_peak"] >= 0.60}

    section("targets", targets)
    section("sparse", lambda: sparse_rows(*p["sparse"], p["l0s"], p["iters"], out["matmul"],
                                          out["peak_flops"]))
    section("feed", lambda: feed_rate(p["feed_rows"], p["feed_d"], p["feed_batch"]))
    section("lm", lambda: lm_forward(p["lm_layers"], p["lm_batch"], p["lm_seq"], dry))
    section("packed", lambda: packed(*p["packed"], p["iters"]))
    stats = jax.devices()[0].memory_stats() or {}
    out["memory"] = {"peak_bytes": _peak_bytes(),
                     "kind": "device peak_bytes_in_use" if "peak_bytes_in_use" in stats
                     else "host peak RSS (the device has no memory stats)",
                     "bytes_limit": float(stats.get("bytes_limit", 0.0))}
    out["wall_s"] = time.perf_counter() - start
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=None, help="the JSON's path (default: $OUT/device.json)")
    ap.add_argument("--dry-run", action="store_true", help="tiny shapes on CPU")
    ap.add_argument("--budget-s", type=float, default=420.0)
    args = ap.parse_args(argv)
    if args.dry_run:
        os.environ.setdefault("JAX_PLATFORMS", "cpu")
    out_path = args.out or os.path.join(os.environ.get("OUT", "."), "device.json")
    result = run(args.dry_run, args.budget_s, out_path)
    _write(out_path, result)
    print(json.dumps(result, default=str))
    print(f"# wrote {out_path}", file=sys.stderr)


if __name__ == "__main__":
    main()
