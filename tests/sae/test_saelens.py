"""SAELens directories and the Gemma Scope release layout, with the real sae-lens as the client.

The interoperability tests load raysae's exports in sae-lens (CPU torch) and compare encode /
decode and every metadata field, and load a sae-lens-saved JumpReLU SAE in raysae; they skip
with the reason only where sae-lens cannot be imported.
"""

import json

import numpy as np
import pytest

from raysae.sae import encode, forward
from raysae.sae.formats import SAEFormatError, load_npz, save_npz
from raysae.sae.release import list_release, load_release, save_release, width_name
from raysae.sae.saelens import load_saelens, metadata, save_saelens
from tests.sae.test_fold_formats import trained_like


def test_round_trip_and_what_saelens_reads(tmp_path):
    p = trained_like()
    save_saelens(p, str(tmp_path / "sl"), model_name="gemma-2-2b", site="res:12",
                 context_size=1024, dataset_path="gs://b/corpus", extra={"sweep": "s"})
    cfg = json.loads((tmp_path / "sl" / "cfg.json").read_text())
    assert cfg["architecture"] == "jumprelu" and (cfg["d_in"], cfg["d_sae"]) == (16, 40)
    assert cfg["apply_b_dec_to_input"] is False and cfg["normalize_activations"] == "none"
    m = cfg["metadata"]  # where SAELens >= 6 reads the run's facts
    assert (m["model_name"], m["hook_name"], m["context_size"], m["dataset_path"]) == \
        ("gemma-2-2b", "blocks.12.hook_resid_post", 1024, "gs://b/corpus")
    assert m["sae_lens_version"] >= "6" and cfg["raysae"] == {"sweep": "s"} and "meta" not in cfg
    q, back = load_saelens(str(tmp_path / "sl"))
    for a, b in zip(q, p):
        np.testing.assert_array_equal(a, np.asarray(b))
    assert metadata(back)["hook_name"] == "blocks.12.hook_resid_post"


def test_sites_set_the_transformer_lens_hooks(tmp_path):
    p = trained_like()
    save_saelens(p, str(tmp_path / "attn"), site="attn:3")
    cfg = json.loads((tmp_path / "attn" / "cfg.json").read_text())
    assert cfg["metadata"]["hook_name"] == "blocks.3.attn.hook_z" and cfg["reshape_activations"] == "hook_z"
    t = trained_like(transcoder=True)
    save_saelens(t, str(tmp_path / "tc"), site="transcoder:5")
    cfg = json.loads((tmp_path / "tc" / "cfg.json").read_text())
    assert cfg["architecture"] == "jumprelu_transcoder" and cfg["d_out"] == 16
    assert cfg["metadata"]["hook_name"] == "blocks.5.ln2.hook_normalized"
    assert cfg["metadata"]["hook_name_out"] == "blocks.5.hook_mlp_out"
    q, _ = load_saelens(str(tmp_path / "tc"))
    np.testing.assert_array_equal(q.b_enc, np.asarray(t.b_enc))  # no b_dec folding for transcoders
    with pytest.raises(ValueError, match="site bogus:1: kind 'bogus'"):
        save_saelens(p, str(tmp_path / "bad"), site="bogus:1")


def test_b_dec_applied_to_input_is_folded_and_log_threshold_converted(tmp_path):
    import safetensors.numpy

    p = trained_like()
    save_saelens(p, str(tmp_path / "sl"))
    cfg_path = tmp_path / "sl" / "cfg.json"
    cfg = json.loads(cfg_path.read_text())
    cfg_path.write_text(json.dumps(dict(cfg, apply_b_dec_to_input=True)))
    q, _ = load_saelens(str(tmp_path / "sl"))
    x = np.random.default_rng(3).standard_normal((8, 16)).astype(np.float32)
    np.testing.assert_allclose(encode(q, x), encode(p, x, pre_encoder_bias=True), rtol=1e-5, atol=1e-5)
    # older SAELens 6.x files train log θ: converted, not refused
    w = tmp_path / "sl" / "sae_weights.safetensors"
    arrays = safetensors.numpy.load(w.read_bytes())
    arrays["log_threshold"] = np.log(arrays.pop("threshold"))
    w.write_bytes(safetensors.numpy.save(arrays))
    cfg_path.write_text(json.dumps(cfg))
    r, _ = load_saelens(str(tmp_path / "sl"))
    np.testing.assert_allclose(r.threshold, np.asarray(p.threshold), rtol=1e-6)


@pytest.mark.parametrize("edit, match", [
    ({"architecture": "topk"}, r"cfg\.json.*'architecture'"),
    ({"d_sae": 99}, r"cfg\.json.*'d_sae'"),
    ({"normalize_activations": "layer_norm"}, r"cfg\.json.*'normalize_activations'.*'layer_norm'"),
])
def test_what_raysae_cannot_run_exactly_is_refused(tmp_path, edit, match):
    save_saelens(trained_like(), str(tmp_path / "sl"))
    cfg_path = tmp_path / "sl" / "cfg.json"
    cfg_path.write_text(json.dumps({**json.loads(cfg_path.read_text()), **edit}))
    with pytest.raises(SAEFormatError, match=match):
        load_saelens(str(tmp_path / "sl"))


