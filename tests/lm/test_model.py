"""Behaviour of raysae.lm: sites, configs, early stop, splicing, resuming, masks, padding,
checkpoint loading (local, memory://, sharded) and its errors, tokenizers."""

import dataclasses
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from raysae.config import ConfigError
from raysae.lm import (GEMMA2_2B, GEMMA2_9B, GEMMA2_27B, SITE_KINDS, ByteTokenizer, WeightsError,
                       HFTokenizer, LanguageModel, LMConfig, Site, embed_tokens, forward, init_params, load_lm,
                       load_params, loss_mask, pad_batch, param_shapes, save_weights, site_activations,
                       target_mask, token_losses, token_losses_from)
from raysae.lm.weights import read_safetensors, safetensors_bytes
from raysae.storage import read_bytes, write_bytes_atomic

CFG = LMConfig(vocab_size=40, d_model=32, n_layers=3, n_heads=4, n_kv_heads=2, head_dim=8, d_mlp=48,
               query_pre_attn_scalar=8, sliding_window=3)


@pytest.fixture(scope="module")
def model():
    params = init_params(jax.random.PRNGKey(0), CFG, std=0.3, norm_std=0.3)
    return LanguageModel(CFG, params, None, "random")


def _tokens(b=2, t=10, seed=0):
    tok = np.random.RandomState(seed).randint(3, CFG.vocab_size, (b, t)).astype(np.int32)
    tok[:, 0] = CFG.bos_id
    return tok


def test_site_parse_and_str():
    s = Site.parse("res:12")
    assert s == Site(12, "res") and str(s) == "res:12"
    assert Site.parse("12:mlp_in") == Site(12, "mlp_in")
    assert Site.parse(("attn", 3) if False else (3, "attn")) == Site(3, "attn")
    with pytest.raises(ConfigError, match="kind 'resid'"):
        Site.parse("resid:1")
    with pytest.raises(ConfigError, match="layer"):
        Site.check(Site(5, "res"), n_layers=3)
    assert SITE_KINDS == ("attn", "mlp", "res", "mlp_in", "res_mid")


def test_presets_shapes_and_param_counts():
    # Known totals of the released checkpoints (tied embeddings).
    def total(cfg):
        return sum(int(np.prod(s)) for s in jax.tree_util.tree_leaves(
            param_shapes(cfg), is_leaf=lambda x: isinstance(x, tuple)))
    assert total(GEMMA2_2B) == 2_614_341_888
    assert total(GEMMA2_9B) == 9_241_705_984
    assert total(GEMMA2_27B) == 27_227_128_320
    assert GEMMA2_2B.site_dim("attn") == 2048 and GEMMA2_2B.site_dim("res") == 2304
    assert GEMMA2_27B.site_dim("attn") == 4096 and GEMMA2_27B.query_pre_attn_scalar == 144
    assert [GEMMA2_9B.is_sliding(i) for i in range(4)] == [True, False, True, False]


def test_config_hf_roundtrip_and_errors():
    assert LMConfig.from_hf(GEMMA2_9B.to_hf()) == GEMMA2_9B
    hf = GEMMA2_2B.to_hf()
    hf["rope_parameters"] = {"rope_type": "default", "rope_theta": 5000.0}
    assert LMConfig.from_hf(hf).rope_theta == 5000.0
    bad = dict(GEMMA2_2B.to_hf(), model_type="llama")
    with pytest.raises(ConfigError, match="model_type 'llama'"):
        LMConfig.from_hf(bad, where="gs://b/config.json")
    del hf["hidden_size"]
    with pytest.raises(ConfigError, match="hidden_size"):
        LMConfig.from_hf(hf)
    with pytest.raises(ConfigError, match="n_kv_heads"):
        dataclasses.replace(CFG, n_kv_heads=3)


