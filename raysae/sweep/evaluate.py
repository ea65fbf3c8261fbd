"""A trial's final evaluation: L0, FVU, MSE and delta LM loss of the SAE it just trained.

With text to evaluate on (`final_eval.text`, default the sweep's `data.text`) the folded
SAE is spliced into the LM by `raysae.evals.evaluate` on `eval.num_sequences` sequences of
`eval.context_length` tokens. The eval tokens are the corpus's *last* documents (the last
files, and the last documents within a file), while the caching job reads from the start,
so with a token budget smaller than the corpus the eval text is held out (a single-file
corpus is streamed once to find its tail; set `final_eval.text` to name held-out text). Without text (a sweep over
an existing activation cache) there is no LM input to splice into, so L0, FVU and MSE are
measured on `final_eval.activation_batches` batches of the cache drawn in a different
shuffle order (seed + 1) and delta loss is absent from the results.

No Ray here; the trainable calls `final_evaluation` in the trial's process. The model and
eval tokens are cached per process, so a worker reused for several trials loads them once.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
from typing import Any

import numpy as np

from raysae.sweep.spec import SweepConfig, eval_site, is_transcoder_site


def eval_text(config: SweepConfig) -> str | None:
    return config.final_eval.text or config.data.text


@functools.lru_cache(maxsize=2)
def _model(source: str):
    from raysae.lm import load_lm

    return load_lm(source)


@functools.lru_cache(maxsize=4)
def _eval_stream(source: str, model_source: str, num_tokens: int) -> np.ndarray:
    """A 1-D token stream (documents joined by EOS) of about `num_tokens` tokens, from the end."""
    from raysae.activations.config import CacheConfig
    from raysae.activations.sources import documents, resolve_inputs

    model = _model(model_source)
    files = resolve_inputs(CacheConfig(inputs=[source], output="unused"))
    eos = np.array([model.config.eos_id], np.int32)
    tail: list[np.ndarray] = []   # documents from the end of the corpus, last first
    total = 0
    for f in reversed(files):
        # The caching job reads each file from its start, so take this file's *last*
        # documents: keep a rolling window of about num_tokens tokens while streaming it.
        window: collections.deque = collections.deque()
        size = 0
        for ids in documents(f, "text", model.tokenizer, model.config.vocab_size):
            window.append(np.asarray(ids, np.int32))
            size += len(window[-1]) + 1
            while size - len(window[0]) - 1 >= num_tokens - total:
                size -= len(window.popleft()) + 1
        tail += reversed(window)
        total += size
        if total >= num_tokens:
            break
    pieces = [p for doc in reversed(tail) for p in (doc, eos)]
    return np.concatenate(pieces)[-num_tokens:] if pieces else np.zeros(0, np.int32)


def lm_evaluation(config: SweepConfig, site: str, folded, text: str) -> dict[str, float]:
    """`raysae.evals.evaluate` on held-out text; metrics prefixed ``eval/``."""
    from raysae.evals import evaluate

    ec = dataclasses.replace(config.eval, progress=False)
    model = _model(config.model)
    stream = _eval_stream(text, config.model, ec.num_sequences * ec.context_length)
    report = evaluate(folded, model, eval_site(site), tokens=stream, config=ec)
    return {f"eval/{k}": float(v) for k, v in report.metrics().items()}


def activation_evaluation(config: SweepConfig, manifest_url: str, params,
                          pre_encoder_bias: bool = True) -> dict[str, float]:
    """L0 / FVU / MSE of the (unfolded) SAE on cache batches in another shuffle order."""
    import jax.numpy as jnp

    from raysae.activations.shards import Manifest
    from raysae.sae.model import decode, encode
    from raysae.stream import LocalStream

    manifest = Manifest.load(manifest_url)
    d = manifest.d
    sc = dataclasses.replace(config.stream, seed=config.stream.seed + 1, epochs=None)
    stream = LocalStream(manifest_url, sc)
    l0 = sq = 0.0
    xs: list[np.ndarray] = []
    n = 0
    for _, batch in stream:
        # a transcoder cache holds [input | target] side by side
        inp, target = (batch[:, :d], batch[:, d:]) if len(manifest.parts) == 2 else (batch, batch)
        f = encode(params, jnp.asarray(inp), pre_encoder_bias=pre_encoder_bias)
        xhat = decode(params, f)
        l0 += float(jnp.sum(f != 0))
        sq += float(jnp.sum(jnp.square(jnp.asarray(target) - xhat)))
        xs.append(np.asarray(target, np.float64))
        n += 1
        if n >= config.final_eval.activation_batches:
            break
    x = np.concatenate(xs)
    variance = float(np.sum((x - x.mean(0)) ** 2))
    rows = x.shape[0]
    # In normalised space; scale MSE back to raw activations (x_raw = C x).
    return {"eval/l0": l0 / rows, "eval/fvu": sq / max(variance, 1e-30),
            "eval/mse": sq / rows * manifest.norm_scalar ** 2, "eval/num_tokens": float(rows)}


def final_evaluation(config: SweepConfig, site: str, manifest_url: str, result: Any) -> dict:
    """The trial's final metrics (see the module docstring)."""
    text = eval_text(config)
    if text is not None:
        return lm_evaluation(config, site, result.folded, text)
    transcoder = config.train.transcoder or is_transcoder_site(site)
    return activation_evaluation(config, manifest_url, result.params,
                                 pre_encoder_bias=not transcoder)
