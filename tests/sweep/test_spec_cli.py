"""The sweep schema and `raysae sweep` errors: one line naming the field, exit 2, before any
Ray work; relative paths resolved; presets parse."""

import os
import subprocess
import sys

import pytest
import ray
import yaml

from raysae import storage
from raysae.cli import main, sweep_file
from raysae.config import ConfigError, from_dict
from raysae.sweep import SweepConfig, load_sweep
from raysae.sweep.launch import param_space
from raysae.sweep.prepare import validate
from tests.helpers import write_cache


@pytest.fixture
def sweep_yaml(tmp_path):
    cache = write_cache(str(tmp_path / "cache"))
    spec = {"name": "s", "storage": str(tmp_path / "runs"), "model": "tiny", "sites": ["res:1"],
            "widths": [64, 128], "sparsity": {"grid": [0.001, 0.01]},
            "train": {"batch_size": 256}, "data": {"manifest": cache}}
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
    ("stream.batch_size=128", "stream.batch_size: unknown key"),
    ("data.cache.context_length=1", "data.cache.context_length: must be >= 2"),
    ("data.cache.colour=1", "data.cache.colour: unknown key"),
    ("widths=[", "--set widths: not valid YAML"),
    ("widths=[]", "widths"),
    ("widths=[1000000000000]", "widths[0]: 1000000000000 latents at d=128 need"),
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
    empty = tmp_path / "empty.yaml"
    empty.write_text("# nothing yet\n")
    code, _, err = run_cli(capsys, empty)
    assert code == 2 and "empty.yaml: the file is empty" in err
    twice = tmp_path / "twice.yaml"
    twice.write_text("name: a\nwidths: [64]\nname: b\n")
    code, _, err = run_cli(capsys, twice)
    assert code == 2 and "twice.yaml: line 3: key 'name' is given twice" in err


def test_check_accepts_a_good_file_and_counts_trials(capsys, sweep_yaml):
    code, out, _ = run_cli(capsys, sweep_yaml, "--check", "--set", "tokens=25600")
    assert code == 0
    assert "4 trials, 100 steps each" in out
    code, out, _ = run_cli(capsys, sweep_yaml, "--check", "--set", "tokens=25600", "--set", "pack=2")
    assert code == 0 and "4 SAEs in 2 packed trials, 100 steps each" in out


def test_resume_without_a_sweep_is_an_error(capsys, sweep_yaml):
    config = load_sweep(str(sweep_yaml))
    from raysae.sweep.launch import run_sweep

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


def test_pack_groups_grid_lambdas_per_trial_and_leaves_sampled_points_alone(sweep_yaml):
    from raysae.sweep.trainable import members_of, trial_key, trial_name

    grid = "sparsity={grid: [0.001, 0.003, 0.01, 0.03, 0.1]}"
    config = load_sweep(str(sweep_yaml), [grid, "pack=2"])
    assert config.lambda_packs() == [[0.001, 0.003], [0.01, 0.03], [0.1]]
    assert config.num_trials() == 10 and config.num_tune_trials() == 6  # 2 widths x 3 packs
    space = param_space(config)
    assert "sparsity_coefficient" not in space
    assert space["sparsity_coefficients"] == {"grid_search": [[0.001, 0.003], [0.01, 0.03], [0.1]]}
    # a searcher's choices stay one SAE per trial
    assert param_space(config, searcher=True)["sparsity_coefficient"].categories[0] == 0.001
    assert config.num_tune_trials(searcher=True) == 10
    # a pack's members are the points (and keys) their SAEs have alone
    point = {"site": "res:1", "width": 64, "sparsity_coefficients": [0.01, 0.03]}
    members = members_of(point)
    assert members == [{"site": "res:1", "width": 64, "sparsity_coefficient": 0.01},
                       {"site": "res:1", "width": 64, "sparsity_coefficient": 0.03}]
    assert trial_key(members[1]) == trial_key({"site": "res:1", "width": 64,
                                               "sparsity_coefficient": 0.03})
    assert trial_name(point) == "res_1-w64-l0.01+0.03"
    config = load_sweep(str(sweep_yaml), [
        "sparsity={distribution: loguniform, low: 1e-4, high: 1e-1, num_samples: 5}", "pack=4"])
    assert "sparsity_coefficient" in param_space(config) and config.num_tune_trials() == 10
    assert load_sweep(str(sweep_yaml)).num_tune_trials() == 4  # pack: 1 by default
    with pytest.raises(ConfigError, match="pack: must be >= 1"):
        load_sweep(str(sweep_yaml), ["pack=0"])


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
                                     "final_eval, model, model_name, name, pack, resources, shared_stream, sites, "
                                     "sparsity, storage, stream, tokens, tokens_by_width, train, widths)")
    help_ = subprocess.run([sys.executable, "-m", "raysae.cli", "--help"], capture_output=True, text=True)
    assert "sweep" in help_.stdout and "cache" in help_.stdout and "eval" in help_.stdout


def test_help_lists_the_fields_set_accepts(capsys):
    for command, fields in (("sweep", ["train.lr", "data.cache.context_length", "stream.seed"]),
                            ("cache", ["context_length", "rows_per_shard"]),
                            ("eval", ["num_sequences", "r_l0"])):
        with pytest.raises(SystemExit):
            main([command, "--help"])
        out = capsys.readouterr().out
        assert "fields for --set" in out and all(f in out for f in fields), command


