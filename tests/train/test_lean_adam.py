"""β₁ = 0 Adam without the first moment: optax's updates bit for bit, a third less state,
and checkpoints written with optax's state still resume.

Whole jitted train steps are compared bit for bit in a subprocess (this file run as a
script) with XLA_FLAGS=--xla_cpu_max_isa=AVX: with FMA instructions XLA's CPU backend
contracts a·b + c differently in differently fused graphs (the two optimisers fuse the
gradient's producers differently), which moves a few params by one ulp per step. Without
FMA the two steps agree in every bit; in-process (with FMA) the transform alone does.
"""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax

from raysae.sae.model import loss_fn
from raysae.sae.params import SAEParams
from raysae.train import TrainConfig, init_state, latest_checkpoint, load_checkpoint, train
from raysae.train.checkpoint import save_checkpoint
from raysae.train.optimizer import (ScaleByAdamB1ZeroState, make_optimizer,
                                    project_decoder_grads, project_params,
                                    scale_by_adam_b1_zero)
from raysae.train.schedules import lr_schedule

D, M, B = 16, 64, 32


def _bits(tree):
    return [np.asarray(x).view(np.uint32) for x in jax.tree.leaves(tree)]


def _reference_optimizer(config, lr=None):
    """The recipe's chain with optax.scale_by_adam(b1=0) (what make_optimizer used before)."""
    return optax.chain(*([project_decoder_grads()] if config.project_decoder_grads else []),
                       optax.scale_by_adam(b1=0.0, b2=config.adam_b2, eps=config.adam_eps),
                       optax.scale_by_learning_rate(lr_schedule(config, lr)))


def _train_steps(config, xs, reference: bool):
    """Jitted `train_step`s from `init_state`, with the reference optimiser patched in."""
    from raysae.train import step as step_module
    saved = step_module.make_optimizer
    if reference:
        step_module.make_optimizer = _reference_optimizer
    try:
        state = step_module.init_state(config, D)
        fn = jax.jit(lambda s, x: step_module.train_step(s, x, None, config))
        out = []
        for x in xs:
            state, _ = fn(state, x)
            out.append(state)
        return out
    finally:
        step_module.make_optimizer = saved


def _whole_steps_differ() -> dict:
    """Per projection setting: how many bits of params and ν differ after each of 6 steps."""
    rng = np.random.default_rng(0)
    xs = [jnp.asarray(rng.normal(size=(B, D)), jnp.float32) for _ in range(6)]
    res = {}
    for proj in (True, False):
        config = TrainConfig(width=M, batch_size=B, lr=3e-3, lr_warmup_steps=3,
                             threshold_init=0.05, project_decoder_grads=proj)
        ours, ref = _train_steps(config, xs, False), _train_steps(config, xs, True)
        res[str(proj)] = {
            "params": [sum(int(np.sum(x != y)) for x, y in zip(_bits(a.params), _bits(b.params)))
                       for a, b in zip(ours, ref)],
            "nu": [sum(int(np.sum(x != y)) for x, y in zip(_bits(a.opt_state[-2].nu),
                                                       _bits(b.opt_state[-2].nu)))
                   for a, b in zip(ours, ref)],
            "moved": float(np.abs(np.asarray(ours[-1].params.W_dec)
                                  - np.asarray(init_state(config, D).params.W_dec)).max()),
            "lean": type(ours[-1].opt_state[-2]).__name__,
            "count": int(ours[-1].opt_state[-2].count)}
    return res


def test_b1_zero_train_steps_equal_optax_scale_by_adam_bit_for_bit():
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_cpu_max_isa=AVX",
               PYTHONPATH=os.pathsep.join([root] + [p for p in [os.environ.get("PYTHONPATH")]
                                                    if p]))
    out = subprocess.run([sys.executable, __file__], env=env, capture_output=True, text=True,
                         check=True, cwd=root)
    res = json.loads(out.stdout.strip().splitlines()[-1])
    for proj in ("True", "False"):
        r = res[proj]
        assert r["params"] == [0] * 6 and r["nu"] == [0] * 6, (proj, r)
        assert r["moved"] > 1e-4 and r["lean"] == "ScaleByAdamB1ZeroState" and r["count"] == 6


