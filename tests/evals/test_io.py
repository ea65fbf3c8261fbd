"""raysae.evals inputs and outputs: token rows from texts/arrays, Gemma Scope npz / SAELens files
give the same numbers as the SAE in memory, errors before any forward (wrong width, missing
layer, npz missing keys, bad token ids), report JSON + PNGs on fsspec URLs, the CLI end to end."""

import io
import json

import numpy as np
import pytest

import raysae.evals.suite as ev
from raysae import storage
from raysae.config import ConfigError
from raysae.evals import (EvalConfig, eval_tokens, evaluate, read_report, tokens_from_array,
                          tokens_from_texts, write_report)
from raysae.evals.cli import main
from raysae.evals.inputs import iter_texts, load_sae
from raysae.lm import ByteTokenizer, load_lm
from raysae.sae.formats import SAEFormatError, save_npz
from raysae.sae.saelens import save_saelens
from raysae.sae.params import SAEParams

# Same shapes and settings as tests/test_evals.py, so the compiled programs are shared.
CFG = EvalConfig(num_sequences=6, context_length=48, batch_size=4, progress=False)
TEXTS = ["def f(x):\n    return x * 2\n" * 8, "import os\nprint(os.getcwd())\n" * 9, "class A:\n    pass\n" * 20]


@pytest.fixture(scope="module")
def model():
    return load_lm("tiny")


def random_sae(d, width, seed=0):
    rng = np.random.RandomState(seed)
    return SAEParams(rng.randn(d, width).astype(np.float32) / np.sqrt(d),
                     rng.randn(width, d).astype(np.float32) / np.sqrt(width),
                     rng.randn(width).astype(np.float32) * 0.1, rng.randn(d).astype(np.float32) * 0.1,
                     rng.uniform(0.4, 1.2, width).astype(np.float32))


@pytest.fixture
def no_forward(monkeypatch):
    """Fail the test if the eval program (or the mean pre-pass) would run."""
    def boom(*a, **k):
        raise AssertionError("a forward ran before the inputs were checked")
    monkeypatch.setattr(ev, "batch_stats", boom)
    monkeypatch.setattr(ev, "site_sum", boom)


def test_packed_and_unpacked_rows():
    tok = ByteTokenizer()
    rows = tokens_from_texts(tok, ["abc", "de"], context_length=4, num_sequences=10)
    # Stream "abc<eos>de<eos>" cut into BOS + 3 tokens.
    np.testing.assert_array_equal(rows.tokens, [[2, 100, 101, 102], [2, 1, 103, 104], [2, 1, 0, 0]])
    np.testing.assert_array_equal(rows.attention_mask[2], [True, True, False, False])
    assert tokens_from_texts(tok, ["abc", "de"] * 50, 4, num_sequences=2).num_sequences == 2
    un = tokens_from_texts(tok, ["abcdef", "x"], context_length=4, num_sequences=5, pack=False)
    np.testing.assert_array_equal(un.tokens, [[2, 100, 101, 102], [2, 123, 0, 0]])
    np.testing.assert_array_equal(un.attention_mask[1], [True, True, False, False])
    # Arrays: rows get BOS first and padding masked; a 1-D stream is packed.
    arr = tokens_from_array(np.array([[5, 6, 7], [8, 9, 0]]), 5, 10, bos_id=2, pad_id=0)
    np.testing.assert_array_equal(arr.tokens, [[2, 5, 6, 7, 0], [2, 8, 9, 0, 0]])
    np.testing.assert_array_equal(arr.attention_mask[1], [True, True, True, False, False])
    # Rows that already start with BOS keep a single one (no double BOS in a mixed array).
    mixed = tokens_from_array(np.array([[2, 10, 11, 12], [20, 21, 22, 23]]), 5, 10, bos_id=2, pad_id=0)
    np.testing.assert_array_equal(mixed.tokens, [[2, 10, 11, 12, 0], [2, 20, 21, 22, 23]])
    s = tokens_from_array(np.arange(3, 10), 4, 10, bos_id=2, pad_id=0)
    np.testing.assert_array_equal(s.tokens, [[2, 3, 4, 5], [2, 6, 7, 8], [2, 9, 0, 0]])
    # Batches have one shape; filler rows are fully masked.
    b = list(arr.batches(3))
    assert b[0].tokens.shape == (3, 5) and not b[0].attention_mask[2].any()
    with pytest.raises(ValueError, match="integers"):
        tokens_from_array(np.zeros((2, 3)), 4, 2, bos_id=2, pad_id=0)


