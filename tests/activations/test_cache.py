"""The cache job end to end on real local Ray with the embedded tiny model.

Rows are checked against the model's own site activations for the tokens they came from
(via `plan_cache` + `row_sources`), the manifest against the rows, the shuffle against the
documents, and a job interrupted mid-way against a clean run (identical shards).
"""

import dataclasses
import hashlib
import os

import numpy as np
import pytest
import ray

from raysae import storage
from raysae.data import Manifest, read_shard, split_parts
from raysae.activations import cache as cache_mod
from raysae.activations import pipeline, shuffle
from raysae.activations.cache import (CacheError, build_cache, cache_activations, config_mismatch,
                                      manifest_matches, plan_cache)
from raysae.activations.config import CacheConfig
from raysae.config import ConfigError
from raysae.lm import Site, load_lm, site_activations

pytestmark = pytest.mark.ray
SITES = ["res:1", "attn:2", "transcoder:0"]


@pytest.fixture(scope="module")
def ray_local():
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """8 text documents of different lengths (slices of a stdlib module)."""
    src = open(os.__file__, encoding="utf-8").read()
    root = tmp_path_factory.mktemp("corpus")
    for i in range(8):
        (root / f"doc{i}.txt").write_text(src[i * 3000: i * 3000 + 150 + 90 * i])
    return str(root)


def config(corpus, output, **kw):
    base = dict(inputs=[corpus], output=output, sites=SITES, context_length=32, rows_per_shard=256,
                batch_size=4, progress=False, norm_sample_rows=10**6)
    base.update(kw)
    return CacheConfig(**base)


@pytest.fixture(scope="module")
def local_cache(ray_local, corpus, tmp_path_factory):
    cfg = config(corpus, str(tmp_path_factory.mktemp("cache") / "out"))
    summary = build_cache(cfg)
    return cfg, summary


def _shas(url):
    return [s.sha256 for s in Manifest.load(url).shards]


def test_rows_are_the_models_activations_at_unmasked_tokens(local_cache):
    cfg, summary = local_cache
    assert sorted(summary.manifests) == sorted(SITES) and summary.reused == []
    cp = plan_cache(cfg)
    model = load_lm("tiny")
    acts = site_activations(model, cp.tokens, [Site(1, "res"), Site(2, "attn"), Site(0, "mlp_in"),
                                               Site(0, "mlp")], attention_mask=cp.tokens != 0)
    acts = {k: np.asarray(v) for k, v in acts.items()}
    for key, url in summary.manifests.items():
        m = Manifest.load(url)
        assert m.total_rows == cp.mask.sum() == sum(s.rows for s in m.shards)
        assert m.tokens == (cp.tokens != 0).sum() and len(m.shards) == cp.plan.n_shards
        assert m.rows_per_shard <= 256 and m.config["site"] == key
        for k in (0, cp.plan.n_shards - 1):
            rows = np.asarray(read_shard(url, m, m.shards[k], verify=True))
            seq, pos = shuffle.row_sources(cp.plan, cp.mask, k, cfg.seed)
            assert (cp.tokens[seq, pos] > 2).all()  # never BOS/EOS/pad
            if key == "transcoder:0":
                assert m.parts == ["input", "target"] and m.d == 128
                parts = split_parts(rows, m)
                np.testing.assert_allclose(parts["input"], acts[Site(0, "mlp_in")][seq, pos], atol=1e-4)
                np.testing.assert_allclose(parts["target"], acts[Site(0, "mlp")][seq, pos], atol=1e-4)
            else:
                site = Site.parse(key)
                np.testing.assert_allclose(rows, acts[site][seq, pos], atol=1e-4)


def test_norm_scalar_makes_mean_squared_norm_one(local_cache):
    _, summary = local_cache
    for key, url in summary.manifests.items():
        m = Manifest.load(url)
        x = np.concatenate([read_shard(url, m, s) for s in m.shards])[:, :m.d]  # transcoder: input
        assert np.mean(np.sum((x / m.norm_scalar) ** 2, axis=1)) == pytest.approx(1.0, rel=1e-4)


def test_shuffle_spreads_documents(local_cache):
    cfg, _ = local_cache
    cp = plan_cache(cfg)
    seq, _ = shuffle.row_sources(cp.plan, cp.mask, 0, cfg.seed)
    docs = cp.documents[seq]
    assert len(np.unique(docs)) >= 4  # one bucket mixes many documents
    assert np.mean(docs[1:] == docs[:-1]) < 0.4
    plain = shuffle.plan_shards(cp.mask.sum(1), 256, cfg.seed, shuffle=False)
    seq0, _ = shuffle.row_sources(plain, cp.mask, 0, cfg.seed, shuffle=False)
    assert np.mean(cp.documents[seq0][1:] == cp.documents[seq0][:-1]) > 0.9  # what it would be without