def test_b1_zero_transform_equals_optax_scale_by_adam_bit_for_bit_in_process():
    """The transform on its own (on SAE gradients along a trajectory, both jitted)."""
    config = TrainConfig(width=M, batch_size=B, threshold_init=0.05)
    ours = scale_by_adam_b1_zero(config.adam_b2, config.adam_eps)
    theirs = optax.scale_by_adam(0.0, config.adam_b2, config.adam_eps)
    params = init_state(config, D).params
    s_ours, s_theirs = ours.init(params), theirs.init(params)
    grad = jax.jit(jax.grad(lambda p, x: loss_fn(p, x, sparsity_coefficient=1e-2)[0]))
    up_ours, up_theirs = jax.jit(ours.update), jax.jit(theirs.update)
    rng = np.random.default_rng(0)
    for _ in range(6):
        g = grad(params, jnp.asarray(rng.normal(size=(B, D)), jnp.float32))
        u_ours, s_ours = up_ours(g, s_ours)
        u_theirs, s_theirs = up_theirs(g, s_theirs)
        assert all(np.array_equal(x, y) for x, y in zip(_bits(u_ours), _bits(u_theirs)))
        assert all(np.array_equal(x, y) for x, y in zip(_bits(s_ours.nu), _bits(s_theirs.nu)))
        params = project_params(optax.apply_updates(params, jax.tree.map(lambda u: -3e-3 * u,
                                                                         u_theirs)))
    assert int(s_ours.count) == int(s_theirs.count) == 6


def test_b1_zero_state_holds_no_first_moment_and_b1_nonzero_keeps_optax():
    params = init_state(TrainConfig(width=M), D).params
    n = sum(x.size for x in jax.tree.leaves(params))
    lean = make_optimizer(TrainConfig(width=M)).init(params)
    full = make_optimizer(TrainConfig(width=M, adam_b1=0.9)).init(params)
    size = lambda s: sum(x.size for x in jax.tree.leaves(s))  # noqa: E731
    assert size(lean) == n + 2        # ν + Adam's count + the schedule's count
    assert size(full) == 2 * n + 2    # μ, ν
    assert isinstance(full[1], optax.ScaleByAdamState)
    assert isinstance(lean[1].nu, SAEParams)  # sharded like the params (mesh.state_specs)


def test_a_checkpoint_with_optax_adam_state_resumes_exactly(tmp_path):
    config = TrainConfig(width=M, batch_size=B, lr=3e-3, lr_warmup_steps=0, steps=6,
                         checkpoint_every=3, threshold_init=0.05)
    rng = np.random.default_rng(1)
    data = [rng.normal(size=(B, D)).astype(np.float32) for _ in range(6)]
    whole = train(config, data, norm_scalar=1.0)
    url = f"file://{tmp_path}/ckpt"
    half = train(config.with_(steps=3), data, norm_scalar=1.0, checkpoint_url=url)
    # Rewrite the checkpoint as the old optimiser stored it: optax's (count, μ, ν).
    s = half.state
    old = s._replace(opt_state=(s.opt_state[0], optax.ScaleByAdamState(
        count=s.opt_state[1].count, mu=jax.tree.map(jnp.ones_like, s.opt_state[1].nu),
        nu=s.opt_state[1].nu), s.opt_state[2]))
    save_checkpoint(url, old, config=config, norm_scalar=1.0, d=D, d_out=D, data_position=3)
    ck = load_checkpoint(latest_checkpoint(url))
    assert isinstance(ck.state.opt_state[1], ScaleByAdamB1ZeroState)
    assert np.array_equal(ck.state.opt_state[1].nu.W_dec, s.opt_state[1].nu.W_dec)
    resumed = train(config, data, norm_scalar=1.0, checkpoint_url=url)
    assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(resumed.params),
                                                    jax.tree.leaves(whole.params)))


if __name__ == "__main__":
    print(json.dumps(_whole_steps_differ()))
