"""`raysae sweep` config errors: one line naming the field, exit 2, before any Ray work."""

import subprocess
import sys

import pytest
import ray
import yaml

from raysae.activations.shards import Manifest, write_shard
from raysae.cli import main, sweep_file
from raysae.config import ConfigError
from raysae.sweep import load_sweep, param_space, validate
from raysae.synthetic import SparseDictionary

import numpy as np


def write_cache(url, site="res:1", d=32, shards=2, rows=2048):
    sd = SparseDictionary.random(d=d, n_features=64, active=3, seed=0)
    rng = np.random.default_rng(0)
    infos = [write_shard(url, i, sd.sample(rows, rng)) for i in range(shards)]
    Manifest(model="synthetic", site=site, layer=int(site.split(":")[1]), d=d, rows_per_shard=rows,
             total_rows=rows * shards, tokens=rows * shards, norm_scalar=1.3, shards=infos).save(url)
    return url


@pytest.fixture
def sweep_yaml(tmp_path):
    cache = write_cache(str(tmp_path / "cache"))
    spec = {"name": "s", "storage": str(tmp_path / "runs"), "model": "tiny", "sites": ["res:1"],
            "widths": [64, 128], "sparsity": {"grid": [0.001, 0.01]},
            "train": {"batch_size": 256}, "stream": {"batch_size": 256},
            "data": {"manifest": cache}}
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def run_cli(capsys, *args):
    code = main(["sweep", *map(str, args)])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("override, field", [
    ("colour=blue", "colour: unknown key"),
    ("train.colour=blue", "train.colour: unknown key"),
    ("sparsity.grid=[0.01,-0.5]", "sparsity.grid[1]"),
    ("train.sparsity_coefficient=-1", "train.sparsity_coefficient"),
    ("resources.model_axis=3", "widths[0]: 64 is not divisible by resources.model_axis=3"),
    ("data.manifest=/nonexistent/cache", "data.manifest"),
    ("data.manifest=null", "data: give data.manifest"),
    ("sites=[res:99]", "sites[0]"),
    ("sites=[bogus:1]", "sites[0]"),
    ("stream.batch_size=128", "stream.batch_size: must equal train.batch_size=256"),
    ("widths=[]", "widths"),
    ("resources.tpu_topology=2x2", "resources.tpu_topology"),
    ("storage=memory://runs", "storage: memory://runs is process-local"),
])
def test_bad_config_is_one_line_naming_the_field(capsys, sweep_yaml, override, field):
    code, out, err = run_cli(capsys, sweep_yaml, "--set", override)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert field in lines[0]
    assert not ray.is_initialized()  # nothing touched a cluster


def test_missing_file_and_bad_yaml(capsys, tmp_path):
    code, _, err = run_cli(capsys, tmp_path / "nope.yaml")
    assert code == 2 and "file not found" in err
    bad = tmp_path / "bad.yaml"
    bad.write_text("sites: [res:1\n")
    code, _, err = run_cli(capsys, bad)
    assert code == 2 and "not valid YAML" in err


def test_check_accepts_a_good_file_and_counts_trials(capsys, sweep_yaml):
    code, out, _ = run_cli(capsys, sweep_yaml, "--check", "--set", "tokens=25600")
    assert code == 0
    assert "4 trials, 100 steps each" in out


def test_resume_without_a_sweep_is_an_error(capsys, sweep_yaml):
    config = load_sweep(str(sweep_yaml))
    from raysae.sweep import run_sweep

    with pytest.raises(ConfigError, match="--resume: no sweep to resume"):
        run_sweep(config, resume=True)
    assert not ray.is_initialized()


def test_param_space_grid_and_distribution(sweep_yaml):
    config = load_sweep(str(sweep_yaml))
    space = param_space(config)
    assert space["width"] == {"grid_search": [64, 128]}
    assert space["sparsity_coefficient"] == {"grid_search": [0.001, 0.01]}
    config = load_sweep(str(sweep_yaml), ["sparsity={distribution: loguniform, low: 1e-4, high: 1e-1, num_samples: 5}"])
    assert config.num_trials() == 10
    lam = param_space(config)["sparsity_coefficient"]
    assert (lam.lower, lam.upper) == (1e-4, 1e-1)
    with pytest.raises(ConfigError, match="sparsity.low"):
        load_sweep(str(sweep_yaml), ["sparsity={distribution: loguniform, low: 0, high: 1}"])


def test_embedded_tiny_sweep_is_valid():
    config = load_sweep(sweep_file("tiny"))
    validate(config)
    assert config.num_trials() >= 6 and len(config.widths) >= 2 and len(config.sparsity.grid) >= 3


def test_console_script_entry_point(sweep_yaml):
    # `python -m raysae.cli` is what the `raysae` console script runs
    p = subprocess.run([sys.executable, "-m", "raysae.cli", "sweep", str(sweep_yaml), "--set", "foo=1"],
                       capture_output=True, text=True)
    assert p.returncode == 2
    assert p.stderr.strip().endswith("foo: unknown key (allowed: concurrency, data, eval, failure, "
                                     "final_eval, model, name, resources, seed, shared_stream, sites, "
                                     "sparsity, storage, stream, tokens, tokens_by_width, train, widths)")
    help_ = subprocess.run([sys.executable, "-m", "raysae.cli", "--help"], capture_output=True, text=True)
    assert "sweep" in help_.stdout and "cache" in help_.stdout and "eval" in help_.stdout


@pytest.mark.parametrize("name", ["gemma2-2b-res12", "gemma2-9b-res20-ladder", "gemma2-2b-all-layers"])
def test_gemma_presets_parse(name):
    config = load_sweep(sweep_file(f"sweeps/{name}.yaml").replace("sweeps/sweeps", "sweeps"))
    assert config.model.startswith("gs://") and config.data.text is not None
    assert min(config.steps_for(w) * config.train.batch_size for w in config.widths) > 4_000_000_000 - config.train.batch_size
