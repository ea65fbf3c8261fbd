"""Train the embedded tiny Gemma 2 (raysae/lm/tiny/) on the Python standard library's own text.

    python -m raysae.lm.train_tiny [--steps 450] [--out raysae/lm/tiny]

Data recipe (present on every machine with Python): the top-level ``*.py`` files of the running
interpreter's stdlib directory (``sysconfig.get_paths()["stdlib"]``) plus ``pydoc_data/topics.py``
(the language reference/docs text), sorted by name; every 20th file is held out for validation.
Each file is UTF-8 bytes followed by EOS, all concatenated; a training row is BOS + 255 bytes
from a random offset (numpy seed 0), so the model sees BOS first as at inference. Byte-level
vocabulary (pad/eos/bos = 0/1/2, byte b = b + 3). Adam, lr 3e-3 with 50 warm-up steps and
cosine decay to 10%, batch 16 x 256, fixed PRNG keys: deterministic for a given stdlib and
JAX build. Writes config.json + model.safetensors (float32, Hugging Face layout, so transformers
loads it too), model.safetensors.sha256 and training.json (command, recipe, losses, unigram
baseline).
"""

from __future__ import annotations

import argparse
import glob
import hashlib
import json
import os
import sys
import sysconfig
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from raysae.lm.api import TINY_DIR, target_mask
from raysae.lm.config import LMConfig
from raysae.lm.model import count_params, forward, init_params, next_token_losses
from raysae.lm.tokenizer import ByteTokenizer
from raysae.lm.weights import save_weights

TINY_CONFIG = LMConfig(vocab_size=259, d_model=128, n_layers=4, n_heads=4, n_kv_heads=2, head_dim=32,
                       d_mlp=384, query_pre_attn_scalar=32, sliding_window=64, bos_id=2, eos_id=1, pad_id=0)
SEQ, BATCH, HOLDOUT_EVERY = 256, 16, 20


def corpus_files() -> list[str]:
    lib = sysconfig.get_paths()["stdlib"]
    files = sorted(glob.glob(os.path.join(lib, "*.py")))
    topics = os.path.join(lib, "pydoc_data", "topics.py")
    if os.path.exists(topics):
        files.append(topics)
    return files


def corpus() -> tuple[np.ndarray, np.ndarray, dict]:
    """(train ids, validation ids, recipe) as flat int32 streams of byte ids with EOS separators."""
    tok = ByteTokenizer()
    train, val = [], []
    files = corpus_files()
    for i, path in enumerate(files):
        ids = tok.encode(open(path, "rb").read().decode("utf-8", errors="replace"), add_bos=False, add_eos=True)
        (val if i % HOLDOUT_EVERY == 0 else train).append(np.asarray(ids, np.int32))
    recipe = {"stdlib": sysconfig.get_paths()["stdlib"], "files": len(files),
              "python": sys.version.split()[0], "holdout": f"every {HOLDOUT_EVERY}th file (sorted)",
              "train_bytes": int(sum(map(len, train))), "val_bytes": int(sum(map(len, val)))}
    return np.concatenate(train), np.concatenate(val), recipe


def sample(stream: np.ndarray, rng: np.random.RandomState, batch: int, seq: int) -> np.ndarray:
    starts = rng.randint(0, len(stream) - seq, size=batch)
    rows = np.stack([stream[s: s + seq - 1] for s in starts])
    return np.concatenate([np.full((batch, 1), TINY_CONFIG.bos_id, np.int32), rows], axis=1)


def mean_loss(params, config, tokens):
    losses = next_token_losses(forward(params, config, tokens).logits, tokens)
    mask = target_mask(tokens, config)
    return jnp.sum(losses * mask) / jnp.maximum(mask.sum(), 1)


def train(steps: int, out: str, log_every: int = 50) -> dict:
    cfg = TINY_CONFIG
    train_ids, val_ids, recipe = corpus()
    params = init_params(jax.random.PRNGKey(0), cfg, std=0.02)
    sched = optax.warmup_cosine_decay_schedule(3e-4, 3e-3, min(50, steps // 4), steps, 3e-4)
    opt = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(sched, b1=0.9, b2=0.99, weight_decay=0.01))
    state = opt.init(params)

    @jax.jit
    def step(params, state, tokens):
        loss, grads = jax.value_and_grad(mean_loss)(params, cfg, tokens)
        updates, state = opt.update(grads, state, params)
        return optax.apply_updates(params, updates), state, loss

    eval_loss = jax.jit(mean_loss, static_argnums=1)
    rng = np.random.RandomState(0)
    val_batches = [sample(val_ids, np.random.RandomState(1000 + i), BATCH, SEQ) for i in range(8)]
    t0, hist = time.time(), []
    for i in range(steps):
        params, state, loss = step(params, state, jnp.asarray(sample(train_ids, rng, BATCH, SEQ)))
        if (i + 1) % log_every == 0 or i == 0:
            hist.append((i + 1, float(loss)))
            print(f"step {i + 1}/{steps} loss {float(loss):.4f} ({time.time() - t0:.0f}s)", flush=True)
    val = float(np.mean([eval_loss(params, cfg, jnp.asarray(b)) for b in val_batches]))
    counts = np.bincount(train_ids, minlength=cfg.vocab_size) + 1.0
    p = counts / counts.sum()
    unigram = float(-np.mean(np.log(p[np.concatenate([b[:, 1:] for b in val_batches]).ravel()])))
    record = {
        "command": f"python -m raysae.lm.train_tiny --steps {steps}",
        "data": recipe, "batch": BATCH, "seq_len": SEQ, "steps": steps,
        "params": count_params(params), "train_loss_last": hist[-1][1],
        "val_loss_nats_per_byte": round(val, 4), "val_unigram_nats_per_byte": round(unigram, 4),
        "history": hist, "train_seconds": round(time.time() - t0, 1), "jax": jax.__version__,
    }
    save_weights(out, params, cfg, np.float32, metadata={"trained_by": "raysae.lm.train_tiny"})
    hf = json.load(open(os.path.join(out, "config.json")))
    hf["raysae_tokenizer"] = ByteTokenizer().to_json()
    with open(os.path.join(out, "config.json"), "w") as f:
        json.dump(hf, f, indent=2)
        f.write("\n")
    digest = hashlib.sha256(open(os.path.join(out, "model.safetensors"), "rb").read()).hexdigest()
    with open(os.path.join(out, "model.safetensors.sha256"), "w") as f:
        f.write(f"{digest}  model.safetensors\n")
    with open(os.path.join(out, "training.json"), "w") as f:
        json.dump(record, f, indent=2)
        f.write("\n")
    print(f"val loss {val:.4f} nats/byte (unigram {unigram:.4f}); wrote {out}")
    return record


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[1])
    ap.add_argument("--steps", type=int, default=450)
    ap.add_argument("--out", default=TINY_DIR)
    args = ap.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    train(args.steps, args.out)


if __name__ == "__main__":
    main()
