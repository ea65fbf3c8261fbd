"""The packed train step alone (no Ray, no data pipeline): K SAEs in one vmapped step vs
K lone steps, on one batch already on the device.

For each width: the packed step (`raysae.train.pack.packed_train_step`, jitted, state
donated) and the lone step (`train_step`, one call per SAE) on the same batch, each
compiled and warmed up first, then timed over `--steps` steps, alternating the two so a
noisy machine loads both alike. Reports SAE steps/s and the packed / lone time ratio.
`time_pack` is also bench/device.py's `packed` section.

    .venv/bin/python bench/pack.py                          # d 512, widths 2048 8192, K 4
    .venv/bin/python bench/pack.py --d 2304 --widths 16384 --k 8 --batch 4096   # an accelerator
"""

from __future__ import annotations

import argparse
import time


def time_pack(d: int, width: int, k: int, batch: int, steps: int,
              compute_dtype: str = "float32") -> dict:
    """Packed vs lone train steps for K SAEs of one width on one batch.

    Args:
        d: input width; width: SAE width; k: SAEs in the pack; batch: rows per step;
        steps: timed steps of each (after two warm-up steps that include the compile);
        compute_dtype: the recipe's matmul dtype.
    Returns:
        {d, width, k, batch, dtype, lone_sae_steps_per_s, packed_sae_steps_per_s,
         packed_over_lone_time, speedup}.
    """
    import jax
    import numpy as np

    from raysae.train import Pack, TrainConfig, init_state, train_step
    from raysae.train.pack import packed_train_step

    x = jax.device_put(np.random.default_rng(0).standard_normal((batch, d), np.float32))
    base = TrainConfig(recipe="small-budget", width=width, batch_size=batch, steps=1000,
                       compute_dtype=compute_dtype)
    members = [base.with_(sparsity_coefficient=1e-3 * 3 ** i) for i in range(k)]
    pack = Pack(members)
    knobs = pack.knobs()
    packed = jax.jit(lambda s, x: packed_train_step(s, x, None, pack.base, knobs),
                     donate_argnums=0)
    lone = [jax.jit(lambda s, x, c=c: train_step(s, x, None, c), donate_argnums=0)
            for c in members]
    ps = pack.init_state(d)
    ls = [init_state(c, d) for c in members]

    def run_packed(n):
        nonlocal ps
        for _ in range(n):
            ps, _ = packed(ps, x)
        jax.block_until_ready(ps)

    def run_lone(n):
        for _ in range(n):
            for i, f in enumerate(lone):
                ls[i], _ = f(ls[i], x)
        jax.block_until_ready(ls)

    run_packed(2)  # compile and warm up
    run_lone(2)
    t = {"packed": 0.0, "lone": 0.0}
    for _ in range(steps):
        for name, fn in (("packed", run_packed), ("lone", run_lone)):
            t0 = time.perf_counter()
            fn(1)
            t[name] += time.perf_counter() - t0
    sae_steps = k * steps
    return {"d": d, "width": width, "k": k, "batch": batch, "dtype": compute_dtype,
            "lone_sae_steps_per_s": sae_steps / t["lone"],
            "packed_sae_steps_per_s": sae_steps / t["packed"],
            "packed_over_lone_time": t["packed"] / t["lone"],
            "speedup": t["lone"] / t["packed"]}


def main() -> None:
    import jax

    ap = argparse.ArgumentParser()
    ap.add_argument("--d", type=int, default=512)
    ap.add_argument("--widths", type=int, nargs="+", default=[2048, 8192])
    ap.add_argument("--k", type=int, default=4)
    ap.add_argument("--batch", type=int, default=512)
    ap.add_argument("--steps", type=int, default=6)
    args = ap.parse_args()
    print(f"{jax.devices()[0].device_kind}, d = {args.d}, batch {args.batch}, K = {args.k}, "
          f"{args.steps} timed steps")
    print(f"{'width':>7}{'lone SAE steps/s':>18}{'packed SAE steps/s':>20}{'packed / lone time':>20}")
    for width in args.widths:
        r = time_pack(args.d, width, args.k, args.batch, args.steps)
        print(f"{width:7d}{r['lone_sae_steps_per_s']:18.2f}{r['packed_sae_steps_per_s']:20.2f}"
              f"{r['packed_over_lone_time']:20.2f}")


if __name__ == "__main__":
    main()
