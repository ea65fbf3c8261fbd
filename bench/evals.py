"""Eval throughput (tokens/s) on the embedded tiny model, and what delta loss costs over a plain forward.

    .venv/bin/python bench/evals.py                  # batch 8 x 256 tokens, SAE width 2048
    .venv/bin/python bench/evals.py --seq 1024 --batch 4 --reps 5

Rows (one process, interleaved repetitions, best of N (the least-disturbed run); compare ratios, not absolute numbers, on a
shared machine):
- `plain`: a jitted full forward with per-token losses (what an LM eval costs anyway);
- `delta@res:L`: the eval program with only clean + spliced losses (no ablations, r_L0 or
  per-position), for a site at each layer: it runs one forward up to L, then two from L on, so
  its cost over `plain` should be at most 1 + (layers from L on) / layers, not 2 (a second full
  forward); for a `res` site XLA also shares block L itself between the clean and spliced passes
  (same input, same ops up to the site), so it comes out lower still;
- `sae`: the SAE alone (encode, decode, error and firing sums) on one batch of activations; on
  the tiny model a 16x-wide SAE costs about as much as the LM itself, so `delta − sae` is the
  LM's share, printed next to the expected ratio;
- `full@res:1`: the default EvalConfig program (zero + mean ablation, per position, r_L0);
- `evaluate()`: the whole Python API end to end (host accumulation, mean pre-pass) in tokens/s.
"""

from __future__ import annotations

import argparse
import functools
import time

import jax
import jax.numpy as jnp
import numpy as np

from raysae.evals import EvalConfig, evaluate
from raysae.evals.step import batch_stats
from raysae.lm import Site, forward, load_lm, next_token_losses, site_activations
from raysae.sae import decode, encode, init_params


@functools.partial(jax.jit, static_argnames=("config",))
def plain_losses(params, tokens, attention_mask, *, config):
    return next_token_losses(forward(params, config, tokens, attention_mask).logits, tokens)


@jax.jit
def sae_only(sae, x, mask):
    f = encode(sae, x)
    sq = jnp.sum(jnp.square(x - decode(sae, f)), -1) * mask
    return jnp.sum(sq), jnp.sum((f != 0) & mask[..., None], axis=(0, 1))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--width", type=int, default=2048)
    ap.add_argument("--reps", type=int, default=7)
    a = ap.parse_args()

    model = load_lm("tiny")
    c = model.config
    rng = np.random.RandomState(0)
    tok = rng.randint(3, c.vocab_size, (a.batch, a.seq)).astype(np.int32)
    tok[:, 0] = c.bos_id
    tok, am = jnp.asarray(tok), jnp.ones((a.batch, a.seq), bool)
    sae = init_params(jax.random.PRNGKey(0), c.d_model, a.width)._replace(
        threshold=jnp.full((a.width,), 0.05))   # a realistically sparse, folded SAE
    mean = jnp.zeros((c.d_model,))

    acts = site_activations(model, tok, ["res:1"], am)[Site(1, "res")]
    progs = {"plain": lambda: plain_losses(model.params, tok, am, config=c),
             "sae": lambda: sae_only(sae, acts, am)}
    for layer in range(c.n_layers):
        s = Site(layer, "res")
        progs[f"delta@{s}"] = functools.partial(batch_stats, model.params, sae, mean, tok, am, config=c, in_site=s,
                                                out_site=s, ablations=(), want_r_l0=False, per_position=False)
    progs["full@res:1"] = functools.partial(batch_stats, model.params, sae, mean, tok, am, config=c,
                                            in_site=Site(1, "res"), out_site=Site(1, "res"),
                                            ablations=("zero", "mean"), want_r_l0=True, per_position=True)
    for f in progs.values():
        jax.block_until_ready(f())  # compile + warm
    times = {k: [] for k in progs}
    for _ in range(a.reps):
        for k, f in progs.items():
            t0 = time.perf_counter()
            jax.block_until_ready(f())
            times[k].append(time.perf_counter() - t0)
    n = a.batch * a.seq
    base = min(times["plain"])
    print(f"tiny model ({c.n_layers} layers, d={c.d_model}), SAE width {a.width}, batch {a.batch} x {a.seq} tokens, "
          f"{jax.devices()[0].platform}, best of {a.reps}")
    t_sae = min(times["sae"])
    print("| program | tokens/s | time / plain forward | (time − sae) / plain | bound: one extra forward from block L |")
    print("|---|---|---|---|---|")
    for k, ts in times.items():
        t = min(ts)
        expect, lm_share = "", ""
        if k.startswith("delta@"):
            layer = int(k.split(":")[1])
            expect = f"≤ {1 + (c.n_layers - layer) / c.n_layers:.2f} (two full forwards: 2.00)"
            lm_share = f"{(t - t_sae) / base:.2f}"
        print(f"| {k} | {n / t:,.0f} | {t / base:.2f} | {lm_share} | {expect} |")

    texts = [bytes(rng.randint(32, 127, 4000)).decode() for _ in range(a.batch * 4)]
    cfg = EvalConfig(num_sequences=a.batch * 4, context_length=a.seq, batch_size=a.batch, progress=False)
    evaluate(sae, model, "res:1", texts=texts, config=cfg)  # compile
    t0 = time.perf_counter()
    r = evaluate(sae, model, "res:1", texts=texts, config=cfg)
    dt = time.perf_counter() - t0
    print(f"| evaluate() default config, {cfg.num_sequences} x {a.seq} | {r.summary['num_tokens'] / dt:,.0f} "
          f"(counted tokens/s, incl. mean pre-pass) | | | |")


if __name__ == "__main__":
    main()