@pytest.mark.parametrize("name", ["gemma2-2b-res12", "gemma2-9b-res20-ladder", "gemma2-2b-all-layers"])
def test_gemma_presets_parse(name):
    config = load_sweep(sweep_file(f"sweeps/{name}.yaml").replace("sweeps/sweeps", "sweeps"))
    assert config.model.startswith("gs://") and config.data.text is not None
    assert config.data.cache.dtype == "float32"  # 32-bit everywhere, as the paper (§3.3.2)
    assert min(config.steps_for(w) * config.train.batch_size for w in config.widths) > 4_000_000_000 - config.train.batch_size


def test_resolved_makes_only_local_relative_paths_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    c = from_dict(SweepConfig, {"storage": "runs", "model": "tiny",
                                "data": {"text": "python-stdlib", "cache_url": "cache/x"},
                                "final_eval": {"text": "gs://b/eval/*.txt"}}).resolved()
    assert c.storage == os.path.join(str(tmp_path), "runs")
    assert c.data.cache_url == os.path.join(str(tmp_path), "cache/x")
    assert c.data.text == "python-stdlib" and c.model == "tiny"
    assert c.final_eval.text == "gs://b/eval/*.txt"
    c2 = from_dict(SweepConfig, {"storage": "gs://bucket/s", "model": "models/ckpt/gemma",
                                 "data": {"manifest": "memory://acts/{site}"}}).resolved()
    assert c2.storage == "gs://bucket/s" and c2.data.manifest == "memory://acts/{site}"
    assert c2.model == os.path.join(str(tmp_path), "models/ckpt/gemma")  # org/name alone: a Hub id
    c3 = from_dict(SweepConfig, {"model": "random:gemma-2-2b", "data": {"manifest": "acts"}}).resolved()
    assert c3.model == "random:gemma-2-2b" and c3.data.manifest == os.path.join(str(tmp_path), "acts")
    assert storage.absolute("file:///x/y") == "file:///x/y"


def test_outputs_under_a_ray_job_need_an_absolute_path_or_a_storage_base(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("RAY_JOB_CONFIG_JSON_ENV_VAR", "{}")  # what Ray's job supervisor sets
    spec = {"storage": "runs", "model": "ckpt", "data": {"text": "in/*.txt", "cache_url": "c"}}
    with pytest.raises(ConfigError, match=r"^storage: 'runs' is relative.*--storage-base"):
        from_dict(SweepConfig, spec).resolved()
    c = from_dict(SweepConfig, spec).resolved(storage_base="/home/me")
    assert c.storage == "/home/me/runs" and c.data.cache_url == "/home/me/c"
    # inputs travel with the job's working dir: relative to the cwd
    assert c.data.text == str(tmp_path / "in/*.txt") and c.model == str(tmp_path / "ckpt")
    ok = from_dict(SweepConfig, {**spec, "storage": "gs://b/s", "data": {"text": "x"}}).resolved()
    assert ok.storage == "gs://b/s"
    with pytest.raises(ConfigError, match=r"^data.cache_url: 'c' is relative"):
        from_dict(SweepConfig, {**spec, "storage": "/abs"}).resolved()


def test_fractional_gpu_trials_get_a_share_of_jax_memory():
    from raysae.sweep.spec import ResourcesSpec

    assert ResourcesSpec(gpus=0.25).jax_env() == {"XLA_PYTHON_CLIENT_PREALLOCATE": "true",
                                                  "XLA_PYTHON_CLIENT_MEM_FRACTION": "0.225"}
    assert ResourcesSpec(gpus=1).jax_env() == {} and ResourcesSpec(gpus=0).jax_env() == {}


def test_the_cache_section_is_typed_and_derived(tmp_path):
    c = from_dict(SweepConfig, {"storage": str(tmp_path), "name": "n", "sites": ["res:1", "transcoder:2"],
                                "data": {"text": "python-stdlib",
                                         "cache": {"max_tokens": 1000, "context_length": 64}}})
    from raysae.sweep.prepare import cache_config, manifest_url

    job = cache_config(c)
    assert job.max_tokens == 1000 and job.context_length == 64 and job.model == "tiny"
    assert job.sites == ["res:1", "transcoder:2"] and job.inputs == ["python-stdlib"]
    assert manifest_url(c, "transcoder:2") == storage.join(str(tmp_path), "n", "cache", "transcoder_2")


def test_a_recipe_is_chosen_in_the_sweep_and_derived_per_trial(sweep_yaml):
    config = load_sweep(str(sweep_yaml), ["train.recipe=small-budget", "tokens_by_width={128: 51200}",
                                          "tokens=25600", "train.lr=0.002"])
    a, b = (config.trial_train_config(w, 0.01, "res:1") for w in (64, 128))
    assert a.recipe == b.recipe == "small-budget" and a.lr == b.lr == 0.002  # given: kept
    assert (a.steps, a.dead_preact_window_steps, a.lr_decay_steps) == (100, 3, 20)
    assert (b.steps, b.dead_preact_window_steps, b.lr_decay_steps) == (200, 6, 40)
    assert load_sweep(sweep_file("tiny")).train.recipe == "small-budget"
    paper = load_sweep(str(sweep_yaml)).trial_train_config(64, 0.01, "res:1")
    assert (paper.recipe, paper.bandwidth, paper.decoder_unit_norm) == ("gemma-scope", 0.001, True)


def test_storage_that_never_answers_fails_check_in_one_line_naming_the_field(monkeypatch):
    import time as time_

    from raysae.sweep import prepare

    monkeypatch.setattr(prepare.storage, "write_bytes_atomic", lambda *a: time_.sleep(5))
    t = time_.perf_counter()
    with pytest.raises(ConfigError, match=r"^storage: gs://b/s did not answer within 0.2 s"):
        prepare.check_writable("gs://b/s", "storage", timeout_s=0.2)
    assert time_.perf_counter() - t < 2
