"""`run_sweep`: validate, prepare data, start the shared brokers, run (or resume) Ray Tune.

`param_space_extra` entries are merged over the sweep's own axes, and `search_alg` /
`scheduler` are any Tune searcher / scheduler (their metrics appear only in some results,
eval/* in the last one, so strict metric checking is turned off when either is given).
With `pack: K` each Tune trial of a λ grid trains K SAEs of one (site, width) together;
everything below is still per SAE. Results land under ``<storage>/<name>/``: ``sweep.yaml``,
one Tune directory per trial,
``saes/<site>/w<width>-l<λ>-<id>/`` (params.npz, saelens/, result.json),
``checkpoints/<trial id>/``, ``frontier.csv|json|png`` and ``cache/<site>/`` for text sweeps.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from typing import Any, Sequence

import ray
import yaml
from ray import tune
from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback
from ray.tune.search.basic_variant import BasicVariantGenerator

from raysae import storage
from raysae.config import ConfigError, to_dict
from raysae.connect import connect
from raysae.evals import frontier as frontier_lib
from raysae.sweep.callbacks import FrontierCallback
from raysae.sweep.progress import SweepProgress
from raysae.sweep.prepare import CONFIG_NAME, prepare_data, sweep_exists, validate
from raysae.sweep.spec import SweepConfig
from raysae.sweep.trainable import PACK_AXIS, stream_name, train_sae, trial_name

log = logging.getLogger(__name__)


class SweepError(RuntimeError):
    """Tune could not run or record the sweep; the message says what is kept and what to do."""


@dataclasses.dataclass
class SweepResult:
    sweep_url: str
    results: Any                     # ray.tune.ResultGrid
    frontier: list[dict]             # every trial's row, frontier flags set
    stream_stats: dict = dataclasses.field(default_factory=dict)  # stream -> [BrokerStats]

    @property
    def table(self) -> str:
        return frontier_lib.format_table(self.frontier)

    @property
    def plot_url(self) -> str:
        return storage.join(self.sweep_url, frontier_lib.PNG_NAME)


def param_space(config: SweepConfig, extra: dict | None = None, searcher: bool = False) -> dict:
    """The Tune search space: grid over sites × widths (× λ grid), or λ from a distribution.

    With a user's search algorithm (`searcher`), axes become what searchers understand
    (Optuna, HyperOpt, ... reject grid_search): one value stays a constant, several values
    become `tune.choice`. With `pack` > 1 and no searcher, the λ grid is one of groups of
    `pack` values (``sparsity_coefficients``): one trial trains each group.
    """
    sp = config.sparsity

    def axis(values: list):
        if not searcher:
            return tune.grid_search(list(values))
        return values[0] if len(values) == 1 else tune.choice(list(values))

    if sp.grid:
        lam = axis(list(sp.grid))
    elif sp.distribution == "loguniform":
        lam = tune.loguniform(sp.low, sp.high)
    else:
        lam = tune.uniform(sp.low, sp.high)
    space = {"site": axis(list(config.sites)), "width": axis(list(config.widths))}
    if sp.grid and config.pack > 1 and not searcher:
        space[PACK_AXIS] = tune.grid_search(config.lambda_packs())
    else:
        space["sparsity_coefficient"] = lam
    space.update(extra or {})
    return space


def num_samples(config: SweepConfig, searcher: bool) -> int:
    """Trials per grid point (no searcher), or trials in all (a searcher samples each one)."""
    if not searcher:
        return 1 if config.sparsity.grid else config.sparsity.num_samples
    return config.num_trials()


def _trainable(config: SweepConfig, manifests: dict[str, str], searched: bool):
    fn = tune.with_parameters(train_sae, sweep=config, manifests=manifests, searched=searched)
    r = config.resources
    if r.multi_process:  # the trial only drives a JaxTrainer job; its workers hold the devices
        return named_trials(tune.with_resources(fn, {"cpu": 1}))
    return named_trials(tune.with_resources(fn, {"cpu": r.cpus, "gpu": r.gpus}))


def named_trials(fn):
    """The function trainable as a class whose actors the Ray dashboard lists by trial:
    `SAETrial(res_2-w256-l0.001)` rather than Tune's anonymous `ImplicitFunc`."""
    from ray.tune.trainable.function_trainable import wrap_function

    class SAETrial(wrap_function(fn)):
        def __repr__(self):  # Ray takes an actor's dashboard name from its repr
            return f"SAETrial({self.trial_name})"

    return SAETrial


