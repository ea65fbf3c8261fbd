"""`raysae cache ...`: the command-line face of `raysae.activations.cache.build_cache`.

    raysae cache [job.yaml] [--input URL ...] [--output URL] [--site res:3 ...] [--model tiny]
                 [--set field=value ...] [--overwrite] [--address auto]

A YAML file holds a `CacheConfig` (field names as in raysae/activations/config.py); flags
override it, `--set` overrides anything (values parsed as YAML). raysae/cli.py wires this in
with ``add_parser(subparsers)`` and calls ``run(args)``; `main(argv)` runs it standalone
(``python -m raysae.activations.cli``).
"""

from __future__ import annotations

import argparse
import sys

import yaml

from raysae import storage
from raysae.config import ConfigError, apply_overrides, from_dict

_FLAGS = {"input": "inputs", "output": "output", "site": "sites", "model": "model",
          "context_length": "context_length", "batch_size": "batch_size", "dtype": "dtype",
          "rows_per_shard": "rows_per_shard", "max_tokens": "max_tokens", "workers": "workers"}


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "cache", help="cache LM activations (text or tokens in, shuffled shards + manifest out)",
        description="Run the Ray Data caching job; a complete cache made by the same config is reused.")
    _add_arguments(p)
    return p


def _add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", nargs="?", help="YAML file with a CacheConfig (any fsspec URL)")
    p.add_argument("--input", action="append", metavar="URL",
                   help="text/jsonl/parquet/.npy URL or glob, or 'python-stdlib' (repeatable)")
    p.add_argument("--output", metavar="URL", help="cache root; each site gets <output>/<kind>_<layer>")
    p.add_argument("--site", action="append", metavar="SITE",
                   help="res:L, attn:L, mlp:L, mlp_in:L or transcoder:L (repeatable)")
    p.add_argument("--model", help="'tiny', a Gemma 2 checkpoint dir URL, or random:<preset>")
    p.add_argument("--context-length", type=int)
    p.add_argument("--batch-size", type=int, help="sequences per LM forward")
    p.add_argument("--dtype", choices=["float32", "bfloat16"], help="row storage dtype")
    p.add_argument("--rows-per-shard", type=int, help="rows per shard = shuffle bucket")
    p.add_argument("--max-tokens", type=int)
    p.add_argument("--workers", type=int, help="LM actors (0 = one per GPU/TPU, else 1)")
    p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                   help="override any CacheConfig field (value parsed as YAML)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace a cache at the output that was made by a different config")
    p.add_argument("--address", help="Ray cluster address (default: start a local one)")


def load_config(args: argparse.Namespace):
    """The CacheConfig the arguments describe; errors name the file and field."""
    from raysae.activations.config import CacheConfig

    data = {}
    if args.config:
        try:
            with storage.open_url(args.config, "r") as f:
                data = yaml.safe_load(f) or {}
        except FileNotFoundError:
            raise ConfigError(f"{args.config}: file not found") from None
        except yaml.YAMLError as e:
            raise ConfigError(f"{args.config}: not valid YAML ({e})") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{args.config}: expected a mapping of CacheConfig fields")
    for flag, field in _FLAGS.items():
        value = getattr(args, flag, None)
        if value is not None:
            data[field] = value
    apply_overrides(data, args.set)
    try:
        return from_dict(CacheConfig, data)
    except ConfigError as e:
        raise ConfigError(f"{args.config}: {e}" if args.config else str(e)) from None


def run(args: argparse.Namespace) -> int:
    """Run the job; print one line per site and the summary. Returns the exit code."""
    from raysae.activations.cache import CacheError, build_cache
    from raysae.activations.sources import InputError

    try:
        config = load_config(args)
        if args.address:
            import ray

            ray.init(address=args.address)
        summary = build_cache(config, overwrite=args.overwrite)
    except (ConfigError, CacheError, InputError) as e:
        print(f"raysae cache: error: {e}", file=sys.stderr)
        return 2
    for key, url in summary.manifests.items():
        print(f"{key}\t{url}{'  (reused)' if key in summary.reused else ''}")
    if not config.progress:
        print(summary.line())
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="raysae cache")
    _add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
