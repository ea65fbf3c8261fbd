"""`raysae`: the command line, a thin layer over the Python API.

    raysae sweep FILE [--resume | --resume-if-exists] [--set key=value ...] [--address ADDR]
    raysae cache ...      (raysae/activations/cli.py)
    raysae eval ...       (raysae/evals/cli.py)

`raysae sweep tiny` runs the embedded sweeps/tiny.yaml. A bad sweep file is reported in one
line naming the field (exit status 2) before Ray starts. Every subcommand reads its config
the same way: the YAML file, then its flags, then `--set` (`raysae.config.load_config`).
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

def _preset_dirs() -> list[str]:
    """Where the shipped sweep presets are: the source tree's sweeps/ (a checkout or an
    editable install), then <prefix>/share/raysae/sweeps (a wheel install)."""
    repo = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "sweeps")
    return [repo, os.path.join(sys.prefix, "share", "raysae", "sweeps")]


def _preset(name: str) -> str:
    for d in _preset_dirs():
        path = os.path.join(d, f"{name}.yaml")
        if os.path.exists(path):
            return path
    return os.path.join(_preset_dirs()[0], f"{name}.yaml")  # the error will name this path


EMBEDDED = {"tiny": _preset("tiny")}
# name -> module with add_parser(subparsers) and run(args)
PLUGINS = {"cache": "raysae.activations.cli", "eval": "raysae.evals.cli"}


def sweep_file(name: str) -> str:
    """A sweep YAML URL, or the path of an embedded one ("tiny")."""
    return EMBEDDED.get(name, name)


def _add_sweep(subparsers) -> None:
    from raysae.config import set_help
    from raysae.sweep.spec import SweepConfig

    p = subparsers.add_parser(
        "sweep", help="train a sweep of SAEs on Ray Tune (sites x widths x λ)",
        description="Run the sweep in FILE (any fsspec URL, or 'tiny' for the embedded demo) "
                    "on the Ray cluster in RAY_ADDRESS / --address, or a local one.",
        epilog=set_help(SweepConfig), formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("file", help="sweep YAML (see sweeps/tiny.yaml), or 'tiny'")
    p.add_argument("--resume", action="store_true",
                   help="finish an interrupted sweep: finished trials are kept, unfinished ones "
                        "resume from their last checkpoint")
    p.add_argument("--resume-if-exists", action="store_true",
                   help="resume the sweep if its storage already holds it, else start it (for "
                        "retried jobs, e.g. a RayJob's backoffLimit)")
    p.add_argument("--storage-base", metavar="DIR",
                   help="directory a relative storage / data.cache_url is relative to (needed "
                        "for a relative one under `ray job submit`; default: the cwd)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a field, e.g. --set train.lr=3e-4 --set widths=[4096,16384]")
    p.add_argument("--address", help="Ray cluster address (default: RAY_ADDRESS or a local cluster)")
    p.add_argument("--check", action="store_true", help="validate the file and exit")
    p.add_argument("-v", "--verbose", action="count", default=0,
                   help="more output: -v adds Tune's progress, -vv its trial details and the "
                        "workers' logs (default: raysae's events and live progress only)")
    p.set_defaults(_run=run_sweep_command)


def run_sweep_command(args: argparse.Namespace) -> int:
    from raysae import errors
    from raysae.config import load_config
    from raysae.sweep.prepare import sweep_exists, validate
    from raysae.sweep.spec import SweepConfig

    try:
        config = load_config(SweepConfig, sweep_file(args.file), overrides=args.overrides)
        config = config.resolved(args.storage_base)
        validate(config)
        resume = args.resume or (args.resume_if_exists and sweep_exists(config))
    except Exception as e:  # noqa: BLE001 - errors.report re-raises what is a bug
        return errors.report("raysae sweep", e)
    if args.check:
        steps = sorted({config.steps_for(w) for w in config.widths})
        each = f"{steps[0]} steps each" if len(steps) == 1 else \
            "steps " + ", ".join(f"{config.steps_for(w)} at width {w}" for w in config.widths)
        trials = config.num_tune_trials()
        what = f"{trials} trials" if trials == config.num_trials() else \
            f"{config.num_trials()} SAEs in {trials} packed trials"
        print(f"{args.file}: ok ({what}, {each}, results in {config.sweep_url})")
        return 0
    from raysae.connect import connect
    from raysae.sweep.launch import run_sweep

    try:
        print(connect(args.address, log_to_driver=args.verbose > 1), flush=True)
        if resume:
            print(f"resuming the sweep at {config.sweep_url}", flush=True)
        result = run_sweep(config, resume=resume, verbose=args.verbose)
    except Exception as e:  # noqa: BLE001 - errors.report re-raises what is a bug
        return errors.report("raysae sweep", e)
    print()
    print(result.table)
    print(f"frontier: {result.plot_url}")
    failed = [r for r in result.results if r.error is not None]
    if failed:
        print(f"{len(failed)} trial(s) failed; `raysae sweep {args.file} --resume` retries them",
              file=sys.stderr)
        return errors.TRIALS
    return 0


def build_parser() -> tuple[argparse.ArgumentParser, dict[str, str]]:
    from raysae import __version__

    parser = argparse.ArgumentParser(prog="raysae", description="JumpReLU SAE sweeps on Ray")
    parser.add_argument("--version", action="version", version=f"raysae {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    _add_sweep(sub)
    unavailable = {}
    for name, module in PLUGINS.items():
        try:
            mod = importlib.import_module(module)
            mod.add_parser(sub).set_defaults(_run=mod.run)
        except Exception as e:  # a missing or broken plugin must not break `raysae sweep`
            unavailable[name] = f"{type(e).__name__}: {e}"
    return parser, unavailable


def _quiet_storage_loggers() -> None:
    """Storage clients log each retry with a traceback; the CLI reports failures in one line."""
    import logging

    for name in ("gcsfs", "google.auth", "google.auth._default", "s3fs", "aiobotocore"):
        logging.getLogger(name).setLevel(logging.CRITICAL)


def main(argv: list[str] | None = None) -> int:
    _quiet_storage_loggers()
    parser, unavailable = build_parser()
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in unavailable:
        print(f"raysae {argv[0]}: unavailable ({unavailable[argv[0]]})", file=sys.stderr)
        return 2
    args = parser.parse_args(argv)
    if not getattr(args, "_run", None):
        parser.print_help()
        return 2
    return int(args._run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
