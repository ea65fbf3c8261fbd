"""Evaluation suite for SAEs (pure JAX/numpy, never Ray): the Gemma Scope metrics for any SAE,
ours or a released `params.npz`, on any site of a Gemma 2 model.

    from raysae.evals import EvalConfig, evaluate, write_report
    report = evaluate(sae, model, "res:2", texts=texts, config=EvalConfig(num_sequences=64))
    report.metrics()   # l0, fvu, mse, delta_loss, loss_recovered_*, dead_latents, r_l0, ...
    write_report(report, "gs://bucket/evals/run1")   # eval.json, frequencies.npy, PNGs

Modules: `config` (EvalConfig), `data` (token rows from texts/arrays), `metrics` (pure metric
pieces), `step` (the jitted per-batch program), `accumulate` (host-side running sums),
`suite` (`evaluate`: the loop and input checks), `report` (EvalReport, JSON), `plots` (PNGs), `cli`
(`raysae eval` / `python -m raysae.evals`), `frontier` (Pareto frontier, owned by the sweep).
"""

from raysae.evals.config import EvalConfig
from raysae.evals.data import EvalTokens, tokens_from_array, tokens_from_texts
from raysae.evals.suite import check_inputs, eval_tokens, evaluate
from raysae.evals.metrics import r_l0_per_token
from raysae.evals.report import EvalReport, read_report, write_report

__all__ = ["EvalConfig", "EvalTokens", "tokens_from_array", "tokens_from_texts", "check_inputs",
           "eval_tokens", "evaluate", "r_l0_per_token", "EvalReport", "read_report",
           "write_report"]