def test_site_activations_shapes_and_early_stop(model):
    tok = _tokens()
    acts = site_activations(model, tok, ["attn:0", Site(0, "mlp_in"), "res:1"])
    assert acts[Site(0, "attn")].shape == (2, 10, CFG.site_dim("attn"))
    assert acts[Site(0, "mlp_in")].shape == (2, 10, CFG.d_model)
    # Layers after the last site needed never run: poisoning them changes nothing.
    poisoned = jax.tree_util.tree_map(lambda x: x, model.params)
    poisoned["layers"][2] = jax.tree_util.tree_map(lambda x: jnp.full_like(x, jnp.nan), poisoned["layers"][2])
    poisoned["norm"] = jnp.full_like(poisoned["norm"], jnp.nan)
    acts2 = site_activations(LanguageModel(CFG, poisoned, None, "p"), tok, ["res:1"])
    np.testing.assert_array_equal(acts2[Site(1, "res")], acts[Site(1, "res")])
    assert np.isfinite(np.asarray(acts2[Site(1, "res")])).all()


def test_sites_are_consistent_with_each_other(model):
    tok = _tokens()
    acts = site_activations(model, tok, [f"{k}:{i}" for i in range(3) for k in SITE_KINDS])
    lp = model.params["layers"][1]
    # res:1 = res:0 + post_attn_norm(o_proj(attn:1)) + mlp:1
    from raysae.lm.model import rms_norm
    a = rms_norm(acts[Site(1, "attn")] @ lp["o_proj"].T, lp["post_attention_layernorm"], CFG.rms_eps)
    np.testing.assert_allclose(acts[Site(1, "res")], acts[Site(0, "res")] + a + acts[Site(1, "mlp")],
                               rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(acts[Site(1, "res_mid")], acts[Site(0, "res")] + a, rtol=1e-5, atol=1e-5)
    # mlp_in: the pre-MLP RMSNorm with its gain folded out (App. B)
    from raysae.lm.model import normalize
    np.testing.assert_allclose(acts[Site(1, "mlp_in")], normalize(acts[Site(0, "res")] + a, CFG.rms_eps),
                               rtol=1e-5, atol=1e-5)


def test_splice_identity_zero_and_resume(model):
    tok = _tokens()
    clean, mask = token_losses(model, tok)
    ident, _ = token_losses(model, tok, splice={"res:1": lambda x: x, Site(0, "attn"): lambda x: x})
    np.testing.assert_allclose(ident, clean, rtol=1e-6)
    zero, _ = token_losses(model, tok, splice={"mlp:1": jnp.zeros_like})
    assert float(jnp.abs(zero - clean).max()) > 1e-3
    # Resuming at layer 2 from res:1 with the same splice equals the full spliced forward.
    scale = lambda x: 0.5 * x  # noqa: E731
    full, _ = token_losses(model, tok, splice={"attn:2": scale})
    res1 = site_activations(model, tok, ["res:1"])[Site(1, "res")]
    part, m2 = token_losses_from(model, 2, res1, tok, splice={"attn:2": scale})
    np.testing.assert_allclose(part, full, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(m2, mask)
    base, _ = token_losses_from(model, 0, embed_tokens(model, tok), tok)
    np.testing.assert_allclose(base, clean, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="before the resume layer"):
        token_losses_from(model, 2, res1, tok, splice={"attn:1": scale})


def test_transcoder_splice_pair(model):
    tok = _tokens()
    lp = model.params["layers"][1]
    from raysae.lm.model import rms_norm

    def true_mlp(n):  # a perfect "transcoder": the MLP branch itself, with the gain folded in
        x = n * (1.0 + lp["pre_feedforward_layernorm"])
        g = jax.nn.gelu(x @ lp["gate_proj"].T, approximate=True)
        return rms_norm((g * (x @ lp["up_proj"].T)) @ lp["down_proj"].T, lp["post_feedforward_layernorm"], CFG.rms_eps)

    clean, _ = token_losses(model, tok)
    same, _ = token_losses(model, tok, splice={(Site(1, "mlp_in"), Site(1, "mlp")): true_mlp})
    np.testing.assert_allclose(same, clean, rtol=1e-5, atol=1e-6)
    # The transcoder input has the RMSNorm's gain folded out: every row has norm √d_model
    # (App. B), although the model's pre-MLP gain is far from 1.
    acts = site_activations(model, tok, ["mlp_in:1", "res_mid:1"])
    norms = np.linalg.norm(np.asarray(acts[Site(1, "mlp_in")]), axis=-1)
    np.testing.assert_allclose(norms, np.sqrt(CFG.d_model), rtol=1e-4)
    gain = 1.0 + np.asarray(lp["pre_feedforward_layernorm"])
    assert np.abs(gain - 1).max() > 0.05
    mid = np.asarray(acts[Site(1, "res_mid")])
    want = mid / np.sqrt((mid ** 2).mean(-1, keepdims=True) + CFG.rms_eps)
    np.testing.assert_allclose(np.asarray(acts[Site(1, "mlp_in")]), want, rtol=1e-4, atol=1e-5)
    # Splicing the identity at mlp_in (and at res_mid) changes nothing.
    ident, _ = token_losses(model, tok, splice={"mlp_in:1": lambda x: x, "res_mid:1": lambda x: x})
    np.testing.assert_allclose(ident, clean, rtol=1e-6, atol=1e-6)
    off, _ = token_losses(model, tok, splice={("mlp_in:1", "mlp:1"): jnp.zeros_like})
    assert float(jnp.abs(off - clean).max()) > 1e-3
    with pytest.raises(ValueError, match="transcoder"):
        token_losses(model, tok, splice={("mlp_in:1", "mlp:2"): jnp.zeros_like})


def test_right_padding_does_not_change_real_positions(model):
    a = [2, 5, 6, 7, 8, 9]
    b = [2, 11, 12, 13, 14, 15, 16, 17, 18, 19]
    tok, am = pad_batch([a, b], CFG.pad_id)
    both = site_activations(model, tok, ["res:2"], am)[Site(2, "res")]
    alone = site_activations(model, np.asarray([a], np.int32), ["res:2"])[Site(2, "res")]
    np.testing.assert_allclose(both[0, : len(a)], alone[0], rtol=1e-5, atol=1e-5)
    losses, mask = token_losses(model, tok, am)
    assert mask.shape == (2, 9) and mask[0].sum() == len(a) - 1 and mask[1].all()


def test_masks():
    c = CFG
    tok = np.array([[c.bos_id, 5, 6, c.eos_id, c.pad_id], [c.bos_id, 7, c.eos_id, c.bos_id, 8]], np.int32)
    np.testing.assert_array_equal(loss_mask(tok, c), [[0, 1, 1, 0, 0], [0, 1, 0, 0, 1]])
    am = np.array([[1, 1, 0, 0, 0], [1, 1, 1, 1, 1]], bool)
    np.testing.assert_array_equal(loss_mask(tok, c, am), [[0, 1, 0, 0, 0], [0, 1, 0, 0, 1]])
    # t predicts t+1: EOS as target counts; BOS/pad targets and EOS/pad inputs do not.
    np.testing.assert_array_equal(target_mask(tok, c), [[1, 1, 1, 0], [1, 1, 0, 1]])


def test_bf16_weights_run(model):
    params16 = jax.tree_util.tree_map(lambda x: x.astype(jnp.bfloat16), model.params)
    m16 = LanguageModel(CFG, params16, None, "bf16")
    tok = _tokens()
    acts = site_activations(m16, tok, ["res:1"])
    assert acts[Site(1, "res")].dtype == jnp.bfloat16
    l16, mask = token_losses(m16, tok)
    l32, _ = token_losses(model, tok)
    assert l16.dtype == jnp.float32
    assert float(jnp.abs(l16 - l32).max()) < 0.1 * float(l32.max())


def test_checkpoint_roundtrip_memory_and_sharded(model, tmp_path):
    url = "memory://lmtest/ckpt"
    save_weights(url, model.params, CFG)
    back = load_lm(url)
    assert back.config == CFG and back.tokenizer is None
    for a, b in zip(jax.tree_util.tree_leaves(back.params), jax.tree_util.tree_leaves(model.params)):
        np.testing.assert_array_equal(a, b)
    # Split into two shards with an index, as large HF checkpoints are.
    tensors = read_safetensors(url + "/model.safetensors")
    names = sorted(tensors)
    shard = {n: ("model-00001-of-00002.safetensors" if i % 2 else "model-00002-of-00002.safetensors")
             for i, n in enumerate(names)}
    d = str(tmp_path / "sharded")
    os.makedirs(d)
    for fname in set(shard.values()):
        write_bytes_atomic(f"{d}/{fname}", safetensors_bytes({n: tensors[n] for n in names if shard[n] == fname}))
    write_bytes_atomic(f"{d}/model.safetensors.index.json", json.dumps({"weight_map": shard}).encode())
    write_bytes_atomic(f"{d}/config.json", read_bytes(url + "/config.json"))
    params = load_params(d, CFG, jnp.bfloat16)
    assert params["layers"][2]["down_proj"].dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(params["embed_tokens"], np.float32), model.params["embed_tokens"],
                               rtol=1e-2, atol=1e-2)


def test_checkpoint_errors_name_the_tensors(model):
    url = "memory://lmtest/bad"
    save_weights(url, model.params, CFG)
    tensors = read_safetensors(url + "/model.safetensors")
    del tensors["model.layers.1.mlp.up_proj.weight"]
    tensors["model.layers.0.self_attn.q_proj.weight"] = np.zeros((3, 3), np.float32)
    tensors["model.layers.0.self_attn.q_norm.weight"] = np.zeros((8,), np.float32)
    write_bytes_atomic(url + "/model.safetensors", safetensors_bytes(tensors))
    with pytest.raises(WeightsError) as e:
        load_params(url, CFG)
    msg = str(e.value)
    assert "missing tensors: model.layers.1.mlp.up_proj.weight" in msg
    assert "unexpected tensors: model.layers.0.self_attn.q_norm.weight" in msg
    assert "model.layers.0.self_attn.q_proj.weight (3, 3) (expected (32, 32))" in msg
    with pytest.raises(ConfigError, match="no config.json at memory://lmtest/nowhere"):
        load_lm("memory://lmtest/nowhere")


def _corrupt_weights(data: bytes, how: str) -> bytes:
    n = int.from_bytes(data[:8], "little")
    if how == "truncated":
        return data[: len(data) // 2]
    if how == "tiny_file":
        return data[:5]
    if how == "header_json":
        return data[:8] + b"{" * 4 + data[12:]
    if how == "offsets":  # a tensor whose byte range does not fit its shape
        header = json.loads(data[8:8 + n])
        name = sorted(k for k in header if k != "__metadata__")[0]
        header[name]["data_offsets"][1] -= 4
        h = json.dumps(header).encode()
        h += b" " * (-len(h) % 8)
        return len(h).to_bytes(8, "little") + h + data[8 + n:]
    raise ValueError(how)


@pytest.mark.parametrize("how, match", [
    ("truncated", r"model\.safetensors: tensor .* ends at byte \d+ of the data but the file has"),
    ("tiny_file", r"model\.safetensors: 5 bytes, too short"),
    ("header_json", r"model\.safetensors: the safetensors header is not valid JSON"),
    ("offsets", r"model\.safetensors: tensor \S+: data_offsets .* needs \d+"),
])
def test_a_malformed_weights_file_is_named_with_its_tensor(model, how, match):
    url = f"memory://lmtest/malformed-{how}"
    save_weights(url, model.params, CFG)
    data = read_bytes(url + "/model.safetensors")
    write_bytes_atomic(url + "/model.safetensors", _corrupt_weights(data, how))
    with pytest.raises(WeightsError, match=match):
        load_params(url, CFG)


@pytest.mark.parametrize("edit, match", [
    (None, r"config\.json: not valid JSON"),
    ({"num_hidden_layers": "three"}, r"config\.json: num_hidden_layers: expected an integer, got 'three'"),
    ({"sliding_window": None}, r"config\.json: sliding_window: null"),
    ({"attn_logit_softcapping": "x"}, r"config\.json: attn_logit_softcapping: expected a number or null"),
    ({"hidden_size": 32.5}, r"config\.json: hidden_size: expected an integer"),
])
def test_a_malformed_config_json_is_named_with_its_field(model, edit, match):
    from raysae.lm import load_config

    url = f"memory://lmtest/config-{len(str(edit))}-{abs(hash(str(edit)))}"
    save_weights(url, model.params, CFG)
    hf = json.loads(read_bytes(url + "/config.json"))
    text = b"{not json" if edit is None else json.dumps({**hf, **edit}).encode()
    write_bytes_atomic(url + "/config.json", text)
    with pytest.raises((WeightsError, ConfigError), match=match):
        load_config(url)
    assert LMConfig.from_hf(hf) == CFG  # the untouched config still loads


def test_byte_tokenizer():
    tok = ByteTokenizer()
    ids = tok.encode("héllo")
    assert ids[0] == tok.bos_id and len(ids) == 1 + len("héllo".encode())
    assert min(ids[1:]) >= 3 and tok.decode(ids) == "héllo"
    assert tok.encode("a", add_eos=True)[-1] == tok.eos_id and tok.vocab_size == 259


def test_hf_tokenizer_prepends_bos_once():
    from tokenizers import Tokenizer, models, pre_tokenizers, processors

    vocab = {"<pad>": 0, "<eos>": 1, "<bos>": 2, "hello": 3, "world": 4, "<unk>": 5}
    t = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    t.pre_tokenizer = pre_tokenizers.Whitespace()
    # Gemma's tokenizer.json adds <bos> in its post-processor; we must not get two.
    t.post_processor = processors.TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", 2)])
    hf = HFTokenizer(t.to_str(), bos_id=2, eos_id=1, pad_id=0)
    assert hf.encode("hello world") == [2, 3, 4]
    assert hf.decode([2, 3, 4]) == "hello world" and hf.vocab_size == 6


def test_query_blocked_attention_equals_one_block(model, monkeypatch):
    import raysae.lm.model as lm_model

    a, b = list(range(3, 20)), list(range(5, 30))
    tok, am = pad_batch([[2] + a, [2] + b], CFG.pad_id)
    sites = [f"{k}:{i}" for i in range(3) for k in ("attn", "res")]
    whole = forward(model.params, CFG, jnp.asarray(tok), jnp.asarray(am), sites=sites)
    # Blocks of 4 queries (window 3 on even layers): keys sliced per block must not change results.
    monkeypatch.setattr(lm_model, "ATTN_BLOCK", 4)
    blocked = forward(model.params, CFG, jnp.asarray(tok), jnp.asarray(am), sites=sites)
    real = np.asarray(am)
    np.testing.assert_allclose(np.asarray(blocked.logits)[real], np.asarray(whole.logits)[real], rtol=1e-5, atol=1e-5)
    for s in whole.acts:
        np.testing.assert_allclose(np.asarray(blocked.acts[s])[real], np.asarray(whole.acts[s])[real],
                                   rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("block", [None, 4])
def test_diagonal_kv_grad_gives_each_position_its_own_gradient(model, monkeypatch, block):
    import raysae.lm.model as lm_model

    if block:  # blocks of 4 queries: diagonal offsets 0/4/8 (global) and 0/2/2 (window 3)
        monkeypatch.setattr(lm_model, "ATTN_BLOCK", block)
    tok = jnp.asarray(_tokens(b=2, t=10, seed=3))
    site, sites = Site(0, "res"), (Site(1, "attn"), Site(2, "res"))

    def run(delta, diag):
        return forward(model.params, CFG, tok, sites=sites, splice={site: lambda a: a + delta},
                       diagonal_kv_grad=diag)

    def per_token(delta, diag):  # L_t: logit of the correct next token at t, [B, T-1]
        logits = run(delta, diag).logits[:, :-1]
        return jnp.take_along_axis(logits, tok[:, 1:, None], -1)[..., 0]

    delta0 = jnp.zeros((2, 10, CFG.d_model))
    # The flag changes the backward only: op by op, forward values are bit for bit the same...
    on, off = run(delta0, True), run(delta0, False)
    np.testing.assert_array_equal(np.asarray(on.logits), np.asarray(off.logits))
    for s in sites:
        np.testing.assert_array_equal(np.asarray(on.acts[s]), np.asarray(off.acts[s]))
    # ...and jitted, up to how XLA happens to fuse the two programs.
    on = jax.jit(run, static_argnums=1)(delta0, True)
    np.testing.assert_allclose(np.asarray(on.logits), np.asarray(off.logits), rtol=1e-5, atol=1e-5)

    # Brute force: one gradient of L_t alone per position, read at position t.
    own = jax.jit(lambda t: jax.grad(lambda d: per_token(d, False)[:, t].sum())(delta0)[:, t])
    want = np.stack([np.asarray(own(t)) for t in range(9)], axis=1)            # [B, 9, D]
    total = {f: np.asarray(jax.jit(jax.grad(lambda d, f=f: per_token(d, f).sum()))(delta0)) for f in (True, False)}
    scale = np.abs(want).max()
    np.testing.assert_allclose(total[True][:, :9], want, rtol=1e-4, atol=1e-5 * scale)
    assert np.all(total[True][:, 9] == 0)  # the last position predicts nothing
    # Without the flag, later positions' logits leak into earlier positions' gradients.
    leak = np.abs(total[False][:, :8] - want[:, :8]).max()
    assert leak > 0.05 * scale


def test_load_tokenizer_without_weights(model, tmp_path):
    from raysae.lm import load_tokenizer
    from tokenizers import Tokenizer, models

    assert isinstance(load_tokenizer("tiny"), ByteTokenizer)
    d = str(tmp_path / "ck")
    save_weights(d, model.params, CFG)
    assert load_tokenizer(d) is None
    t = Tokenizer(models.WordLevel({"<pad>": 0, "<eos>": 1, "<bos>": 2, "x": 3}, unk_token="x"))
    (tmp_path / "ck" / "tokenizer.json").write_text(t.to_str())
    tok = load_tokenizer(d)
    assert isinstance(tok, HFTokenizer) and tok.encode("x") == [CFG.bos_id, 3]


def test_splice_params_are_traced_not_baked(model):

    tok = _tokens()
    calls = []

    def scale(p, x):  # stands in for an SAE: (params, acts) -> reconstruction
        calls.append(1)  # runs only while tracing
        return x * p["s"]

    clean, _ = token_losses(model, tok)
    same, _ = token_losses(model, tok, splice={"res:1": scale}, splice_params={"res:1": {"s": jnp.float32(1.0)}})
    np.testing.assert_allclose(same, clean, rtol=1e-6)
    n = len(calls)
    half, _ = token_losses(model, tok, splice={"res:1": scale}, splice_params={Site(1, "res"): {"s": jnp.float32(0.5)}})
    assert len(calls) == n  # new params, same function: no retrace
    direct, _ = token_losses(model, tok, splice={"res:1": lambda x: 0.5 * x})
    np.testing.assert_allclose(half, direct, rtol=1e-5, atol=1e-6)
    res0 = site_activations(model, tok, ["res:0"])[Site(0, "res")]
    part, _ = token_losses_from(model, 1, res0, tok, splice={"res:1": scale}, splice_params={"res:1": {"s": 0.5}})
    np.testing.assert_allclose(part, direct, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="no function"):
        token_losses(model, tok, splice={"res:1": scale}, splice_params={"res:2": {"s": 1.0}})
