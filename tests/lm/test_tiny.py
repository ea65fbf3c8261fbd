"""The embedded tiny model: checksum-verified, byte tokenizer, a real (better than unigram) loss
on held-out standard-library text, and sites usable for SAE training."""

import json
import os
import shutil
import sysconfig

import numpy as np
import pytest

import raysae.lm.source as lm_source
from raysae.lm import ByteTokenizer, WeightsError, Site, encode_batch, load_lm, loss_mask, site_activations, token_losses


def test_tiny_loads_with_byte_tokenizer():
    m = load_lm("tiny")
    assert m.name == "tiny" and isinstance(m.tokenizer, ByteTokenizer)
    assert m.config.vocab_size == 259 and m.config.n_layers == 4
    assert m.config.bos_id == m.tokenizer.bos_id and m.config.pad_id == m.tokenizer.pad_id
    rec = json.load(open(os.path.join(lm_source.TINY_DIR, "training.json")))
    assert rec["val_loss_nats_per_byte"] < rec["val_unigram_nats_per_byte"] - 0.5


def test_tiny_beats_unigram_on_heldout_stdlib_text():
    m = load_lm("tiny")
    # __future__.py is the first stdlib file in sorted order: held out of training (every 20th).
    text = open(os.path.join(sysconfig.get_paths()["stdlib"], "__future__.py"), encoding="utf-8").read()
    chunks = [text[i: i + 255] for i in range(0, 255 * 4, 255)]
    tok, am = encode_batch(m, chunks, 256)
    losses, mask = token_losses(m, tok, am)
    mean = float((np.asarray(losses) * mask).sum() / mask.sum())
    counts = np.bincount(tok[am], minlength=259) + 1.0  # unigram fitted on the same text (optimistic)
    unigram = float(-np.log(counts / counts.sum())[tok[:, 1:][np.asarray(mask)]].mean())
    assert mean < unigram - 0.5, (mean, unigram)


def test_tiny_sites_and_mask():
    m = load_lm("tiny")
    tok, am = encode_batch(m, ["def f(x):\n    return x\n", "import os"], 32)
    acts = site_activations(m, tok, ["res:1", "attn:2", "mlp_in:3"], am)
    assert acts[Site(2, "attn")].shape == (2, 32, m.config.site_dim("attn"))
    lm = np.asarray(loss_mask(tok, m.config, am))
    assert not lm[:, 0].any() and lm[1].sum() == len("import os")


def test_tiny_checksum_mismatch_is_an_error(tmp_path, monkeypatch):
    d = tmp_path / "tiny"
    shutil.copytree(lm_source.TINY_DIR, d)
    data = bytearray((d / "model.safetensors").read_bytes())
    data[-1] ^= 0xFF
    (d / "model.safetensors").write_bytes(bytes(data))
    monkeypatch.setattr(lm_source, "TINY_DIR", str(d))
    with pytest.raises(WeightsError, match="sha256"):
        load_lm("tiny")


def test_model_names_for_saved_saes(tmp_path):
    """SAELens / Neuronpedia know a model by its Hugging Face name, not by where it lies."""
    import shutil as sh

    from raysae.lm import ModelSource

    d = tmp_path / "models" / "gemma-2-2b"
    sh.copytree(lm_source.TINY_DIR, d)
    assert ModelSource(str(d)).model_name() == "gemma-2-2b"
    hf = json.loads((d / "config.json").read_text())
    (d / "config.json").write_text(json.dumps({**hf, "_name_or_path": "google/gemma-2-2b-it"}))
    assert ModelSource(str(d)).model_name() == "gemma-2-2b-it"
    assert ModelSource("random:gemma-2-9b").model_name() == "gemma-2-9b"
    assert ModelSource("tiny").model_name() == "tiny"
