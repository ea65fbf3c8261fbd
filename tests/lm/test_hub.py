"""Hugging Face Hub ids as models: read from a local HF cache laid out as huggingface_hub
does (never downloading in tests), the rule telling them from relative paths, the error."""

import os
import shutil

import numpy as np
import pytest

import raysae.lm.source as lm_source
from raysae.config import ConfigError
from raysae.lm import ModelSource, load_lm

REV = "0123456789abcdef0123456789abcdef01234567"


def _cache_with(root, repo_id="google/gemma-2-2b"):
    """A Hugging Face hub cache holding the tiny checkpoint as `repo_id` at revision REV."""
    repo = root / ("models--" + repo_id.replace("/", "--"))
    snap = repo / "snapshots" / REV
    snap.mkdir(parents=True)
    for name in ("config.json", "model.safetensors"):
        shutil.copy(os.path.join(lm_source.TINY_DIR, name), snap / name)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(REV)
    return snap


@pytest.fixture
def offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")   # a test never reaches the Hub
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)


def test_hub_id_loads_from_the_cache_in_hf_home(tmp_path, monkeypatch, offline):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    snap = _cache_with(tmp_path / "hf" / "hub")
    src = ModelSource("google/gemma-2-2b")
    assert src.is_hub and src.url == str(snap)
    assert src.model_name() == "google/gemma-2-2b"     # SAELens / TransformerLens name
    assert src.absolute() == src                         # not made into a path under the cwd
    hub, tiny = load_lm("google/gemma-2-2b"), load_lm("tiny")
    assert hub.name == "gemma-2-2b" and hub.config == tiny.config
    np.testing.assert_array_equal(np.asarray(hub.params["embed_tokens"]),
                                  np.asarray(tiny.params["embed_tokens"]))


def test_hf_hub_cache_wins_over_hf_home(tmp_path, monkeypatch, offline):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "elsewhere"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hubcache"))
    snap = _cache_with(tmp_path / "hubcache", "org/model.v2")
    assert ModelSource("org/model.v2").config() == load_lm("tiny").config
    assert ModelSource("org/model.v2").url == str(snap)


def test_missing_hub_id_is_one_line_naming_model_and_cache(tmp_path, monkeypatch, offline):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty"))
    for download in (False, True):   # offline: not even when downloading is allowed
        with pytest.raises(ConfigError) as e:
            ModelSource("google/gemma-2-9b", download=download).config()
        msg = str(e.value)
        assert "\n" not in msg and "'google/gemma-2-9b'" in msg and str(tmp_path / "empty") in msg
        assert "HF_HUB_OFFLINE" in msg
    monkeypatch.delenv("HF_HUB_OFFLINE")
    with pytest.raises(ConfigError, match="downloading is off"):
        load_lm("google/gemma-2-9b")   # the default never downloads


def test_hub_id_or_local_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert lm_source.is_hub_id("google/gemma-2-2b") and lm_source.is_hub_id("org/a_b.c-d")
    for spec in ("./google/gemma-2-2b", "/abs/dir", "~/models/g", "gs://b/gemma", "a/b/c", "gemma",
                 "tiny", "random:gemma-2-2b", "../up/dir", ".hidden/x"):
        assert not lm_source.is_hub_id(spec), spec
    # an existing relative directory of that shape is a local path, not a Hub id
    shutil.copytree(lm_source.TINY_DIR, tmp_path / "models" / "mine")
    assert not ModelSource("models/mine").is_hub
    assert ModelSource("models/mine").absolute().spec == str(tmp_path / "models" / "mine")
    assert load_lm("models/mine").config.d_model == 128