def test_npz_and_saelens_files_give_the_same_numbers(model, tmp_path):
    sae = random_sae(model.config.d_model, 2 * model.config.d_model)
    # A Gemma Scope-style file written directly with numpy (as the release's params.npz).
    gs = tmp_path / "gemma_scope" / "params.npz"
    gs.parent.mkdir()
    np.savez(gs, **{k: np.asarray(getattr(sae, k)) for k in ("threshold", "W_dec", "W_enc", "b_dec", "b_enc")})
    ours = save_npz(sae, "memory://evals-io/ours")
    lens = save_saelens(sae, "memory://evals-io/saelens")
    data = eval_tokens(model, CFG, texts=TEXTS)
    reports = [evaluate(load_sae(u), model, "res:1", tokens=data, config=CFG)
               for u in (str(gs.parent), ours, lens)]
    direct = evaluate(sae, model, "res:1", tokens=data, config=CFG)
    for r in reports:
        assert r.summary == direct.summary
        np.testing.assert_array_equal(r.frequencies, direct.frequencies)
        assert r.per_position == direct.per_position


def test_errors_name_the_problem_before_any_forward(model, tmp_path, no_forward):
    d = model.config.d_model
    with pytest.raises(ConfigError, match=r"d_in.*64.*res:1.*width 128"):
        evaluate(random_sae(64, 32), model, "res:1", texts=TEXTS, config=CFG)
    with pytest.raises(ConfigError, match=r"attn:0.*width 128"):  # attn is n_heads*head_dim = 128 here; mlp_in ok
        evaluate(random_sae(d, 32)._replace(W_enc=np.zeros((96, 32), np.float32)), model, "attn:0", texts=TEXTS,
                 config=CFG)
    with pytest.raises(ConfigError, match=r"res:7.*layers 0\.\.3"):
        evaluate(random_sae(d, 32), model, "res:7", texts=TEXTS, config=CFG)
    with pytest.raises(ConfigError, match="kind 'resid'"):
        evaluate(random_sae(d, 32), model, "resid:1", texts=TEXTS, config=CFG)
    with pytest.raises(ConfigError, match="mlp_in:L->mlp:L"):
        evaluate(random_sae(d, 32), model, "mlp_in:1->mlp:2", texts=TEXTS, config=CFG)
    with pytest.raises(ConfigError, match="vocab_size 259"):
        evaluate(random_sae(d, 32), model, "res:1", tokens=np.array([[2, 5, 900]]), config=CFG)
    # An npz with keys missing: SAEFormatError naming the file and the key.
    bad = tmp_path / "params.npz"
    np.savez(bad, W_enc=np.zeros((d, 4), np.float32), W_dec=np.zeros((4, d), np.float32))
    with pytest.raises(SAEFormatError, match=r"params\.npz: missing key 'b_enc'"):
        load_sae(str(bad))
    with pytest.raises(ConfigError, match="eval.batch_size"):
        EvalConfig(batch_size=0)


def test_cli_errors_are_one_line(model, tmp_path, capsys, no_forward):
    d = model.config.d_model
    bad = tmp_path / "params.npz"
    np.savez(bad, W_enc=np.zeros((d, 4), np.float32))
    (tmp_path / "t.txt").write_text("hello")
    # a bad SAE file is bad data (exit 3), a bad field or flag a usage error (exit 2)
    assert main(["--sae", str(bad), "--site", "res:1", "--text", str(tmp_path / "t.txt"), "--no-progress"]) == 3
    assert "missing key 'W_dec'" in capsys.readouterr().err
    save_npz(random_sae(64, 8), str(tmp_path / "small"))
    assert main(["--sae", str(tmp_path / "small"), "--site", "res:1", "--text", str(tmp_path / "t.txt")]) == 2
    assert "d_in (W_enc rows) is 64" in capsys.readouterr().err
    assert main(["--sae", str(tmp_path / "small"), "--site", "res:1", "--text", str(tmp_path / "t.txt"),
                 "--set", "batch_size=-1"]) == 2
    assert "eval.batch_size" in capsys.readouterr().err


