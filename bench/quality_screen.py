"""Fast ablation screen for bench/quality.py: a smaller known dictionary (128 features in R^32,
4 active, U[0.5, 2]), 256-wide SAEs, STEPS × 256 rows, every variant a λ sweep interpolated at
L0 = 4 (the true L0), 8 and 16. Same system specs, adapter (`train_raysae`) and metrics as the
bench; nothing is cached.

    .venv/bin/python bench/quality_screen.py 2000 "paper:lams=0.01/0.02/0.03/0.05/0.08" \\
        "paper:grad_clip_norm=1.0,lams=0.01/0.02/0.03/0.05/0.08" "small-budget:lams=0.003/0.005/0.008/0.012/0.02"

A variant is RECIPE:key=value,...,lams=a/b/c (TrainConfig overrides; norm=none trains without C).
"""

import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from quality import (GeneratedRows, parse_system, recipe_fields, system_lambdas,  # noqa: E402
                     train_raysae)
from raysae.evals.dictionary import dictionary_metrics, interpolate_at_l0  # noqa: E402
from raysae.synthetic import DictionaryConfig, KnownDictionary  # noqa: E402
from raysae.train import TrainConfig  # noqa: E402

PROBLEM = DictionaryConfig(d=32, n_features=128, mean_active=4, magnitude_low=0.5,
                           magnitude_high=2.0, seed=5)
BATCH, WIDTH, TARGETS = 256, 256, (4, 8, 16)


def screen(spec: str, steps: int, rows, heldout, kd: KnownDictionary) -> list[dict]:
    """Train and score one variant at each λ of its grid; print a line per λ and the summary."""
    name, over = parse_system(spec)
    fields = {**recipe_fields(name, steps), **over}
    norm = fields.pop("norm", "C")
    # a shipped recipe derives its own warmups; a bench recipe's are capped to the budget
    caps = {k: min(fields[k], cap) for k, cap in
            (("sparsity_warmup_steps", steps), ("lr_warmup_steps", steps // 2)) if k in fields}
    pts = []
    for lam in system_lambdas(spec, None):
        cfg = TrainConfig(**{**fields, "width": WIDTH, "batch_size": BATCH, "steps": steps,
                             "sparsity_coefficient": lam, "log_every": steps,
                             "checkpoint_every": 10**9, **caps})
        t0 = time.time()
        params, _ = train_raysae(cfg, rows, norm_scalar=1.0 if norm == "none" else None)
        m = dictionary_metrics(params, heldout, kd.features)
        pts.append(m)
        print(f"{spec:60s} λ={lam:<7g} L0={m['l0']:5.2f} FVU={m['fvu']:.3f} "
              f"rec={m['recovery'] * 100:5.1f}% mcc={m['mcc']:.3f} dead={m['dead']} "
              f"{time.time() - t0:.0f}s", flush=True)
    cells = ("--" if r is None else
             f"FVU {r['fvu']:.3f} rec {100 * r['recovery']:4.1f}% mcc {r['mcc']:.3f}"
             for r in interpolate_at_l0(pts, TARGETS).values())
    print(f"  >> {spec[:70]:70s} " + "  ".join(f"L0={t}: {c}" for t, c in zip(TARGETS, cells)),
          flush=True)
    return pts


def main(argv: list[str]) -> None:
    steps = int(argv[0])
    kd = KnownDictionary(PROBLEM)
    rows = (kd.rows(steps * BATCH, batch_rows=BATCH) if steps <= 20000
            else GeneratedRows(kd, steps * BATCH, BATCH))
    heldout = kd.rows(8192, batch_rows=2048, split="heldout")
    for spec in argv[1:]:
        screen(spec, steps, rows, heldout, kd)


if __name__ == "__main__":
    main(sys.argv[1:])