def _max_concurrent(config: SweepConfig) -> int:
    if config.concurrency:
        return config.concurrency
    cpus = ray.cluster_resources().get("CPU", 1)
    return max(1, int(cpus // config.resources.cpus))


def _start_brokers(config: SweepConfig, manifests: dict[str, str], resume: bool,
                   searcher: bool = False) -> list:
    from raysae.stream import start_brokers

    per_site = config.num_tune_trials(searcher) // len(config.sites)
    sc = config.stream
    if sc.expect_consumers == 0 and not resume:  # hold the first ring for trials starting together
        sc = dataclasses.replace(sc, expect_consumers=min(per_site, _max_concurrent(config)))
    # A resumed sweep's trials continue from their own positions: brokers seek to them.
    return [start_brokers(manifests[s], config.train.batch_size, sc, name=stream_name(config, s),
                          seek=resume) for s in config.sites]


_FIXED_BY_THE_SWEEP = ("width", "sparsity_coefficient", "steps", "batch_size", "transcoder")


def _check_param_space(extra: dict | None) -> None:
    """A user's search space may vary recipe fields, not what the sweep itself decides."""
    from raysae.train.config import TrainConfig

    known = {f.name for f in dataclasses.fields(TrainConfig)}
    for key in extra or {}:
        if key in ("site", "width", "sparsity_coefficient", PACK_AXIS):
            continue  # the sweep's own axes, replaced
        if key in _FIXED_BY_THE_SWEEP:
            raise ConfigError(f"param_space_extra.{key}: set by the sweep (the brokers batch "
                              "for train.batch_size; tokens / widths decide steps); change "
                              "the sweep config instead")
        if key not in known:
            raise ConfigError(f"param_space_extra.{key}: not a TrainConfig field "
                              f"(one of {', '.join(sorted(known))})")


def _quiet_tune(verbose: int) -> None:
    """Tune and Ray Data print boxes, bars and INFO lines; raysae's display replaces them."""
    # The trials write TensorBoard events by optimiser step themselves: no Tune TBX logger
    # (its x axis is the report count), and CSV / JSON loggers are passed explicitly.
    os.environ["TUNE_DISABLE_AUTO_CALLBACK_LOGGERS"] = "1"
    if verbose == 0:
        os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # the new engine prints at verbose 0
        for name in ("ray.tune", "ray.train"):
            logging.getLogger(name).setLevel(logging.WARNING)
        logging.getLogger("ray.data").setLevel(logging.ERROR)  # e.g. "progress bars disabled"
        from ray.data import DataContext

        DataContext.get_current().enable_progress_bars = False


def _display(config: SweepConfig, progress: bool, searcher: bool = False) -> list:
    if not progress:
        return []
    return [SweepProgress(config.num_tune_trials(searcher), steps_of=lambda c: config.steps_for(c["width"]),
                          name_of=trial_name, batch_size=config.train.batch_size)]


def run_sweep(config: SweepConfig, *, resume: bool = False, param_space_extra: dict | None = None,
              search_alg=None, scheduler=None, callbacks: Sequence = (),
              verbose: int = 0, progress: bool = True) -> SweepResult:
    """Run (or with `resume`, finish) the sweep.

    Args:
        config: the sweep.
        resume: finish an interrupted sweep from raysae's own state on storage: finished
            trials report their saved results, the others continue from their checkpoints;
            Tune's state files are not read (they may be torn, and unpickling them runs
            code), except with a `search_alg`, whose searcher state only Tune has.
        param_space_extra: Tune search-space entries merged over the sweep's axes.
        search_alg, scheduler: a Tune searcher / scheduler.
        callbacks: more Tune callbacks.
        verbose: 0: raysae's own lines only (Tune and Ray quiet); 1: Tune's progress output
            too; 2: Tune's per-trial details and the workers' logs as well.
        progress: print events and a live progress display (`raysae.sweep.progress`).
    Returns:
        A `SweepResult` (the Tune ResultGrid and the frontier rows).
    Raises:
        ConfigError for a bad sweep, before any trial starts; SweepError when Tune cannot
        run or record the sweep (e.g. its storage is full): finish it with `resume`.
    """
    config = config.resolved()  # trials run in their own directories: no relative paths
    validate(config)  # before any Ray work: a bad file fails in one line
    _check_param_space(param_space_extra)
    sweep_url = config.sweep_url
    storage_path, storage_fs = storage.pyarrow_filesystem(config.storage)
    exp_path = storage.join(storage_path, config.name) if storage_fs is None else \
        f"{storage_path.rstrip('/')}/{config.name}"
    has_sweep = sweep_exists(config)
    if resume and not has_sweep:
        raise ConfigError(f"--resume: no sweep to resume at {sweep_url}")
    if not resume and has_sweep:
        raise ConfigError(f"name: {sweep_url} already holds a sweep; pass --resume to finish "
                          "it, or choose another name or storage")
    if search_alg is not None or scheduler is not None:
        os.environ["TUNE_DISABLE_STRICT_METRIC_CHECKING"] = "1"
    _quiet_tune(verbose)
    if not ray.is_initialized():
        log.info(connect(log_to_driver=verbose > 1))
    shown = _display(config, progress, search_alg is not None)
    manifests = prepare_data(config, say=shown[0].say if shown else None)
    storage.write_bytes_atomic(storage.join(sweep_url, CONFIG_NAME),
                               yaml.safe_dump(to_dict(config), sort_keys=False).encode())
    brokers = _start_brokers(config, manifests, resume, search_alg is not None) \
        if config.shared_stream else []
    trainable = _trainable(config, manifests, search_alg is not None)
    frontier_cb = FrontierCallback(sweep_url, searched=search_alg is not None,
                                   on_written=shown[0].frontier_written if shown else None)
    try:
        if resume and search_alg is not None and tune.Tuner.can_restore(
                exp_path, storage_filesystem=storage_fs):
            # Only Tune knows a searcher's state: this reads (unpickles) Tune's files.
            tuner = tune.Tuner.restore(exp_path, trainable=trainable, resume_unfinished=True,
                                       resume_errored=True, storage_filesystem=storage_fs)
        else:
            searcher = search_alg is not None
            # The same points on every run (sampled λ included): a resumed sweep finds each
            # trial's results and checkpoints by its key.
            search = search_alg or BasicVariantGenerator(random_state=config.sparsity.seed,
                                                         max_concurrent=config.concurrency)
            tuner = tune.Tuner(
                trainable,
                param_space=param_space(config, param_space_extra, searcher),
                tune_config=tune.TuneConfig(
                    search_alg=search, scheduler=scheduler,
                    num_samples=num_samples(config, searcher),
                    max_concurrent_trials=(config.concurrency or None) if searcher else None,
                    trial_name_creator=lambda t: trial_name(t.config),
                    trial_dirname_creator=lambda t: f"{trial_name(t.config)}-{t.trial_id}"),
                run_config=tune.RunConfig(
                    name=config.name, storage_path=storage_path, storage_filesystem=storage_fs,
                    failure_config=tune.FailureConfig(max_failures=config.failure.max_failures,
                                                      fail_fast=config.failure.fail_fast),
                    checkpoint_config=tune.CheckpointConfig(
                        num_to_keep=config.train.keep_checkpoints),
                    callbacks=[*shown, frontier_cb, CSVLoggerCallback(), JsonLoggerCallback(),
                               *callbacks],
                    verbose=verbose))
        try:
            results = tuner.fit()
        except (KeyboardInterrupt, ConfigError):
            raise
        except Exception as e:  # Tune itself failed (its storage full, say): say what to do
            raise SweepError(f"{sweep_url}: Tune could not run or record the sweep "
                             f"({type(e).__name__}: {e}); finished trials and checkpoints are "
                             "kept on storage: fix the cause and rerun with --resume") from e
    finally:
        from raysae.stream import stop_brokers

        stats = {}
        for b in brokers:
            try:  # the brokers' own counters, for the record (and the tests)
                stats[b.name] = ray.get([a.stats.remote() for a in b.actors], timeout=30)
            except ray.exceptions.RayError:
                pass
            stop_brokers(b)
    rows = frontier_lib.read_frontier(sweep_url)
    return SweepResult(sweep_url=sweep_url, results=results, frontier=rows, stream_stats=stats)
