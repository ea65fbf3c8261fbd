"""SAE quality on known dictionaries: raysae recipes vs SAELens at matched L0 on equal tokens.

Both systems train on the SAME rows (written once to .npy files under --cache), λ is swept per
system, every saved SAE (Gemma Scope npz layout, raw space) is evaluated on held-out rows by
`raysae.evals.dictionary` (numpy only, independent of the training code), and each system's
FVU, recovery, MCC and dead fraction are interpolated (in log L0) at L0 = 8, 16, 32.

    .venv/bin/python bench/quality.py                                  # issue problem, default systems
    .venv/bin/python bench/quality.py --problem realistic
    .venv/bin/python bench/quality.py --systems paper,paper:eps=0.05 --lambdas 0.003,0.01,0.03
    .venv/bin/python bench/quality.py --systems paper --steps 60000    # 10x tokens
    .venv/bin/python bench/quality.py --activations runs/cache-tiny/res_2 --steps 2000 --batch 512

`--activations URL` trains on real activations instead: the rows of a raysae activation cache
(any fsspec URL; `make demo` leaves the tiny LM's at runs/cache-tiny/res_2), its last rows
held out; with no known dictionary, only FVU, L0 and dead latents are scored.

A system is `saelens`, a recipe name from RECIPES, or `RECIPE:key=value,key=value` (TrainConfig
overrides, e.g. `paper:bandwidth=0.05,grad_clip_norm=1.0`; `norm=none` trains without C;
`lams=a/b/c` gives that system its own λ grid, e.g. `saelens;small-budget:lams=0.006/0.0055`).
Separate systems by "," (plain names) or by ";" (as soon as one has overrides).
SAELens runs in its own venv (--saelens-python, default .venv-saelens/bin/python) as a
subprocess; if that is absent its rows are skipped with a message. Every run is cached under
--cache/runs/<key>/ (params.npz + metrics.json), so re-running only trains what is new.
Results: a table on stdout and --out JSON (default runs/quality/<problem>.json).
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from raysae.config import to_dict  # noqa: E402
from raysae.evals.dictionary import dictionary_metrics, interpolate_at_l0, load_params  # noqa: E402
from raysae.synthetic import DictionaryConfig, KnownDictionary  # noqa: E402

PROBLEMS = {
    # The problem: 512 unit-norm features in R^64, ~8 active, magnitudes U[0.5, 2].
    "issue": DictionaryConfig(d=64, n_features=512, mean_active=8.0, magnitude_low=0.5,
                              magnitude_high=2.0, seed=0),
    # Realistic structure: power-law frequencies, per-feature scale spread, correlated pairs,
    # parent -> child features, additive noise.
    "realistic": DictionaryConfig(d=64, n_features=512, mean_active=8.0, frequency_exponent=1.0,
                                  max_frequency=0.5, magnitude_low=0.5, magnitude_high=2.0,
                                  feature_scale_spread=0.5, correlated_fraction=0.2,
                                  correlation=0.5, hierarchical_fraction=0.1, noise_std=0.02,
                                  seed=1),
}
TARGETS = (8, 16, 32)
HELDOUT_ROWS = 16384

# Recipes as TrainConfig overrides on top of the bench's budget (width, batch, steps).
# "paper" is the Gemma Scope recipe with the small-budget lr and warmups.
RECIPES: dict[str, dict] = {
    "paper": dict(lr=3e-3, lr_warmup_steps=100, sparsity_warmup_steps=1000),
    # SAELens 6.54's JumpReLU training, expressed in raysae's knobs (raw inputs, no C).
    "saelens-like": dict(norm="none", bandwidth=0.05, threshold_init=0.01, grad_clip_norm=1.0,
                         decoder_init_norm=0.1, decoder_unit_norm=False,
                         project_decoder_grads=False, adam_b1=0.9, lr=1e-3, lr_warmup_steps=0,
                         sparsity_warmup_steps=0),
    # Candidate: the paper's recipe (C, ε, θ₀, β₁ = 0, no clip) with SAELens's small init, a
    # free decoder norm and no warmups.
    "small-init": dict(lr=3e-3, lr_warmup_steps=0, sparsity_warmup_steps=0,
                       decoder_init_norm=0.1, decoder_unit_norm=False),
}
# Recipes shipped in raysae.train.recipes ("gemma-scope", "small-budget") are TrainConfig's
# own `recipe` (resolved for the run's step count by TrainConfig).
# λ grids per problem (units of x/C for raysae; raw units for SAELens, whose inputs are not
# normalised), with points close to L0 8, 16 and 32 and in between.
LAMBDAS = {
    "saelens": [0.06, 0.08, 0.11, 0.13, 0.15, 0.16, 0.17, 0.2],
    "paper": [0.002, 0.004, 0.008, 0.016, 0.032, 0.064],
    "small-budget": [0.02, 0.015, 0.012, 0.009, 0.008, 0.0075, 0.0072, 0.007, 0.0065, 0.006,
                     0.0055, 0.005, 0.0045, 0.004],
    "default": [0.002, 0.004, 0.008, 0.016, 0.032, 0.064],
}
LAMBDAS_BY_PROBLEM = {
    "issue": LAMBDAS,
    "realistic": {**LAMBDAS,
                  "saelens": [0.2, 0.13, 0.1, 0.09, 0.07, 0.06, 0.05, 0.025],
                  "small-budget": [0.015, 0.01, 0.007, 0.005, 0.0035, 0.0025, 0.002, 0.0015]},
}

# ---------------------------------------------------------------------------------------------
# The ONE place that calls raysae's training API (adapt here when the API changes).
# ---------------------------------------------------------------------------------------------

def train_raysae(config, rows, *, norm_scalar: float | None = None):
    """Train on rows[i·B:(i+1)·B] for i = 0..steps−1; return folded params (numpy dict).

    `rows` is anything with len() and row slicing (an array, a memmap, `GeneratedRows`).
    `norm_scalar` None estimates C from the first 16,384 rows (the recipe); 1.0 disables it.
    """
    from raysae.train import estimate_norm_scalar, train

    B = config.batch_size
    if norm_scalar is None:
        norm_scalar = estimate_norm_scalar(np.asarray(rows[:16384]))

    def data(start):
        for i in range(start, config.steps):
            yield np.asarray(rows[i * B:(i + 1) * B], np.float32)

    res = train(config, data, norm_scalar=norm_scalar)
    return {k: np.asarray(getattr(res.folded, k), np.float32)
            for k in ("W_enc", "W_dec", "b_enc", "b_dec", "threshold")}, norm_scalar


class GeneratedRows:
    """Rows of a KnownDictionary's train split generated on demand (for budgets too big to
    store): rows[i·B:(i+1)·B] is batch i, identical to what `write_rows` stores."""

    def __init__(self, kd: KnownDictionary, n: int, batch_rows: int):
        self.kd, self.n, self.B = kd, n, batch_rows

    def __len__(self):
        return self.n

    def __getitem__(self, s):
        if not isinstance(s, slice) or (s.start or 0) % self.B:
            raise TypeError("GeneratedRows supports batch-aligned slices only")
        lo, hi = s.start or 0, min(s.stop, self.n)
        return self.kd.rows(hi - lo, batch_rows=self.B, start=lo // self.B)


# ---------------------------------------------------------------------------------------------

def problem_key(cfg: DictionaryConfig) -> str:
    return hashlib.sha1(json.dumps(dataclasses.asdict(cfg), sort_keys=True).encode()).hexdigest()[:10]


def write_rows(kd: KnownDictionary, path: Path, n: int, batch_rows: int, split: str) -> Path:
    """Write n rows of `split` to a .npy (batch i = rows[i·B:(i+1)·B]) unless already there."""
    if path.exists() and np.load(path, mmap_mode="r").shape == (n, kd.d):
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    # Per-process temp name: two bench processes started at once both write, and the second
    # os.replace lands the same deterministic rows.
    tmp = path.with_suffix(f".{os.getpid()}.tmp.npy")
    out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(n, kd.d))
    for k, lo in enumerate(range(0, n, batch_rows)):
        out[lo:lo + batch_rows] = kd.batch(k, batch_rows, split=split)[:n - lo]
    out.flush()
    del out
    os.replace(tmp, path)
    return path


def activation_rows(url: str, cache: Path, n_train: int) -> tuple[Path, np.ndarray, dict]:
    """Train rows (.npy of n_train rows, cycling through the cache's rows if it has fewer) and
    held-out rows (the cache's last HELDOUT_ROWS, never trained on) of an activation cache.

    Returns:
        (train .npy path, held-out rows, the source's identity for the run keys).
    Raises:
        SystemExit naming the URL if it holds no cache or too few rows.
    """
    from raysae.data.shards import Manifest, read_shard

    try:
        manifest = Manifest.load(url)
    except (FileNotFoundError, ValueError) as e:
        raise SystemExit(f"--activations {url}: not a raysae activation cache ({e})") from None
    if manifest.parts != ["x"] or manifest.total_rows < 2 * HELDOUT_ROWS:
        raise SystemExit(f"--activations {url}: needs an SAE cache (parts ['x']) with at least "
                         f"{2 * HELDOUT_ROWS} rows (has {manifest.parts}, {manifest.total_rows})")
    rows = np.concatenate([read_shard(url, manifest, info) for info in manifest.shards])
    source = {"activations": url, "shards_sha256": [i.sha256 for i in manifest.shards]}
    digest = hashlib.sha1(json.dumps(source, sort_keys=True).encode()).hexdigest()[:10]
    path = cache / "data" / f"activations-{digest}" / f"train-{n_train}.npy"
    train = rows[:-HELDOUT_ROWS]
    if not (path.exists() and np.load(path, mmap_mode="r").shape == (n_train, manifest.d)):
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp.npy")
        np.save(tmp, train[np.arange(n_train) % len(train)].astype(np.float32))
        os.replace(tmp, path)
    return path, np.asarray(rows[-HELDOUT_ROWS:], np.float32), source


def parse_system(spec: str) -> tuple[str, dict]:
    """'paper:bandwidth=0.05,norm=none' -> ('paper', {'bandwidth': 0.05, 'norm': 'none'})
    (a `lams=` item is the system's λ grid, not an override: see `system_lambdas`)."""
    name, _, rest = spec.partition(":")
    over = {}
    for item in filter(None, rest.split(",")):
        k, _, v = item.partition("=")
        if k == "norm":  # "none" here is the word, not None (None would mean "train with C")
            over[k] = v
        elif k != "lams":
            over[k] = _value(v)
    return name, over


def system_lambdas(spec: str, every: str | None, problem: str = "issue") -> list[float]:
    """A system's λ grid: its own `lams=a/b/c`, else --lambdas (`every`), else the problem's
    grid in LAMBDAS_BY_PROBLEM."""
    name, _, rest = spec.partition(":")
    own = [v.partition("=")[2] for v in rest.split(",") if v.startswith("lams=")]
    if own:
        return [float(v) for v in own[-1].split("/")]
    if every:
        return [float(v) for v in every.split(",")]
    grids = LAMBDAS_BY_PROBLEM.get(problem, LAMBDAS)
    return grids.get(spec, grids.get(name, grids["default"]))


def _value(v: str):
    if v.lower() in ("none", "null"):
        return None
    if v.lower() in ("true", "false"):
        return v.lower() == "true"
    for t in (int, float):
        try:
            return t(v)
        except ValueError:
            pass
    return v


def recipe_fields(name: str, steps: int) -> dict:
    from raysae.train.recipes import RECIPES as SHIPPED

    if name in RECIPES:
        return dict(RECIPES[name])
    if name in SHIPPED:
        return {"recipe": name}
    raise SystemExit(f"unknown recipe {name!r} (known: {', '.join(RECIPES)}, "
                     f"{', '.join(SHIPPED)}, saelens)")


def raysae_config(name: str, over: dict, *, lam: float, width: int, batch: int, steps: int,
                  seed: int):
    from raysae.train import TrainConfig

    fields = {**recipe_fields(name, steps), **over}
    fields.pop("norm", None)
    fields.update(width=width, batch_size=batch, steps=steps, sparsity_coefficient=lam,
                  seed=seed, log_every=max(1, steps // 10), checkpoint_every=10**9)
    return TrainConfig(**fields)


def run_one(spec: str, lam: float, *, problem: str, args, train_npy: Path, heldout: np.ndarray,
            kd: KnownDictionary | None, source: dict) -> dict | None:
    """Train (or reuse from the cache) and score one system at one λ.

    `kd` is the known dictionary (None for real activations: no recovery metrics, and the
    stored rows must cover the budget); `source` identifies the rows in the cache key."""
    name, over = parse_system(spec)
    steps = args.steps
    key_obj = {"problem": source, "system": name, "over": over,
               "lam": lam, "steps": steps, "batch": args.batch, "width": args.width,
               "seed": args.seed}
    if name != "saelens":  # key on every effective value, so editing a recipe retrains
        cfg = raysae_config(name, over, lam=lam, width=args.width, batch=args.batch,
                            steps=steps, seed=args.seed)
        norm = over.get("norm", recipe_fields(name, steps).get("norm", "C"))
        key_obj = {"problem": key_obj["problem"], "config": to_dict(cfg), "norm": norm}
    key_src = json.dumps(key_obj, sort_keys=True)
    key = hashlib.sha1(key_src.encode()).hexdigest()[:12]
    run_dir = Path(args.cache) / "runs" / key
    metrics_path = run_dir / "metrics.json"
    if metrics_path.exists() and not args.force:
        return json.loads(metrics_path.read_text())
    run_dir.mkdir(parents=True, exist_ok=True)
    npz = run_dir / "params.npz"
    t0 = time.perf_counter()
    info: dict = {}
    if npz.exists() and not args.force and name != "saelens":
        info = {"config": to_dict(cfg), "params": "reused from an earlier run of this key"}
    elif name == "saelens":
        py = Path(args.saelens_python)
        if not py.exists():
            return None
        cmd = ["nice", "-n", "10", str(py), str(ROOT / "bench" / "quality_saelens.py"),
               "--train", str(train_npy), "--steps", str(steps), "--batch", str(args.batch),
               "--width", str(args.width), "--l0-coefficient", str(lam), "--seed", str(args.seed),
               "--out", str(npz)]
        for k, v in over.items():
            cmd += [f"--{k.replace('_', '-')}", str(v)]
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL,
                       stderr=None if args.verbose else subprocess.DEVNULL)
        info = json.loads(Path(str(npz) + ".json").read_text())
    else:
        n_rows = steps * args.batch
        rows = (np.load(train_npy, mmap_mode="r") if n_rows <= len(np.load(train_npy, mmap_mode="r"))
                else GeneratedRows(kd, n_rows, args.batch))
        params, C = train_raysae(cfg, rows, norm_scalar=1.0 if norm == "none" else None)
        np.savez(npz, **params)
        info = {"norm_scalar": C, "config": to_dict(cfg)}
    seconds = time.perf_counter() - t0
    m = dictionary_metrics(load_params(str(npz)), heldout, None if kd is None else kd.features)
    out = {"system": spec, "lambda": lam, "problem": problem, "steps": steps, "batch": args.batch,
           "tokens": steps * args.batch, "seconds": seconds, "key": key, **m, "info": info}
    metrics_path.write_text(json.dumps(out, indent=1))
    return out


def fmt(v, pct=False):
    if v is None:
        return "  —  "
    return f"{100 * v:5.1f}%" if pct else f"{v:.3f}"


def report(results: dict[str, list[dict]], targets=TARGETS) -> dict:
    summary = {}
    print(f"\n{'system':44s} " + " ".join(f"| L0={t:<2d} FVU   rec    MCC   dead " for t in targets))
    for spec, pts in results.items():
        interp = interpolate_at_l0(pts, targets)
        summary[spec] = {str(t): v for t, v in interp.items()}
        cells = []
        for t in targets:
            r = interp[t]
            cells.append("|   (out of range)            " if r is None else
                         f"| {fmt(r['fvu'])} {fmt(r['recovery'], True)} {fmt(r['mcc'])} "
                         f"{fmt(r['dead_fraction'], True)}")
        print(f"{spec[:44]:44s} " + " ".join(cells))
    return summary


def versus(results: dict[str, list[dict]], reference: str = "saelens") -> dict:
    """Every point of every other system against `reference` interpolated at that point's L0
    (the comparison at every matched L0, not only at TARGETS); {} without the reference.
    The reference is the system of that name with or without its own grid (`saelens:lams=...`)."""
    reference = next((s for s in results if parse_system(s)[0] == reference), None)
    if reference is None:
        return {}
    out = {}
    print(f"\neach point vs {reference} at the same L0 (FVU difference < 0: better)")
    for spec, pts in results.items():
        if spec == reference:
            continue
        ref = interpolate_at_l0(results[reference], [q["l0"] for q in pts], keys=("fvu",))
        rows = []
        for q in sorted(pts, key=lambda q: q["l0"]):
            r = ref[q["l0"]]
            d = None if r is None else q["fvu"] - r["fvu"]
            rows.append({"lambda": q["lambda"], "l0": q["l0"], "fvu": q["fvu"],
                         "reference_fvu": None if r is None else r["fvu"], "difference": d})
            print(f"  {spec[:40]:40s} λ={q['lambda']:<8g} L0={q['l0']:6.2f} FVU={q['fvu']:.4f} "
                  + ("(out of the reference's range)" if r is None else
                     f"{reference}={r['fvu']:.4f} diff={d:+.4f}"))
        out[spec] = rows
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--problem", default="issue", choices=sorted(PROBLEMS))
    ap.add_argument("--activations", default=None,
                    help="URL of a raysae activation cache: train on its rows instead")
    ap.add_argument("--systems", default="saelens,paper,small-budget")
    ap.add_argument("--lambdas", default=None, help="comma list for every system (else LAMBDAS)")
    ap.add_argument("--steps", type=int, default=6000)
    ap.add_argument("--batch", type=int, default=1024)
    ap.add_argument("--width", type=int, default=1024)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cache", default=str(ROOT / "runs" / "quality"))
    ap.add_argument("--saelens-python", default=str(ROOT / ".venv-saelens" / "bin" / "python"))
    ap.add_argument("--out", default=None)
    ap.add_argument("--force", action="store_true", help="retrain even if cached")
    ap.add_argument("--verbose", action="store_true")
    args = ap.parse_args(argv)

    if args.activations:
        kd, args.problem = None, "activations"
        train_npy, heldout, source = activation_rows(args.activations, Path(args.cache),
                                                     args.steps * args.batch)
    else:
        kd = KnownDictionary(PROBLEMS[args.problem])
        source = dataclasses.asdict(kd.config)
        pdir = Path(args.cache) / "data" / f"{args.problem}-{problem_key(kd.config)}"
        stored_steps = min(args.steps, 6000)  # bigger budgets are generated on the fly
        train_npy = write_rows(kd, pdir / f"train-{args.batch}x{stored_steps}.npy",
                               stored_steps * args.batch, args.batch, "train")
        heldout = np.load(write_rows(kd, pdir / "heldout.npy", HELDOUT_ROWS, 2048, "heldout"))

    results: dict[str, list[dict]] = {}
    specs = (args.systems.split(";") if ";" in args.systems or ":" in args.systems
             else args.systems.split(","))
    for spec in specs:
        name, _ = parse_system(spec)
        lams = system_lambdas(spec, args.lambdas, args.problem)
        if name == "saelens" and not Path(args.saelens_python).exists():
            print(f"[skip] saelens: no SAELens venv at {args.saelens_python} (make one: python3 -m "
                  "venv .venv-saelens && .venv-saelens/bin/pip install torch==2.13.0 && "
                  ".venv-saelens/bin/pip install sae-lens)", file=sys.stderr)
            continue
        pts = []
        for lam in lams:
            r = run_one(spec, lam, problem=args.problem, args=args, train_npy=train_npy,
                        heldout=heldout, kd=kd, source=source)
            if r is None:
                continue
            pts.append(r)
            known = "" if r["recovery"] is None else \
                f"rec={100 * r['recovery']:5.1f}% MCC={r['mcc']:.3f} "
            print(f"  {spec:40s} λ={lam:<8g} L0={r['l0']:6.2f} FVU={r['fvu']:.3f} {known}"
                  f"dead={r['dead']:4d} ({r['seconds']:.0f}s)", flush=True)
        results[spec] = pts
    summary = report(results)
    pointwise = versus(results)
    out = Path(args.out or Path(args.cache) / f"{args.problem}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"problem": args.problem, "config": source,
                               "steps": args.steps, "batch": args.batch, "width": args.width,
                               "targets": list(TARGETS), "interpolated": summary,
                               "versus_saelens": pointwise, "runs": results}, indent=1))
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
