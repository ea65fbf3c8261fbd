"""Cache job pieces without Ray: config checks, input formats and errors, chunking, the shuffle plan."""

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from raysae import storage
from raysae.activations import shuffle, sources
from raysae.activations.config import CacheConfig
from raysae.activations.pipeline import row_mask
from raysae.config import ConfigError, from_dict
from raysae.lm import ByteTokenizer, LMConfig, loss_mask

LM = LMConfig(vocab_size=259, d_model=8, n_layers=2, n_heads=2, n_kv_heads=1, head_dim=4, d_mlp=16,
              query_pre_attn_scalar=4, sliding_window=8)
TOK = ByteTokenizer()


def cfg(**kw):
    base = dict(inputs=["x"], output="memory://out", context_length=8, rows_per_shard=16)
    base.update(kw)
    return CacheConfig(**base)


def test_config_errors_name_the_field():
    with pytest.raises(ConfigError, match="rows_per_shard"):
        cfg(rows_per_shard=4)
    with pytest.raises(ConfigError, match="sites.*res:1.*twice"):
        cfg(sites=["res:1", "1:res"])
    with pytest.raises(ConfigError, match=r"sites\[0\].*'bogus'"):
        cfg(sites=["bogus:1"])
    with pytest.raises(ConfigError, match="inputs"):
        cfg(inputs=[])
    with pytest.raises(ConfigError, match="model_layers"):
        cfg(model_layers=2)
    with pytest.raises(ConfigError, match="batch_size"):
        from_dict(CacheConfig, {"inputs": ["a"], "output": "b", "batch_size": "many"})
    assert cfg(output="gs://b/c").site_url("transcoder:3") == "gs://b/c/transcoder_3"


def test_chunk_puts_bos_first_and_cuts_documents():
    ids = list(range(10, 24))  # 14 tokens, T=6 -> pieces of 5: 5, 5, 4
    out = sources.chunk([2] + ids, 6, bos_id=2, pad_id=0, min_tokens=1)
    assert out.shape == (3, 6) and (out[:, 0] == 2).all()
    assert list(out[0, 1:]) == ids[:5] and list(out[2, 1:5]) == ids[10:] and out[2, 5] == 0
    assert len(sources.chunk(ids, 6, 2, 0, min_tokens=5)) == 2  # the 4-token tail is dropped
    assert len(sources.chunk(ids + [0, 0], 6, 2, 0, min_tokens=1)) == 3  # trailing pads stripped


def test_row_mask_matches_the_lm_loss_mask():
    t = np.array([[2, 5, 6, 1, 0, 0], [2, 9, 9, 9, 9, 9]], np.int32)
    want = np.asarray(loss_mask(t, LM, t != 0))
    assert (row_mask(t, LM) == want).all() and row_mask(t, LM).sum() == 7


def _write(url, data: bytes):
    storage.write_bytes_atomic(url, data)
    return url


def test_formats_read_the_same_documents(tmp_path):
    docs = ["hello world", "second doc here", "x"]
    root = "memory://fmt"
    _write(f"{root}/a.jsonl", "\n".join(json.dumps({"body": d}) for d in docs).encode())
    buf = pa.BufferOutputStream()
    pq.write_table(pa.table({"body": docs}), buf)
    _write(f"{root}/a.parquet", buf.getvalue().to_pybytes())
    np.save(tmp_path / "t.npy", np.array(TOK.encode(docs[1]), np.int32))
    cfg_ = cfg(text_field="body", inputs=[f"{root}/*"])
    files = sources.resolve_inputs(cfg_)
    assert [f.format for f in files] == ["jsonl", "parquet"]
    seqs = [sources.file_sequences(f, cfg_, TOK, LM) for f in files]
    assert (seqs[0][0] == seqs[1][0]).all() and list(seqs[0][1]) == [0, 0, 1, 1, 1, 2]
    tok_file = sources.InputFile(str(tmp_path / "t.npy"), "tokens", 1)
    s, _ = sources.file_sequences(tok_file, cfg_, None, LM)
    text_file = sources.InputFile(_write(f"{root}/b.txt", docs[1].encode()), "text", 1)
    assert (s == sources.file_sequences(text_file, cfg_, TOK, LM)[0]).all()


@pytest.mark.parametrize("name, data, fmt, field, match", [
    ("empty.txt", b"  \n ", "text", "text", "empty text"),
    ("bad.txt", b"\xff\xfe\x00abc", "text", "text", "not UTF-8"),
    ("bad.jsonl", b'{"text": "ok"}\n{nope', "jsonl", "text", r"bad.jsonl:2: not valid JSON"),
    ("nofield.jsonl", b'{"body": "ok"}', "jsonl", "text", "no field 'text'"),
    ("ids.npy", None, "tokens", "text", r"token ids must be integers in \[0, 259\)"),
])
def test_bad_input_is_named(name, data, fmt, field, match):
    url = f"memory://bad/{name}"
    if data is None:
        import io
        b = io.BytesIO()
        np.save(b, np.array([5, 300], np.int32))
        data = b.getvalue()
    _write(url, data)
    with pytest.raises(sources.InputError, match=match) as e:
        sources.file_sequences(sources.InputFile(url, fmt, len(data)), cfg(text_field=field), TOK, LM)
    assert name in str(e.value)