def test_rerun_reuses_and_mismatch_is_named(local_cache, corpus):
    cfg, summary = local_cache
    url = summary.manifests["res:1"]
    mtime = os.path.getmtime(os.path.join(url, "shard-00000.npy"))
    again = build_cache(cfg)
    assert sorted(again.reused) == sorted(SITES) and again.shards_written == 0
    assert os.path.getmtime(os.path.join(url, "shard-00000.npy")) == mtime
    assert manifest_matches(url, cfg, "res:1")
    other = dataclasses.replace(cfg, seed=1)
    assert not manifest_matches(url, other, "res:1") and not manifest_matches(url, cfg, "attn:2")
    assert any(p.startswith("seed") for p in config_mismatch(Manifest.load(url), other, "res:1"))
    with pytest.raises(CacheError, match="seed: 0 != 1"):
        cache_activations(other)
    # speed-only fields do not make a different cache
    assert manifest_matches(url, dataclasses.replace(cfg, batch_size=2, workers=1), "res:1")


def test_interrupted_job_resumes_to_identical_shards(local_cache, corpus, tmp_path, monkeypatch):
    cfg, summary = local_cache
    out = str(tmp_path / "out")
    real = pipeline.build_shards

    class Killed(Exception):
        pass

    def dies_after_3(*a, **kw):
        for i, res in enumerate(real(*a, **kw)):
            yield res
            if i == 2:
                raise Killed

    monkeypatch.setattr(pipeline, "build_shards", dies_after_3)
    with pytest.raises(Killed):
        build_cache(dataclasses.replace(cfg, output=out))
    monkeypatch.setattr(pipeline, "build_shards", real)
    url = os.path.join(out, "res_1")
    assert not os.path.exists(os.path.join(url, "manifest.json"))
    assert os.path.exists(os.path.join(url, "progress.json"))
    with open(os.path.join(url, "shard-00099.npy.tmp-deadbeef0000"), "wb") as f:
        f.write(b"torn")  # what a kill mid-write leaves
    resumed = build_cache(dataclasses.replace(cfg, output=out))
    n = len(Manifest.load(summary.manifests["res:1"]).shards)
    assert 0 < resumed.shards_written <= n - 3
    for key in SITES:
        assert _shas(resumed.manifests[key]) == _shas(summary.manifests[key])
        a, b = Manifest.load(resumed.manifests[key]), Manifest.load(summary.manifests[key])
        assert a.norm_scalar == b.norm_scalar and a.total_rows == b.total_rows
    assert not os.path.exists(os.path.join(url, "progress.json"))


def test_memory_output_gives_the_same_shards(local_cache):
    cfg, summary = local_cache
    mem = dataclasses.replace(cfg, output="memory://cache-test/out", sites=["res:1", "transcoder:0"])
    got = cache_activations(mem)
    assert got["res:1"] == "memory://cache-test/out/res_1"
    for key in ("res:1", "transcoder:0"):
        m = Manifest.load(got[key])
        assert _shas(got[key]) == _shas(summary.manifests[key])
        data = storage.read_bytes(storage.join(got[key], m.shards[0].name))
        assert hashlib.sha256(data).hexdigest() == m.shards[0].sha256


def test_bad_jobs_fail_before_any_work(ray_local, corpus, tmp_path):
    with pytest.raises(ConfigError, match="res:9.*4 layers"):
        build_cache(config(corpus, str(tmp_path / "a"), sites=["res:9"]))
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(CacheError, match="not writable"):
        build_cache(config(corpus, str(blocker / "out")))
    with pytest.raises(Exception, match="nothing.txt: file not found"):
        build_cache(config(str(tmp_path / "nothing.txt"), str(tmp_path / "b")))
    out = str(tmp_path / "c")
    Manifest(model="other", site="res", layer=1, d=7).save(os.path.join(out, "res_1"))
    with pytest.raises(CacheError, match="d=7 but model 'tiny' gives d=128 at res:1"):
        build_cache(config(corpus, out, sites=["res:1"]))
    with pytest.raises(ConfigError, match="model"):
        build_cache(config(corpus, str(tmp_path / "d"), model=str(tmp_path / "no-model")))
    assert not os.path.exists(tmp_path / "a") or not os.listdir(tmp_path / "a")


def test_overwrite_replaces_a_different_cache(local_cache, tmp_path):
    cfg, _ = local_cache
    out = str(tmp_path / "o")
    Manifest(model="other", site="res", layer=1, d=7).save(os.path.join(out, "res_1"))
    small = dataclasses.replace(cfg, output=out, sites=["res:1"], max_tokens=300)
    got = build_cache(small, overwrite=True)
    m = Manifest.load(got.manifests["res:1"])
    assert m.d == 128 and m.tokens <= 300 and manifest_matches(got.manifests["res:1"], small, "res:1")
    assert cache_mod.JOURNAL not in os.listdir(os.path.join(out, "res_1"))


def test_cli_run_reuses_the_cache(local_cache, capsys):
    from raysae.activations import cli

    cfg, summary = local_cache
    argv = ["--input", cfg.inputs[0], "--output", cfg.output, "--context-length", "32",
            "--rows-per-shard", "256", "--batch-size", "2", "--set", "norm_sample_rows=1000000",
            "--set", "progress=false"] + [a for s in SITES for a in ("--site", s)]
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    assert f"res:1\t{summary.manifests['res:1']}  (reused)" in out and "nothing to do" in out