def test_gemma_scope_release_layout(tmp_path):
    assert [width_name(w) for w in (64, 4096, 16384, 65536, 131072, 524288, 2**20)] == \
        ["64", "4k", "16k", "65k", "131k", "524k", "1m"]
    root = str(tmp_path / "gemma-scope-2b-pt-res")
    a, b = trained_like(M=40), trained_like(M=40, seed=1)
    url = save_release(a, root, layer=12, average_l0=81.6)
    assert url.endswith("layer_12/width_40/average_l0_82/params.npz")
    save_release(b, root, layer=12, average_l0=20.2)
    big = trained_like(M=16384)
    assert save_release(big, root, layer=3, average_l0=7).endswith(
        "layer_3/width_16k/average_l0_7/params.npz")
    assert [(e.layer, e.width, e.average_l0) for e in list_release(root)] == \
        [(3, "16k", 7), (12, "40", 20), (12, "40", 82)]
    np.testing.assert_array_equal(load_release(root, 12, 40, average_l0=82).W_enc, np.asarray(a.W_enc))
    np.testing.assert_array_equal(load_release(root, 3, 16384).threshold, np.asarray(big.threshold))
    with pytest.raises(SAEFormatError, match=r"layer_12/width_40: several SAEs \(average_l0_20, average_l0_82\)"):
        load_release(root, 12, 40)
    with pytest.raises(SAEFormatError, match="no SAE with average_l0_5"):
        load_release(root, 12, 40, average_l0=5)


# --- the real client -------------------------------------------------------------------

def _sae_lens():
    try:
        import sae_lens  # noqa: F401
        import torch  # noqa: F401
    except Exception as e:  # noqa: BLE001 - any import failure means "not installable here"
        pytest.skip(f"sae-lens is not importable here ({type(e).__name__}: {e})")
    return sae_lens


@pytest.mark.parametrize("site", ["res:12", "attn:3", "transcoder:5"])
def test_sae_lens_loads_the_export_with_every_field(tmp_path, site):
    sl = _sae_lens()
    import torch

    transcoder = site.startswith("transcoder")
    p = trained_like(d=16, M=40, transcoder=transcoder)
    save_saelens(p, str(tmp_path / "sl"), model_name="gemma-2-2b", site=site, context_size=1024,
                 dataset_path="monology/pile-uncopyrighted")
    sae = sl.SAE.load_from_disk(str(tmp_path / "sl"))
    assert sae.cfg.architecture() == ("jumprelu_transcoder" if transcoder else "jumprelu")
    m = sae.cfg.metadata
    want_hook = {"res:12": "blocks.12.hook_resid_post", "attn:3": "blocks.3.attn.hook_z",
                 "transcoder:5": "blocks.5.ln2.hook_normalized"}[site]
    assert (m.model_name, m.hook_name, m.context_size, m.dataset_path, m.prepend_bos) == \
        ("gemma-2-2b", want_hook, 1024, "monology/pile-uncopyrighted", True)
    if transcoder:
        assert m.hook_name_out == "blocks.5.hook_mlp_out"
    assert sae.cfg.apply_b_dec_to_input is False and sae.cfg.normalize_activations == "none"
    x = np.random.default_rng(1).standard_normal((32, 16)).astype(np.float32) * 0.5
    # attention sites: SAELens reads hook_z as [.., heads, d_head] and flattens it
    shaped = x.reshape(32, 4, 4) if site.startswith("attn") else x
    with torch.no_grad():
        f = sae.encode(torch.from_numpy(shaped)).numpy()
        x_hat = sae.decode(torch.from_numpy(f)).numpy().reshape(32, 16)
    np.testing.assert_allclose(f, np.asarray(encode(p, x)), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(x_hat, np.asarray(forward(p, x)), rtol=1e-5, atol=1e-5)


def test_raysae_loads_a_sae_lens_saved_jumprelu(tmp_path):
    sl = _sae_lens()
    import torch
    from sae_lens.saes.jumprelu_sae import JumpReLUSAE, JumpReLUSAEConfig

    torch.manual_seed(0)
    cfg = JumpReLUSAEConfig(d_in=16, d_sae=40, apply_b_dec_to_input=True,
                            metadata=sl.saes.sae.SAEMetadata(model_name="gemma-2-2b",
                                                            hook_name="blocks.1.hook_resid_post"))
    sae = JumpReLUSAE(cfg)
    with torch.no_grad():
        for t in (sae.W_enc, sae.W_dec, sae.b_enc, sae.b_dec):
            t.copy_(torch.randn_like(t) * 0.3)
        sae.threshold.copy_(torch.rand_like(sae.threshold) * 0.2)
    sae.save_model(str(tmp_path / "theirs"))
    params, back = load_saelens(str(tmp_path / "theirs"))
    assert metadata(back)["hook_name"] == "blocks.1.hook_resid_post"
    x = np.random.default_rng(2).standard_normal((32, 16)).astype(np.float32)
    with torch.no_grad():
        f = sae.encode(torch.from_numpy(x)).numpy()
        x_hat = sae.decode(torch.from_numpy(f)).numpy()
    np.testing.assert_allclose(np.asarray(encode(params, x)), f, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(forward(params, x)), x_hat, rtol=1e-5, atol=1e-5)
    save_npz(params, str(tmp_path / "as-npz"))  # and on into the Gemma Scope layout
    np.testing.assert_array_equal(load_npz(str(tmp_path / "as-npz")).W_dec, params.W_dec)
