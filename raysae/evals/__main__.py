"""`python -m raysae.evals --sae ... --site ...`: the `raysae eval` command without the top-level CLI."""

import sys

from raysae.evals.cli import main

sys.exit(main())