def test_write_and_read_report(model):
    sae = random_sae(model.config.d_model, 2 * model.config.d_model, seed=4)
    r = evaluate(sae, model, "res:1", texts=TEXTS, config=CFG, sae_name="mem")
    written = write_report(r, "memory://evals-io/report")
    names = {u.rsplit("/", 1)[1] for u in written}
    plots = {f"{p}.{ext}" for p in ("frontier_point", "per_position", "frequency_histogram")
             for ext in ("png", "svg")}
    assert names == {"eval.json", "frequencies.npy"} | plots
    for u in written:
        if u.endswith(".png"):
            assert storage.read_bytes(u)[:8] == b"\x89PNG\r\n\x1a\n"
    doc = json.loads(storage.read_bytes("memory://evals-io/report/eval.json"))
    assert doc["config"]["num_sequences"] == CFG.num_sequences and doc["site"] == "res:1"
    assert doc["summary"]["l0"] == pytest.approx(r.l0)
    back = read_report("memory://evals-io/report")
    assert back.summary == json.loads(r.to_json())["summary"]
    np.testing.assert_array_equal(back.frequencies, r.frequencies)
    assert back.eval_config() == CFG
    m = r.metrics()
    assert {"l0", "fvu", "mse", "delta_loss", "loss_recovered_zero", "r_l0"} <= set(m)
    assert all(isinstance(v, (int, float)) for v in m.values())


def test_cli_end_to_end(model, tmp_path, capsys):
    sae = random_sae(model.config.d_model, 2 * model.config.d_model, seed=5)
    save_npz(sae, str(tmp_path / "sae"))
    docs = tmp_path / "docs"
    docs.mkdir()
    for i, t in enumerate(TEXTS):
        (docs / f"{i}.txt").write_text(t)
    out = tmp_path / "out"
    rc = main(["--sae", str(tmp_path / "sae"), "--site", "res:1", "--text", str(docs), "--out", str(out),
               "--num-sequences", "6", "--context-length", "48", "--batch-size", "4", "--no-progress"])
    assert rc == 0
    printed = json.loads(capsys.readouterr().out)
    direct = evaluate(sae, model, "res:1", texts=list(iter_texts([str(docs)])), config=CFG)
    assert printed["l0"] == direct.l0 and printed["delta_loss"] == direct.delta_loss
    assert (out / "eval.json").exists() and (out / "per_position.png").exists()
    # Token input and a subset of ablations, via --tokens and --ablations.
    buf = io.BytesIO()
    np.save(buf, direct_tokens := eval_tokens(model, CFG, texts=TEXTS).tokens)
    storage.write_bytes_atomic("memory://evals-io/toks.npy", buf.getvalue())
    rc = main(["--sae", str(tmp_path / "sae"), "--site", "res:1", "--tokens", "memory://evals-io/toks.npy",
               "--num-sequences", "6", "--context-length", "48", "--batch-size", "4", "--ablations", "zero",
               "--no-r-l0", "--no-progress"])
    assert rc == 0 and direct_tokens.shape == (6, 48)
    printed = json.loads(capsys.readouterr().out)
    assert "loss_recovered_zero" in printed and "loss_recovered_mean" not in printed and "r_l0" not in printed


def test_cli_reads_yaml_then_flags_then_set(tmp_path):
    """The eval CLI applies its settings in the order every raysae command does."""
    import argparse

    from raysae.evals.cli import _configure, eval_config

    y = tmp_path / "eval.yaml"
    y.write_text("num_sequences: 10\ncontext_length: 64\nbatch_size: 2\n")
    parse = _configure(argparse.ArgumentParser()).parse_args
    base = ["--sae", "x", "--site", "res:1", "--tokens", "t.npy", "--config", str(y)]
    c = eval_config(parse(base + ["--num-sequences", "20", "--set", "num_sequences=30",
                                  "--context-length", "128", "--no-r-l0"]))
    assert (c.num_sequences, c.context_length, c.batch_size, c.r_l0) == (30, 128, 2, False)
    c = eval_config(parse(base + ["--num-sequences", "20"]))
    assert c.num_sequences == 20 and c.context_length == 64


def test_cli_refuses_empty_and_binary_text(model, tmp_path, capsys):
    sae = random_sae(model.config.d_model, 8, seed=6)
    save_npz(sae, str(tmp_path / "sae"))
    (tmp_path / "empty.txt").write_text("")
    (tmp_path / "bin.txt").write_bytes(b"\x89PNG\r\n\x1a\n\x00\xff\xfe")
    base = ["--sae", str(tmp_path / "sae"), "--site", "res:1", "--no-progress",
            "--num-sequences", "2", "--context-length", "16"]
    assert main(base + ["--text", str(tmp_path / "empty.txt")]) == 3
    assert "no token the SAE would read" in capsys.readouterr().err
    assert main(base + ["--text", str(tmp_path / "bin.txt")]) == 3
    err = capsys.readouterr().err
    assert "bin.txt: not UTF-8 text" in err and len(err.strip().splitlines()) == 1
