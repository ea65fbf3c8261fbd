"""Packed SAEs: K members trained in one vmapped step equal the same SAEs trained alone."""

import numpy as np
import pytest

from raysae.config import ConfigError
from raysae.synthetic import SparseDictionary
from raysae.train import CheckpointError, Pack, TrainConfig, latest_checkpoint, load_checkpoint, train

D = 16
BASE = TrainConfig(recipe="small-budget", width=32, steps=12, batch_size=32, log_every=4,
                   checkpoint_every=4)
# λ, lr and seed differ per member; everything else is the shared recipe
MEMBERS = [BASE.with_(sparsity_coefficient=1e-3), BASE.with_(sparsity_coefficient=3e-2, lr=1e-3),
           BASE.with_(sparsity_coefficient=1e-1, seed=5)]
SD = SparseDictionary.random(d=D, n_features=24, active=3, seed=0)


def source(start):
    return SD.batches(BASE.batch_size, seed=7, start=start)


def close(a, b):
    for x, y in zip(a, b):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-5, atol=1e-6)


def test_packed_members_equal_the_same_saes_trained_alone():
    packed = train(Pack(MEMBERS), source, norm_scalar=2.0)
    assert packed.params.W_enc.shape == (3, D, 32) and packed.steps == 12
    firsts = []
    for i, config in enumerate(MEMBERS):
        alone = train(config, source, norm_scalar=2.0)
        got = packed.member(i)
        close(got.params, alone.params)
        close(got.folded, alone.folded)
        assert [r["step"] for r in got.history] == [r["step"] for r in alone.history] == [4, 8, 12]
        for a, b in zip(got.history, alone.history):  # each member's own metrics
            assert a["sparsity_coefficient"] == pytest.approx(b["sparsity_coefficient"])
            assert a["l0"] == pytest.approx(b["l0"], rel=1e-4) and a["lr"] == pytest.approx(b["lr"])
        firsts.append(np.asarray(got.params.W_enc))
    # the members really are different SAEs (own λ / lr / init), not one SAE three times
    assert not np.allclose(firsts[0], firsts[1]) and not np.allclose(firsts[0], firsts[2])


class Interrupt(Exception):
    pass


def test_a_packed_run_resumes_from_its_stacked_checkpoint(tmp_path):
    url = str(tmp_path / "ckpt")
    full = train(Pack(MEMBERS), source, norm_scalar=2.0)

    def stop_after_8(step, row):
        if step == 8:
            raise Interrupt

    with pytest.raises(Interrupt):
        train(Pack(MEMBERS), source, norm_scalar=2.0, checkpoint_url=url, on_metrics=stop_after_8)
    ck = load_checkpoint(latest_checkpoint(url))
    assert ck.step == 8 and len(ck.pack) == 3 and ck.state.params.W_enc.shape == (3, D, 32)
    with pytest.raises(CheckpointError, match="this run trains one SAE"):
        train(MEMBERS[0], source, norm_scalar=2.0, checkpoint_url=url)
    other = Pack([MEMBERS[0], MEMBERS[2], MEMBERS[1]])  # the same SAEs in another order
    with pytest.raises(CheckpointError, match="checkpoint's pack has members"):
        train(other, source, norm_scalar=2.0, checkpoint_url=url)
    resumed = train(Pack(MEMBERS), source, norm_scalar=2.0, checkpoint_url=url)
    assert resumed.steps == 12 and resumed.data_position == 12
    close(resumed.params, full.params)


def test_members_may_differ_only_in_lambda_lr_and_seed():
    with pytest.raises(ConfigError, match="member 1 has width=64"):
        Pack([BASE, BASE.with_(width=64)])
    with pytest.raises(ConfigError, match="member 1 has batch_size=64"):
        Pack([BASE, BASE.with_(batch_size=64)])


def test_a_packed_state_is_split_like_its_members_behind_the_member_axis():
    from jax.sharding import PartitionSpec as P

    from raysae.train.mesh import state_specs

    specs = state_specs(Pack(MEMBERS).init_state(D))
    assert specs.params.W_enc == P(None, None, "model") and specs.params.W_dec == P(None, "model", None)
    assert specs.params.b_enc == P(None, "model") and specs.params.b_dec == P(None)
    assert specs.last_fired == P(None, "model") and specs.step == P()
    assert specs.opt_state[0].nu.W_enc == P(None, None, "model")  # Adam's moment too
