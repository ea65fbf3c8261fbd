"""The training loop: resume equality, atomic checkpoints, bad input."""

import numpy as np
import pytest

from raysae import storage
from raysae.synthetic import SparseDictionary
from raysae.train import (CheckpointError, TrainConfig, TrainingDataError, latest_checkpoint,
                          load_checkpoint, train)

D = 16
CFG = TrainConfig(width=32, steps=12, batch_size=32, lr=1e-2, lr_warmup_steps=3,
                  sparsity_warmup_steps=5, sparsity_coefficient=1e-2, log_every=4,
                  checkpoint_every=4, keep_checkpoints=2)
SD = SparseDictionary.random(d=D, n_features=24, active=3, seed=0)


def source(start):
    return SD.batches(CFG.batch_size, seed=7, start=start)


class Interrupt(Exception):
    pass


@pytest.mark.parametrize("url", ["local", "memory://ckpt/resume"])
def test_resume_matches_uninterrupted_run(tmp_path, url):
    url = str(tmp_path / "ckpt") if url == "local" else url
    full = train(CFG, source, norm_scalar=2.0)

    def stop_after_8(step, row):
        if step == 8:
            raise Interrupt

    with pytest.raises(Interrupt):
        train(CFG, source, norm_scalar=2.0, checkpoint_url=url, on_metrics=stop_after_8)
    assert latest_checkpoint(url).endswith("step-000000008")
    with pytest.raises(CheckpointError, match="C=2.0, but this run divides by C=999.0"):
        train(CFG, source, norm_scalar=999.0, checkpoint_url=url)  # other data: refused
    resumed = train(CFG, source, norm_scalar=2.0, checkpoint_url=url)
    assert resumed.steps == 12 and resumed.data_position == 12 and resumed.norm_scalar == 2.0
    for a, b in zip(resumed.params, full.params):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    # Only the last `keep_checkpoints` survive.
    names = [n for n in storage.listdir(url) if n.startswith("step-")]
    assert names == ["step-000000008", "step-000000012"]


def test_resume_from_plain_iterable_skips_consumed_batches(tmp_path):
    url = str(tmp_path / "ckpt")
    batches = list(SD.batches(CFG.batch_size, seed=7) for _ in range(1))[0]
    data = [next(batches) for _ in range(12)]
    full = train(CFG, data, norm_scalar=1.0)
    cfg8 = CFG.with_(steps=8)
    train(cfg8, data, norm_scalar=1.0, checkpoint_url=url)
    resumed = train(CFG, data, norm_scalar=1.0, checkpoint_url=url)
    for a, b in zip(resumed.params, full.params):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


def test_checkpoint_contents(tmp_path):
    url = str(tmp_path / "ckpt")
    res = train(CFG, source, norm_scalar=3.0, checkpoint_url=url)
    ck = load_checkpoint(latest_checkpoint(url))
    assert ck.step == 12 and ck.norm_scalar == 3.0 and ck.d == D and ck.config == CFG
    np.testing.assert_array_equal(ck.state.params.W_enc, res.params.W_enc)
    assert int(ck.state.opt_state[1].count) == 12  # Adam's own step count travelled too


def test_nan_batch_raises_and_keeps_last_checkpoint(tmp_path):
    url = str(tmp_path / "ckpt")
    data = [next(SD.batches(32, seed=1, start=i)) for i in range(12)]
    data[6] = data[6].copy()
    data[6][3, 2] = np.nan
    with pytest.raises(TrainingDataError, match=r"batch 6 .*NaN or Inf"):
        train(CFG, data, norm_scalar=1.0, checkpoint_url=url)
    ck = load_checkpoint(latest_checkpoint(url))
    assert ck.step == 4
    assert all(np.all(np.isfinite(np.asarray(a))) for a in ck.state.params)


def test_wrong_width_and_empty_data():
    data = [np.zeros((32, D), np.float32), np.zeros((32, D + 1), np.float32)]
    with pytest.raises(TrainingDataError, match=r"batch 1: width 17 but this SAE expects 16"):
        train(CFG, data, norm_scalar=1.0)
    with pytest.raises(TrainingDataError, match="no batches"):
        train(CFG, [], norm_scalar=1.0)
    with pytest.raises(TrainingDataError, match="2-D"):
        train(CFG, [np.zeros(5, np.float32)], norm_scalar=1.0)
    short = [np.zeros((32, D), np.float32), np.zeros((10, D), np.float32)]
    with pytest.raises(TrainingDataError, match="batch 1: 10 rows but batch_size asks for 32"):
        train(CFG, short, norm_scalar=1.0)


def test_checkpoint_for_other_width_is_refused(tmp_path):
    url = str(tmp_path / "ckpt")
    train(CFG, source, norm_scalar=1.0, checkpoint_url=url)
    other = CFG.with_(width=64)
    with pytest.raises(CheckpointError, match="width=32"):
        train(other, source, norm_scalar=1.0, checkpoint_url=url)


def test_transcoder_batches_split_into_input_and_target():
    cfg = CFG.with_(transcoder=True, steps=4)
    rng = np.random.default_rng(0)
    data = [rng.standard_normal((32, 2 * D)).astype(np.float32) for _ in range(4)]
    res = train(cfg, data, norm_scalar=1.0)
    assert res.params.W_enc.shape == (D, 32) and res.params.W_dec.shape == (32, D)
    # The target half drives the loss: corrupting only it changes the result.
    data2 = [np.concatenate([b[:, :D], 5 * b[:, D:]], 1) for b in data]
    res2 = train(cfg, data2, norm_scalar=1.0)
    assert not np.allclose(res.params.W_dec, res2.params.W_dec)


