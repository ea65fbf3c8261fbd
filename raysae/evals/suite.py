"""`evaluate`: run every Gemma Scope metric for one SAE on one site of one model.

    report = evaluate(sae, model, "res:2", texts=[...], config=EvalConfig(num_sequences=64))
    report.l0, report.fvu, report.delta_loss, report.metrics(); write_report(report, url)

The SAE is in raw activation space (folded, as `params.npz` releases are). Inputs are checked
before any forward runs (`check_inputs`): the site exists in the model, the SAE's widths match
the site's, token ids fit the vocabulary. The loop streams batches (only sums are kept, see
`accumulate`), so memory is one batch of activations whatever the eval set size. Pointing the
same SAE at another checkpoint (e.g. a base-model SAE on the instruction-tuned model) is the
transfer eval: pass that model.

r_L0 (App. C.3) is exact: token t's attribution uses ∂L_t/∂x̂_t of its own centred correct logit
only, not the gradient of the batch's summed metric (which would add later tokens' gradients
through attention); one extra forward and backward per batch, see `raysae.evals.step`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import sys
from typing import Iterable

import jax.numpy as jnp
import numpy as np

from raysae.config import ConfigError, to_dict
from raysae.evals.accumulate import Totals
from raysae.evals.config import EvalConfig
from raysae.evals.data import EvalTokens, tokens_from_array, tokens_from_texts
from raysae.evals.metrics import log10_frequency_histogram
from raysae.evals.report import EvalReport
from raysae.evals.step import batch_stats, fire_counts, site_sum
from raysae.lm.api import LanguageModel
from raysae.lm.config import LMConfig
from raysae.sites import SAESite
from raysae.sae.params import SAEParams


def check_inputs(sae: SAEParams, config: LMConfig, site: SAESite, tokens=None,
                 model_name: str = "model") -> None:
    """Raise ConfigError naming the mismatch: missing layer, SAE width vs site width, bad token ids."""
    for s in set(site.lm_sites):
        if not 0 <= s.layer < config.n_layers:
            raise ConfigError(f"site {s}: model {model_name!r} has layers 0..{config.n_layers - 1}, "
                              f"no layer {s.layer}")
    for name, got, s in (("d_in (W_enc rows)", sae.W_enc.shape[0], site.input),
                         ("d_out (W_dec columns)", sae.W_dec.shape[1], site.target)):
        want = config.site_dim(s.kind)
        if got != want:
            raise ConfigError(f"SAE {name} is {got} but site {s} of model {model_name!r} has width {want}")
    if tokens is not None:
        t = np.asarray(tokens)
        if t.size and (t.min() < 0 or t.max() >= config.vocab_size):
            raise ConfigError(f"token ids span {int(t.min())}..{int(t.max())} but model {model_name!r} has "
                              f"vocab_size {config.vocab_size}")


def eval_tokens(model: LanguageModel, config: EvalConfig, texts: Iterable[str] | None = None,
                tokens=None) -> EvalTokens:
    """The eval rows from exactly one of `texts` or `tokens` (an EvalTokens, [N, T] or 1-D ids)."""
    if (texts is None) == (tokens is None):
        raise ValueError("pass exactly one of texts= or tokens=")
    if texts is not None:
        if isinstance(texts, str):
            texts = [texts]
        return tokens_from_texts(model.tokenizer, texts, config.context_length, config.num_sequences,
                                 pack=config.pack)
    if isinstance(tokens, EvalTokens):
        return EvalTokens(tokens.tokens[:config.num_sequences], tokens.attention_mask[:config.num_sequences])
    c = model.config
    return tokens_from_array(tokens, config.context_length, config.num_sequences, bos_id=c.bos_id,
                             pad_id=c.pad_id)


@contextlib.contextmanager
def _progress(enabled: bool, total: int, label: str):
    if not enabled:
        yield lambda n=1: None
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                  console=Console(file=sys.stderr), transient=False) as bar:
        task = bar.add_task(label, total=total)
        yield lambda n=1: bar.advance(task, n)


def evaluate(sae: SAEParams, model: LanguageModel, site, *, texts: Iterable[str] | None = None,
             tokens=None, config: EvalConfig | None = None, sae_name: str | None = None) -> EvalReport:
    """Evaluate a folded SAE (or transcoder, site "transcoder:L") at `site` of `model`.

    Exactly one of `texts` (tokenized with the model's tokenizer) or `tokens` (EvalTokens, an int
    array [N, T] of rows or a 1-D stream) gives the eval set; `config` says how much of it and
    which extras to compute. Returns an EvalReport (numbers + config), see `write_report`.
    """
    config = config or EvalConfig()
    site = SAESite.parse(site)
    in_site, out_site = site.input, site.target
    check_inputs(sae, model.config, site, model_name=model.name)
    # One token set: the eval set's rows first, then the rest of the firing-frequency sample.
    rows = max(config.num_sequences, config.frequency_sequences if config.frequency else 0)
    everything = eval_tokens(model, dataclasses.replace(config, num_sequences=rows),
                             texts=texts, tokens=tokens)
    check_inputs(sae, model.config, site, everything.tokens, model_name=model.name)
    data = EvalTokens(everything.tokens[:config.num_sequences],
                      everything.attention_mask[:config.num_sequences])
    c = model.config
    counted = (data.attention_mask & (data.tokens != c.bos_id) & (data.tokens != c.eos_id)
               & (data.tokens != c.pad_id))
    if not counted.any():
        raise ValueError(f"the eval set ({data.num_sequences} rows) has no token the SAE would "
                         "read (only BOS / EOS / padding): give more text")
    extra = EvalTokens(everything.tokens[config.num_sequences:],
                       everything.attention_mask[config.num_sequences:])
    sae = SAEParams(*(jnp.asarray(a, jnp.float32) for a in sae))
    bs = min(config.batch_size, data.num_sequences)
    n_batches = -(-data.num_sequences // bs)
    n_extra = -(-extra.num_sequences // bs) if extra.num_sequences else 0
    name = str(site)

    with _progress(config.progress, n_batches * (2 if "mean" in config.ablations else 1) + n_extra,
                   f"eval {name}") as advance:
        site_mean = jnp.zeros((sae.W_dec.shape[1],), jnp.float32)
        if "mean" in config.ablations:  # pre-pass: the mean the ablation substitutes
            count, total = 0.0, np.zeros(sae.W_dec.shape[1])
            for b in data.batches(bs):
                c, s = site_sum(model.params, jnp.asarray(b.tokens), jnp.asarray(b.attention_mask),
                                config=model.config, site=out_site)
                count, total = count + float(c), total + np.asarray(s, np.float64)
                advance()
            site_mean = jnp.asarray(total / max(count, 1.0), jnp.float32)
        totals = Totals(sae.W_enc.shape[1], sae.W_dec.shape[1])
        for b in data.batches(bs):
            totals.add(batch_stats(model.params, sae, site_mean, jnp.asarray(b.tokens),
                                   jnp.asarray(b.attention_mask), config=model.config, in_site=in_site,
                                   out_site=out_site, ablations=config.ablations, want_r_l0=config.r_l0,
                                   per_position=config.per_position))
            advance()
        for b in (extra.batches(bs) if extra.num_sequences else ()):
            totals.add_frequency(*fire_counts(model.params, sae, jnp.asarray(b.tokens),
                                              jnp.asarray(b.attention_mask), config=model.config,
                                              site=in_site))
            advance()

    summary = totals.summary(config.ultra_high_frequency)
    if not config.r_l0:
        summary["r_l0"] = None
        summary.pop("r_l0_tokens")
    freq = totals.frequencies() if config.frequency else None
    return EvalReport(
        model=model.name, site=name, width=int(sae.W_enc.shape[1]), d_in=int(sae.W_enc.shape[0]),
        d_out=int(sae.W_dec.shape[1]), num_sequences=data.num_sequences,
        context_length=int(data.tokens.shape[1]), config=to_dict(config), summary=summary,
        per_position=totals.per_position() if config.per_position else None,
        frequency_histogram=(log10_frequency_histogram(freq, config.histogram_bins, config.histogram_min_log10,
                                                       int(totals.frequency_tokens))
                             if freq is not None else None),
        frequencies=freq, sae=sae_name)
