"""`make demo`: the embedded tiny sweep (sweeps/tiny.yaml) end to end, on a local Ray cluster.

Caches the tiny Gemma 2's residual stream (layer 2) from this Python's standard library
(offline; reused on later runs), trains 3 λ × 2 widths = 6 JumpReLU SAEs from one shared
stream with Ray Tune, evaluates each with its SAE spliced into the LM, and prints the Pareto
frontier table and where the plot is. Each run gets a fresh sweep name under runs/; the
activation cache is shared across runs (runs/cache-tiny).

    python -m raysae.demo [--set key=value ...]     # same overrides as `raysae sweep`
"""

from __future__ import annotations

import sys
import time

from raysae.cli import main as cli_main


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    name = time.strftime("tiny-%Y%m%d-%H%M%S")
    return cli_main(["sweep", "tiny", "--set", f"name={name}",
                     "--set", "data.cache_url=runs/cache-tiny", *argv])


if __name__ == "__main__":
    sys.exit(main())
