"""The sweep engine: Ray Tune over sites × widths × λ, one JumpReLU SAE per trial.

This top level is Ray-free (the YAML schema, `load_sweep`); the Ray parts are imported from
their modules: `raysae.sweep.launch.run_sweep(config)` runs a sweep, `trainable.train_sae`
is the Tune trainable, `trial.run_trial` the one trial path, `callbacks.FrontierCallback`
the live Pareto frontier, `prepare.validate` / `prepare_data` the checks and caching.
"""

from raysae.sweep.spec import (DataSpec, FailureSpec, FinalEvalSpec, ResourcesSpec, SparsitySpec,
                               SweepConfig, load_sweep)

__all__ = ["SweepConfig", "SparsitySpec", "DataSpec", "FinalEvalSpec", "ResourcesSpec",
           "FailureSpec", "load_sweep"]
