"""`raysae cache ...`: the command-line face of `raysae.activations.cache.build_cache`.

    raysae cache [job.yaml] [--input URL ...] [--output URL] [--site res:3 ...] [--model tiny]
                 [--set field=value ...] [--overwrite] [--address auto]

A YAML file holds a `CacheConfig`; the flags override it and `--set` overrides anything
(`raysae.config.load_config`). raysae/cli.py mounts this with ``add_parser(subparsers)``.
"""

from __future__ import annotations

import argparse
import os
import sys

from raysae.activations.config import CacheConfig
from raysae.config import load_config, set_help

_FLAGS = {"input": "inputs", "output": "output", "site": "sites", "model": "model",
          "context_length": "context_length", "batch_size": "batch_size", "dtype": "dtype",
          "rows_per_shard": "rows_per_shard", "max_tokens": "max_tokens", "workers": "workers"}


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "cache", help="cache LM activations (text or tokens in, shuffled shards + manifest out)",
        description="Run the Ray Data caching job; a complete cache made by the same config is "
                    "reused. Settings: the YAML file, then the flags, then --set.",
        epilog=set_help(CacheConfig), formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_arguments(p)
    return p


def _add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", nargs="?", help="YAML file with a CacheConfig (any fsspec URL)")
    p.add_argument("--input", action="append", metavar="URL",
                   help="text/jsonl/parquet/.npy URL or glob, or 'python-stdlib' (repeatable)")
    p.add_argument("--output", metavar="URL", help="cache root; each site gets <output>/<site>, e.g. res_3")
    p.add_argument("--site", action="append", metavar="SITE",
                   help="res:L, attn:L, mlp:L, mlp_in:L or transcoder:L (repeatable)")
    p.add_argument("--model", help="'tiny', a Hub id from the local HF cache (google/gemma-2-2b), "
                   "a Gemma 2 checkpoint dir URL, or random:<preset>")
    p.add_argument("--context-length", type=int, help="tokens per sequence, BOS first (default 1024)")
    p.add_argument("--batch-size", type=int, help="sequences per LM forward")
    p.add_argument("--dtype", choices=["float32", "bfloat16"], help="row storage dtype")
    p.add_argument("--rows-per-shard", type=int, help="rows per shard = shuffle bucket")
    p.add_argument("--max-tokens", type=int, help="cache at most this many tokens (default: all)")
    p.add_argument("--workers", type=int, help="LM actors (0 = one per GPU/TPU, else 1)")
    p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                   help="override any CacheConfig field (value parsed as YAML)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace a cache at the output that was made by a different config")
    p.add_argument("--address", help="Ray cluster address (default: RAY_ADDRESS, else a private "
                                     "local cluster)")


def cache_config(args: argparse.Namespace) -> CacheConfig:
    """The CacheConfig the arguments describe; errors name the file and field."""
    flags = {field: getattr(args, flag, None) for flag, field in _FLAGS.items()}
    return load_config(CacheConfig, args.config, flags, args.set)


def run(args: argparse.Namespace) -> int:
    """Run the job; print one line per site and the summary. Returns the exit code."""
    from raysae import errors
    from raysae.activations.cache import build_cache

    try:
        config = cache_config(args)
        if args.address:  # the job connects once its inputs and sites check out
            os.environ["RAY_ADDRESS"] = args.address
        summary = build_cache(config, overwrite=args.overwrite)
    except Exception as e:  # noqa: BLE001 - errors.report re-raises what is a bug
        return errors.report("raysae cache", e)
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
