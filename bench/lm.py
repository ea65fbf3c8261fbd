"""Throughput of raysae's Gemma 2 forward (tokens/s), printed as BENCHMARKS.md rows.

    .venv/bin/python bench/lm.py                 # tiny model + 2B-shaped (2 layers) + transformers
    .venv/bin/python bench/lm.py --layers-2b 26  # a full 2B-shaped forward (do this on a GPU)

Rows: the embedded tiny model, jitted forward to a middle site (res:1 of 4 layers, stops there)
and the full forward with per-token loss, at sequence 256 and 1,024 (the ratio of per-token
throughput shows attention cost at long context); a Gemma 2 2B-shaped config (d_model 2304,
8/4 heads of 256, d_mlp 9216, vocab 256k) with random weights and `--layers-2b` layers; and the
same tiny model run by Hugging Face transformers (torch, CPU, eager attention as Gemma 2 needs
for soft-capping) in the same process, reported as a ratio. The transformers column is skipped
with a message when torch/transformers are not installed.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from raysae.lm import GEMMA2_2B, LanguageModel, Site, init_params, load_lm
from raysae.lm.api import TINY_DIR, _sites_jit, _losses_jit


def _time(fn, reps: int) -> float:
    jax.block_until_ready(fn())  # compile + warm
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        jax.block_until_ready(fn())
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


def bench_model(model: LanguageModel, batch: int, seq: int, site: Site, reps: int) -> dict:
    rng = np.random.RandomState(0)
    tok = rng.randint(3, model.config.vocab_size, (batch, seq)).astype(np.int32)
    tok[:, 0] = model.config.bos_id
    tok, am = jnp.asarray(tok), jnp.ones((batch, seq), bool)
    t_site = _time(lambda: _sites_jit(model.params, model.config, tok, am, (site,)), reps)
    t_full = _time(lambda: _losses_jit(model.params, model.config, tok, am, None), reps)
    n = batch * seq
    return {"site": n / t_site, "full": n / t_full}


def bench_transformers(batch: int, seq: int, reps: int) -> dict | None:
    try:
        import torch
        from transformers import Gemma2ForCausalLM
    except ImportError as e:
        print(f"# transformers column skipped: {e} (pip install torch==2.13.0 transformers)")
        return None
    torch.manual_seed(0)
    hf = Gemma2ForCausalLM.from_pretrained(TINY_DIR, attn_implementation="eager").eval()
    tok = torch.randint(3, hf.config.vocab_size, (batch, seq))

    def run():
        with torch.no_grad():
            logits = hf(input_ids=tok).logits
            return torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]),
                                                     tok[:, 1:].reshape(-1), reduction="none")
    run()
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        run()
        ts.append(time.perf_counter() - t0)
    return {"full": batch * seq / statistics.median(ts)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--layers-2b", type=int, default=2)
    ap.add_argument("--seq-2b", type=int, default=256)
    ap.add_argument("--batch-2b", type=int, default=1)
    ap.add_argument("--dtype-2b", default="float32", choices=["float32", "bfloat16"])
    args = ap.parse_args()
    dev = jax.devices()[0]
    print(f"# jax {jax.__version__} on {dev.platform} ({dev.device_kind}), {jax.device_count()} device(s)")
    print("| model | batch x seq | forward to site (tok/s) | full + loss (tok/s) | vs transformers |")
    print("|---|---|---|---|---|")
    tiny = load_lm("tiny")
    hf_rate = None
    for seq in (256, 1024):
        r = bench_model(tiny, args.batch, seq, Site(1, "res"), args.reps)
        hf = bench_transformers(args.batch, seq, args.reps)
        ratio = f"{r['full'] / hf['full']:.2f}x ({hf['full']:,.0f} tok/s)" if hf else "skipped"
        hf_rate = hf_rate or hf
        print(f"| tiny (4L, d128) | {args.batch} x {seq} | {r['site']:,.0f} (res:1) | {r['full']:,.0f} | {ratio} |",
              flush=True)
    cfg = dataclasses.replace(GEMMA2_2B, n_layers=args.layers_2b)
    dtype = jnp.bfloat16 if args.dtype_2b == "bfloat16" else jnp.float32
    params = init_params(jax.random.PRNGKey(0), cfg, dtype=dtype)
    big = LanguageModel(cfg, params, None, "2b-shaped")
    mid = Site(max(cfg.n_layers // 2 - 1, 0), "res")
    r = bench_model(big, args.batch_2b, args.seq_2b, mid, max(1, args.reps - 1))
    print(f"| 2B-shaped ({cfg.n_layers}L, {args.dtype_2b}, random) | {args.batch_2b} x {args.seq_2b} | "
          f"{r['site']:,.0f} ({mid}) | {r['full']:,.0f} | - |", flush=True)


if __name__ == "__main__":
    main()
