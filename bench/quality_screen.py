"""Fast ablation screen for bench/quality.py: a smaller known dictionary (128 features in R^32,
4 active, U[0.5, 2]), 256-wide SAEs, STEPS × 256 rows, every variant a λ sweep interpolated at
L0 = 4 (the true L0), 8 and 16. Same adapter (`train_raysae`) and metrics as the bench.

    .venv/bin/python bench/quality_screen.py 2000 "paper:lams=0.01/0.02/0.03/0.05/0.08" \
        "paper:grad_clip_norm=1.0,lams=0.01/0.02/0.03/0.05/0.08" "small-budget:lams=0.003/0.005/0.008/0.012/0.02"

A variant is RECIPE:key=value,...,lams=a/b/c (TrainConfig overrides; norm=none trains without C).
"""
import sys, time, json, numpy as np
HERE = __import__("pathlib").Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent)); sys.path.insert(0, str(HERE))
from raysae.synthetic import DictionaryConfig, KnownDictionary
from raysae.evals.dictionary import dictionary_metrics
from quality import train_raysae, RECIPES
from raysae.evals.dictionary import interpolate_at_l0
from raysae.train import TrainConfig
kd = KnownDictionary(DictionaryConfig(d=32, n_features=128, mean_active=4, magnitude_low=0.5, magnitude_high=2.0, seed=5))
steps, B, W = int(sys.argv[1]), 256, 256
from quality import GeneratedRows
rows = kd.rows(steps * B, batch_rows=B) if steps <= 20000 else GeneratedRows(kd, steps * B, B)
held = kd.rows(8192, batch_rows=2048, split="heldout")
for spec in sys.argv[2:]:
    name, _, rest = spec.partition(":")
    lams = None
    over = {}
    for it in filter(None, rest.split(",")):
        k, v = it.split("=")
        if k == "lams": lams = [float(a) for a in v.split("/")]; continue
        over[k] = None if v == "none" and k != "norm" else (v if k == "norm" else (v == "true" if v in ("true","false") else float(v) if "." in v or "e" in v else int(v)))
    from quality import recipe_fields
    f = {**recipe_fields(name, steps), **over}; norm = f.pop("norm", "C")
    pts = []
    for lam in lams:
        caps = {k: min(f[k], cap) for k, cap in (("sparsity_warmup_steps", steps), ("lr_warmup_steps", steps // 2)) if k in f}  # a shipped recipe derives its own
        cfg = TrainConfig(**{**f, "width": W, "batch_size": B, "steps": steps, "sparsity_coefficient": lam, "log_every": steps, "checkpoint_every": 10**9, **caps})
        t = time.time(); p, C = train_raysae(cfg, rows, norm_scalar=1.0 if norm == "none" else None)
        m = dictionary_metrics(p, held, kd.features); pts.append(m)
        print(f"{spec:60s} λ={lam:<7g} L0={m['l0']:5.2f} FVU={m['fvu']:.3f} rec={m['recovery']*100:5.1f}% mcc={m['mcc']:.3f} dead={m['dead']} {time.time()-t:.0f}s", flush=True)
    it = interpolate_at_l0(pts, (4, 8, 16))
    print(f"  >> {spec[:70]:70s} " + "  ".join(f"L0={t}: " + ("--" if r is None else f"FVU {r['fvu']:.3f} rec {100*r['recovery']:4.1f}% mcc {r['mcc']:.3f}") for t, r in it.items()), flush=True)