def test_resolve_inputs_checks_files_before_work(tmp_path):
    with pytest.raises(sources.InputError, match="missing.txt: file not found"):
        sources.resolve_inputs(cfg(inputs=[str(tmp_path / "missing.txt")]))
    (tmp_path / "e.txt").write_text("")
    with pytest.raises(sources.InputError, match="e.txt: empty file"):
        sources.resolve_inputs(cfg(inputs=[str(tmp_path / "e.txt")]))
    with pytest.raises(sources.InputError, match="matches no files"):
        sources.resolve_inputs(cfg(inputs=[str(tmp_path / "*.jsonl")]))
    (tmp_path / "d").mkdir()
    for i in range(3):
        (tmp_path / "d" / f"{i}.txt").write_text("ab" * (i + 1))
    got = sources.resolve_inputs(cfg(inputs=[str(tmp_path / "d")], max_input_bytes=7))
    assert [f.url.rsplit("/", 1)[1] for f in got] == ["0.txt", "1.txt"]  # 2 + 4 bytes; 6 more would pass 7


def test_stdlib_corpus_is_sorted_deterministic_and_capped():
    a = sources.stdlib_files(max_bytes=300_000)
    assert a == sources.stdlib_files(max_bytes=300_000) and len(a) > 5
    assert all(p.endswith(".py") and "/test/" not in p for p in a)
    import os
    assert sum(os.path.getsize(p) for p in a) <= 300_000
    files = sources.resolve_inputs(cfg(inputs=["python-stdlib"], max_input_bytes=50_000))
    assert [f.url for f in files] == a[:len(files)] and files[0].format == "text"


def test_plan_packs_every_sequence_once_under_the_bucket_size():
    rng = np.random.default_rng(0)
    counts = rng.integers(0, 8, 200)
    plan = shuffle.plan_shards(counts, rows_per_shard=30, seed=3)
    assert (plan.rows <= 30).all() and plan.rows.sum() == counts.sum()
    assert sorted(plan.order.tolist()) == np.flatnonzero(counts).tolist()
    assert (plan.rows[:-1] > 30 - 8).all()  # greedy: a shard closes only when the next would not fit
    again = shuffle.plan_shards(counts, 30, seed=3)
    assert (again.order == plan.order).all() and (again.bounds == plan.bounds).all()
    assert not (shuffle.plan_shards(counts, 30, seed=4).order == plan.order).all()
    unshuffled = shuffle.plan_shards(counts, 30, seed=3, shuffle=False)
    assert (np.diff(unshuffled.order) > 0).all()


def test_row_sources_follow_the_shard_permutation():
    mask = np.zeros((4, 5), bool)
    mask[0, 1:3] = mask[2, 1:5] = mask[3, 1] = True
    plan = shuffle.plan_shards(mask.sum(1), rows_per_shard=6, seed=1)
    for k in range(plan.n_shards):
        seq, pos = shuffle.row_sources(plan, mask, k, seed=1)
        ids = seq * 10 + pos  # a fake activation that names its token
        unshuffled = np.concatenate([s * 10 + np.flatnonzero(mask[s]) for s in plan.sequences(k)])
        assert (shuffle.shuffle_rows(unshuffled, 1, k) == ids).all()
        assert mask[seq, pos].all() and len(seq) == plan.rows[k]


def _cli_args(argv):
    import argparse

    from raysae.activations import cli

    sub = argparse.ArgumentParser(prog="raysae").add_subparsers(dest="cmd")
    cli.add_parser(sub)
    return cli, sub._name_parser_map["cache"].parse_args(argv)


def test_cli_builds_the_config_from_yaml_flags_and_set(tmp_path):
    y = tmp_path / "job.yaml"
    y.write_text("inputs: [python-stdlib]\noutput: memory://o\nsites: ['res:1']\ncontext_length: 64\n")
    cli, args = _cli_args([str(y), "--site", "mlp:2", "--site", "transcoder:0", "--batch-size", "2",
                           "--set", "seed=7", "--set", "dtype=bfloat16"])
    c = cli.cache_config(args)
    assert c.sites == ["mlp:2", "transcoder:0"] and c.batch_size == 2 and c.seed == 7
    assert c.context_length == 64 and c.dtype == "bfloat16" and c.inputs == ["python-stdlib"]
    cli, args = _cli_args([str(y), "--set", "rows_per_shard=3"])
    with pytest.raises(ConfigError, match="job.yaml: rows_per_shard"):
        cli.cache_config(args)


def test_cli_reports_bad_jobs_in_one_line_with_their_kind(tmp_path, capsys):
    from raysae.activations import cli

    assert cli.main(["--input", str(tmp_path / "none.txt"), "--output", str(tmp_path / "o"),
                     "--site", "res:1"]) == 3  # bad data
    assert "none.txt: file not found" in capsys.readouterr().err
    assert cli.main(["--input", "python-stdlib", "--output", str(tmp_path / "o"),
                     "--site", "res:99"]) == 2
    assert "res:99" in capsys.readouterr().err
