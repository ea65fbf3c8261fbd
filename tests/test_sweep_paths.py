"""Relative local paths in a sweep are made absolute before any Ray work (trials run in
their own working directories, so a relative cache path would point elsewhere there)."""

import os

from raysae import storage
from raysae.config import from_dict
from raysae.sweep import SweepConfig


def test_resolved_makes_only_local_relative_paths_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    c = from_dict(SweepConfig, {"storage": "runs", "model": "tiny",
                                "data": {"text": "python-stdlib", "cache_url": "cache/x"},
                                "final_eval": {"text": "gs://b/eval/*.txt"}}).resolved()
    assert c.storage == os.path.join(str(tmp_path), "runs")
    assert c.data.cache_url == os.path.join(str(tmp_path), "cache/x")
    assert c.data.text == "python-stdlib" and c.model == "tiny"
    assert c.final_eval.text == "gs://b/eval/*.txt"
    c2 = from_dict(SweepConfig, {"storage": "gs://bucket/s", "model": "ckpt/gemma",
                                 "data": {"manifest": "memory://acts/{site}"}}).resolved()
    assert c2.storage == "gs://bucket/s" and c2.data.manifest == "memory://acts/{site}"
    assert c2.model == os.path.join(str(tmp_path), "ckpt/gemma")
    c3 = from_dict(SweepConfig, {"model": "random:gemma-2-2b", "data": {"manifest": "acts"}}).resolved()
    assert c3.model == "random:gemma-2-2b" and c3.data.manifest == os.path.join(str(tmp_path), "acts")
    assert storage.absolute("file:///x/y") == "file:///x/y"
