"""The `raysae` command line: --version, help on every flag, the example cache job."""

import argparse
import os
import subprocess
import sys

from raysae import __version__
from raysae.activations.cli import cache_config
from raysae.activations.config import CacheConfig
from raysae.cli import build_parser

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _actions(parser, path=("raysae",)):
    """(command path, action) for every action of `parser` and its subcommands."""
    for a in parser._actions:
        if isinstance(a, argparse._SubParsersAction):
            for name, sub in a.choices.items():
                yield from _actions(sub, path + (name,))
        else:
            yield path, a


def test_every_flag_has_help():
    parser, unavailable = build_parser()
    assert unavailable == {}
    seen = {path for path, _ in _actions(parser)}
    assert {("raysae", "sweep"), ("raysae", "cache"), ("raysae", "eval")} <= seen
    missing = [f"{' '.join(path)} {'/'.join(a.option_strings) or a.dest}" for path, a in _actions(parser)
               if not isinstance(a, argparse._HelpAction) and not (a.help or "").strip()]
    assert missing == []


def test_version():
    out = subprocess.run([sys.executable, "-m", "raysae.cli", "--version"], capture_output=True, text=True,
                         cwd=ROOT, env={**os.environ, "PYTHONPATH": ROOT})
    assert out.returncode == 0 and out.stdout.strip() == f"raysae {__version__}"


def test_example_cache_job_parses_with_the_real_loader():
    parser, _ = build_parser()
    job = os.path.join(ROOT, "examples", "cache-job.yaml")
    config = cache_config(parser.parse_args(["cache", job]))
    assert isinstance(config, CacheConfig)
    assert config.model == "google/gemma-2-2b" and config.sites == ["res:12", "transcoder:12"]
    assert config.context_length == 1024 and config.dtype == "bfloat16"
    # the offline variant its comment gives
    config = cache_config(parser.parse_args(["cache", job, "--set", "model=tiny", "--set", "inputs=[python-stdlib]",
                                             "--set", "output=runs/cache", "--set", "sites=[res:2]",
                                             "--max-tokens", "400000"]))
    assert (config.model, config.inputs, config.sites, config.max_tokens) == \
        ("tiny", ["python-stdlib"], ["res:2"], 400000)
    assert "examples/cache-job.yaml" in open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()