def test_c_is_required_and_applied_once_on_the_device():
    data = [next(SD.batches(32, seed=3, start=i)) for i in range(4)]
    cfg = CFG.with_(steps=4)
    with pytest.raises(TypeError, match="norm_scalar"):
        train(cfg, data)  # no silent C = 1
    for bad in (0.0, -1.0, float("nan")):
        with pytest.raises(ValueError, match="norm_scalar"):
            train(cfg, data, norm_scalar=bad)
    # Training on x with C = 4 is training on x / 4 with C = 1: C is applied exactly once.
    a = train(cfg, data, norm_scalar=4.0)
    b = train(cfg, [x / np.float32(4.0) for x in data], norm_scalar=1.0)
    for p, q in zip(a.params, b.params):
        np.testing.assert_allclose(p, q, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(a.folded.b_dec, 4.0 * np.asarray(a.params.b_dec), rtol=1e-6)


def test_running_out_of_data_is_flagged():
    data = [next(SD.batches(32, seed=3, start=i)) for i in range(5)]
    res = train(CFG, data, norm_scalar=1.0)
    assert res.steps == 5 and res.truncated and res.data_position == 5
    assert not train(CFG.with_(steps=5), data, norm_scalar=1.0).truncated


def test_the_loop_records_the_sources_position(tmp_path):
    """A source whose positions are global indices (a stream joined late): checkpoints hold
    the position after the last batch trained on, and resume opens the source there."""
    opened = []

    class Source:
        def open(self, position):
            opened.append(position)
            start = 100 if position is None else position

            class It:
                def __init__(self):
                    self.position = start

                def __iter__(self):
                    return self

                def __next__(self):
                    x = next(SD.batches(32, seed=5, start=self.position))
                    self.position += 1
                    return x
            return It()

    url = str(tmp_path / "ckpt")
    cfg8 = CFG.with_(steps=8)
    starts = []
    on_start = lambda step, position: starts.append((step, position))  # noqa: E731
    assert train(cfg8, Source(), norm_scalar=1.0, checkpoint_url=url,
                 on_start=on_start).data_position == 108
    assert load_checkpoint(latest_checkpoint(url)).data_position == 108
    resumed = train(CFG, Source(), norm_scalar=1.0, checkpoint_url=url, on_start=on_start)
    assert opened == [None, 108] and resumed.data_position == 112
    assert starts == [(0, 100), (8, 108)]


def test_a_nan_batch_is_named_by_its_global_index():
    class Late:  # a stream joined live at batch 100
        def open(self, position):
            start = 100 if position is None else position

            class It:
                def __init__(self):
                    self.position = start

                def __iter__(self):
                    return self

                def __next__(self):
                    x = next(SD.batches(32, seed=5, start=self.position))
                    if self.position == 103:
                        x[0, 0] = np.nan
                    self.position += 1
                    return x
            return It()

    with pytest.raises(TrainingDataError, match=r"batch 103 \(step 3\)"):
        train(CFG, Late(), norm_scalar=1.0)


@pytest.mark.parametrize("how", ["state_truncated", "state_flipped", "meta_not_json", "meta_torn"])
def test_a_corrupt_latest_checkpoint_falls_back_to_the_previous(tmp_path, how, caplog):
    url = str(tmp_path / "ckpt")
    full = train(CFG, source, norm_scalar=2.0)
    cfg8 = CFG.with_(steps=8)
    train(cfg8, source, norm_scalar=2.0, checkpoint_url=url)  # step 4 and step 8 kept
    newest = latest_checkpoint(url)
    state, meta = storage.join(newest, "state.npz"), storage.join(newest, "meta.json")
    if how == "state_truncated":
        storage.write_bytes_atomic(state, storage.read_bytes(state)[:100])
    elif how == "state_flipped":
        data = bytearray(storage.read_bytes(state))
        data[len(data) // 2] ^= 0x01
        storage.write_bytes_atomic(state, bytes(data))
    elif how == "meta_not_json":
        storage.write_bytes_atomic(meta, b"{torn")
    else:
        storage.write_bytes_atomic(meta, storage.read_bytes(meta)[:-40])
    with caplog.at_level("WARNING"):
        resumed = train(CFG, source, norm_scalar=2.0, checkpoint_url=url)
    assert "step-000000008" in caplog.text  # the bad file is named
    assert resumed.steps == 12
    for a, b in zip(resumed.params, full.params):  # from step 4: still the uninterrupted run
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


def test_when_no_checkpoint_loads_the_error_names_them_all(tmp_path):
    from raysae.train.checkpoint import CorruptCheckpoint, checkpoints

    url = str(tmp_path / "ckpt")
    train(CFG.with_(steps=8), source, norm_scalar=2.0, checkpoint_url=url)
    for ck in checkpoints(url):
        storage.write_bytes_atomic(storage.join(ck, "state.npz"), b"junk")
    with pytest.raises(CorruptCheckpoint, match=r"step-000000008/state\.npz.*step-000000004/state\.npz"):
        train(CFG, source, norm_scalar=2.0, checkpoint_url=url)


def test_a_checkpoint_that_was_never_completed_is_ignored(tmp_path):
    """A disk that filled up between state.npz and meta.json leaves a directory without
    meta.json: not a checkpoint, so a run with nothing else starts afresh."""
    url = str(tmp_path / "ckpt")
    storage.write_bytes_atomic(storage.join(url, "step-000000004", "state.npz"), b"partial")
    res = train(CFG.with_(steps=4), source, norm_scalar=2.0,
                checkpoint_url=url)
    assert res.steps == 4 and load_checkpoint(latest_checkpoint(url)).step == 4
