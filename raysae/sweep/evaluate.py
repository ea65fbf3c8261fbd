"""A trial's final evaluation: L0, FVU, MSE and delta LM loss of the folded SAE it trained.

With text (`final_eval.text`, default the sweep's `data.text`) the SAE is spliced into the LM
by `raysae.evals.evaluate` on the corpus's *last* documents (the caching job reads from the
start, so with a token budget below the corpus the eval text is held out). Without text
(a sweep over an existing cache) L0 / FVU / MSE come from cache batches in another shuffle
order and there is no delta loss. No Ray here; the model and eval tokens are cached per
process.
"""

from __future__ import annotations

import collections
import dataclasses
import functools

import numpy as np

from raysae import metrics as names
from raysae.sweep.spec import SweepConfig


def eval_text(config: SweepConfig) -> str | None:
    return config.final_eval.text or config.data.text


@functools.lru_cache(maxsize=2)
def _model(source: str):
    from raysae.lm import load_lm

    return load_lm(source)


@functools.lru_cache(maxsize=4)
def _eval_stream(source: str, model_source: str, num_tokens: int, text_field: str = "text") -> np.ndarray:
    """A 1-D token stream (documents joined by EOS) of about `num_tokens` tokens, from the end."""
    from raysae.activations.config import CacheConfig
    from raysae.activations.sources import documents, resolve_inputs

    model = _model(model_source)
    files = resolve_inputs(CacheConfig(inputs=[source], output="unused", model=model_source))
    eos = np.array([model.config.eos_id], np.int32)
    tail: list[np.ndarray] = []   # documents from the end of the corpus, last first
    total = 0
    for f in reversed(files):
        # The caching job reads each file from its start, so take this file's *last*
        # documents: keep a rolling window of about num_tokens tokens while streaming it.
        window: collections.deque = collections.deque()
        size = 0
        for ids in documents(f, text_field, model.tokenizer, model.config.vocab_size):
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
    rows = max(ec.num_sequences, ec.frequency_sequences if ec.frequency else 0)
    stream = _eval_stream(text, config.model, rows * ec.context_length, config.data.cache.text_field)
    report = evaluate(folded, model, site, tokens=stream, config=ec)
    return {f"{names.EVAL_PREFIX}{k}": float(v) for k, v in report.metrics().items()}


def activation_evaluation(config: SweepConfig, manifest_url: str, folded) -> dict[str, float]:
    """L0 / FVU / MSE of the folded SAE on raw cache batches in another shuffle order."""
    import jax.numpy as jnp

    from raysae.data.local import LocalStream
    from raysae.sae.model import decode, encode

    # another shuffle order; read here, whatever reader the sweep's brokers use
    sc = dataclasses.replace(config.stream, seed=config.stream.seed + 1, epochs=None, reader="memmap")
    stream = LocalStream(manifest_url, config.train.batch_size, sc)
    d = stream.manifest.d
    l0 = sq = 0.0
    xs: list[np.ndarray] = []
    for _, batch in zip(range(config.final_eval.activation_batches), stream):
        # a transcoder cache holds [input | target] side by side
        inp, target = (batch[:, :d], batch[:, d:]) if len(stream.manifest.parts) == 2 else (batch, batch)
        f = encode(folded, jnp.asarray(inp))
        l0 += float(jnp.sum(f != 0))
        sq += float(jnp.sum(jnp.square(jnp.asarray(target) - decode(folded, f))))
        xs.append(np.asarray(target, np.float64))
    stream.close()
    x = np.concatenate(xs)
    variance = float(np.sum((x - x.mean(0)) ** 2))
    rows = x.shape[0]
    return {names.EVAL_L0: l0 / rows, names.EVAL_FVU: sq / max(variance, 1e-30),
            names.EVAL_MSE: sq / rows, names.EVAL_NUM_TOKENS: float(rows)}


def final_evaluation(config: SweepConfig, site: str, manifest_url: str, folded) -> dict:
    """The trial's final metrics (see the module docstring).

    Args:
        config: the sweep.
        site: the trial's site ("res:12", "transcoder:5").
        manifest_url: the site's activation cache.
        folded: the SAE in raw activation space.
    """
    text = eval_text(config)
    if text is not None:
        return lm_evaluation(config, site, folded, text)
    return activation_evaluation(config, manifest_url, folded)
