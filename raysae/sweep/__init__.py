"""The sweep engine: Ray Tune over sites × widths × λ, one JumpReLU SAE per trial.

Public API:

- `SweepConfig` and its sections (spec.py): the sweep YAML schema; `load_sweep(url,
  overrides)` reads one with ``--set`` overrides, errors naming the field.
- `validate(config)` / `prepare_data(config)` (prepare.py): checks against storage and the
  model before any Ray work; the caching job for text sweeps (reused when it matches).
- `run_sweep(config, resume=False, param_space_extra=None, search_alg=None, scheduler=None,
  callbacks=()) -> SweepResult` (launch.py): brokers per site, the Tuner (or
  `Tuner.restore`), the frontier; `SweepResult.frontier`, `.table`, `.plot_url`, `.results`.
- `train_sae` (trainable.py): the Tune function trainable (Tune checkpoints, shared stream,
  final evaluation, Gemma Scope npz + SAELens outputs).
- `FrontierCallback` (callbacks.py): frontier.csv/json/png after every result, restart-safe.

Ray lives here (and in stream/, activations/); the JAX core below it never imports ray.
"""

from raysae.sweep.spec import (DataSpec, FailureSpec, FinalEvalSpec, ResourcesSpec, SparsitySpec,
                               SweepConfig, load_sweep, site_slug)
from raysae.sweep.prepare import manifest_url, prepare_data, validate
from raysae.sweep.callbacks import FrontierCallback
from raysae.sweep.trainable import train_sae
from raysae.sweep.launch import SweepResult, param_space, run_sweep

__all__ = ["SweepConfig", "SparsitySpec", "DataSpec", "FinalEvalSpec", "ResourcesSpec",
           "FailureSpec", "load_sweep", "site_slug", "validate", "prepare_data", "manifest_url",
           "FrontierCallback", "train_sae", "SweepResult", "param_space", "run_sweep"]
