"""`raysae eval` (and `python -m raysae.evals`): evaluate one SAE file on one site of a model.

    raysae eval --sae gs://b/sae/params.npz --model tiny --site res:2 --text 'data/*.txt' --out runs/eval1
    raysae eval --sae runs/tc --site transcoder:1 --tokens toks.npy --num-sequences 256

Settings come from `--config eval.yaml` (an EvalConfig), then the flags, then `--set
field=value` (`raysae.config.load_config`). Writes eval.json, frequencies.npy and PNGs under
--out and prints the headline numbers. raysae/cli.py mounts this with `add_parser`.
"""

from __future__ import annotations

import argparse
import json
import sys

from raysae.config import load_config, set_help
from raysae.evals.config import EvalConfig
from raysae.lm.source import TINY

FLAGS = {  # flag dest -> EvalConfig field
    "num_sequences": "num_sequences", "context_length": "context_length", "batch_size": "batch_size",
}


def _configure(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    p.add_argument("--sae", required=True, help="params.npz (or a directory with one) or a SAELens dir; any fsspec URL")
    p.add_argument("--model", default=TINY, help="'tiny', a Hub id from the local HF cache (google/gemma-2-2b) or a "
                   "Gemma 2 checkpoint dir URL (another checkpoint than the SAE's = transfer eval)")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"],
                   help="the LM's weight dtype (default float32)")
    p.add_argument("--site", required=True, help="e.g. res:2, attn:0, mlp:3, or transcoder:1")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--text", action="append", metavar="URL",
                     help="text file, directory or glob (repeatable); .jsonl reads the 'text' field")
    src.add_argument("--tokens", metavar="URL", help=".npy int array: [N, T] rows or a 1-D stream")
    p.add_argument("--out", help="directory URL for eval.json, frequencies.npy and PNGs")
    p.add_argument("--config", help="YAML file with EvalConfig fields")
    p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE", help="override a config field")
    p.add_argument("--num-sequences", type=int, help="sequences to evaluate on (default 2048, the paper's)")
    p.add_argument("--context-length", type=int, help="tokens per sequence, BOS first (default 1024)")
    p.add_argument("--batch-size", type=int, help="sequences per LM forward")
    p.add_argument("--ablations", help="comma list of zero,mean, or 'none'")
    p.add_argument("--no-r-l0", action="store_true", help="skip r_L0 (saves a backward pass)")
    p.add_argument("--no-per-position", action="store_true", help="skip the per-position FVU / delta loss curves")
    p.add_argument("--no-pack", action="store_true", help="one document per row instead of packing")
    p.add_argument("--no-plots", action="store_true", help="write eval.json and frequencies.npy only (no PNG/SVG)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    return p


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register `eval` on an argparse subparsers object; the handler is `run`."""
    p = subparsers.add_parser("eval", help="evaluate an SAE: L0, FVU, delta LM loss, per position, "
                              "firing frequency, r_L0", description=__doc__,
                              epilog=set_help(EvalConfig),
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    return _configure(p)


def eval_config(args) -> EvalConfig:
    """The EvalConfig from --config, then the flags, then --set."""
    flags = {field: getattr(args, dest) for dest, field in FLAGS.items()}
    if args.ablations is not None:
        flags["ablations"] = [] if args.ablations == "none" else \
            [a.strip() for a in args.ablations.split(",") if a]
    for flag, field in (("no_r_l0", "r_l0"), ("no_per_position", "per_position"), ("no_pack", "pack"),
                        ("no_progress", "progress")):
        if getattr(args, flag):
            flags[field] = False
    return load_config(EvalConfig, args.config, flags, args.set)


def run(args) -> int:
    """Run `raysae eval` from parsed args; returns the exit code (errors print one line, code 2)."""
    from raysae.evals.suite import check_inputs, evaluate
    from raysae.evals.inputs import iter_texts, load_sae, read_tokens
    from raysae.evals.report import write_report
    from raysae.lm.api import load_lm
    from raysae.sites import SAESite

    from raysae import errors

    try:
        config = eval_config(args)
        sae = load_sae(args.sae)
        site = SAESite.parse(args.site)
        model = load_lm(args.model, args.dtype)
        check_inputs(sae, model.config, site, model_name=model.name)
        source = {"texts": iter_texts(args.text)} if args.text else {"tokens": read_tokens(args.tokens)}
        report = evaluate(sae, model, args.site, config=config, sae_name=args.sae, **source)
    except (FileNotFoundError, ValueError) as e:
        if errors.exit_code(e) is not None:
            return errors.report("raysae eval", e)
        print(f"raysae eval: error: {' '.join(str(e).split())}", file=sys.stderr)
        return errors.DATA  # an input the eval reads (texts, tokens) is unusable
    if args.out:
        for url in write_report(report, args.out, plots=not args.no_plots):
            print(f"wrote {url}", file=sys.stderr)
    print(json.dumps({"sae": args.sae, "model": report.model, "site": report.site, **report.metrics()}, indent=2))
    return 0


def main(argv=None) -> int:
    parser = _configure(argparse.ArgumentParser(prog="python -m raysae.evals", description=__doc__,
                                                epilog=set_help(EvalConfig),
                                                formatter_class=argparse.RawDescriptionHelpFormatter))
    return run(parser.parse_args(argv))
