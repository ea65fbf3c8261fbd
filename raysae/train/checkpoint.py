"""Atomic checkpoints of a training run on any fsspec URL, and resume.

Layout under a run's checkpoint URL::

    step-000001000/state.npz    every leaf of TrainState (params, optax state, counters)
    step-000001000/meta.json    step, C, d, the TrainConfig, the data position (and a
                                pack's member configs: its leaves are stacked)
    latest                      name of the newest complete checkpoint

Each file is written atomically and `meta.json` is written after `state.npz`, then
`latest` is flipped: a run killed at any moment leaves the previous checkpoint intact and
`latest` pointing at a complete one. Leaves are stored as plain host arrays, so a
checkpoint from a sharded run loads into an unsharded one and back (callers re-shard).
Checkpoints from before the β₁ = 0 optimiser dropped Adam's first moment still load.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import logging
import jax
import numpy as np
import optax

from raysae import storage
from raysae.config import from_dict, to_dict
from raysae.train.config import TrainConfig
from raysae.train.optimizer import ScaleByAdamB1ZeroState
from raysae.train.pack import PACKED_FIELDS, Pack, stack
from raysae.train.step import TrainState, init_state

LATEST = "latest"
log = logging.getLogger(__name__)


class CheckpointError(ValueError):
    """A checkpoint is missing, incomplete or does not match the run; names the file."""


class CorruptCheckpoint(CheckpointError):
    """A checkpoint's files are unreadable or altered (an older one may still be good)."""


@dataclasses.dataclass
class Checkpoint:
    """One loaded checkpoint: the state and what the run needs to continue exactly."""

    state: TrainState
    step: int
    norm_scalar: float
    d: int
    d_out: int
    config: TrainConfig
    data_position: int            # the data source's position after the last batch trained on
    url: str
    pack: Pack | None = None      # a packed run's members (the state is stacked)


def _name(step: int) -> str:
    return f"step-{step:09d}"


def host_array(x) -> np.ndarray:
    """`x` as a host numpy array (gathered first if it is sharded across processes)."""
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
        from jax.experimental import multihost_utils
        x = multihost_utils.process_allgather(x, tiled=True)
    return np.asarray(x)


def save_checkpoint(url: str, state: TrainState, *, config: TrainConfig | Pack,
                    norm_scalar: float, d: int, d_out: int, data_position: int,
                    write: bool = True) -> str:
    """Write a checkpoint of `state` under `url`, keeping the last `config.keep_checkpoints`.

    In a multi-process job every process must call this (gathering is collective); only
    the one with `write=True` touches storage. For a `Pack` the state is the stacked one.

    Returns:
        The checkpoint's URL (``<url>/step-NNNNNNNNN``).
    """
    leaves = [host_array(x) for x in jax.tree_util.tree_leaves(state)]
    step = int(np.max(host_array(state.step)))  # a pack's members are at the same step
    name = _name(step)
    ckpt_url = storage.join(url, name)
    if not write:
        return ckpt_url
    buf = io.BytesIO()
    np.savez(buf, **{f"leaf_{i:04d}": a for i, a in enumerate(leaves)})
    data = buf.getvalue()
    storage.write_bytes_atomic(storage.join(ckpt_url, "state.npz"), data)
    pack = config if isinstance(config, Pack) else None
    config = pack.base if pack else config
    meta = {"step": step, "norm_scalar": float(norm_scalar), "d": int(d), "d_out": int(d_out),
            "config": to_dict(config), "data_position": int(data_position),
            "num_leaves": len(leaves), "state_sha256": hashlib.sha256(data).hexdigest()}
    if pack is not None:
        meta["members"] = [to_dict(c) for c in pack.members]
    storage.write_bytes_atomic(storage.join(ckpt_url, "meta.json"),
                               json.dumps(meta, indent=2).encode())
    storage.write_bytes_atomic(storage.join(url, LATEST), name.encode())
    _prune(url, keep=config.keep_checkpoints)
    return ckpt_url


def _prune(url: str, keep: int) -> None:
    names = sorted(n for n in storage.listdir(url) if n.startswith("step-"))
    for old in names[:-keep]:
        storage.remove(storage.join(url, old), recursive=True)


def checkpoints(url: str) -> list[str]:
    """URLs of the checkpoint directories under `url`, newest first."""
    names = sorted((n for n in storage.listdir(url) if n.startswith("step-")), reverse=True)
    return [storage.join(url, n) for n in names]


def latest_checkpoint(url: str) -> str | None:
    """URL of the newest complete checkpoint under `url`, or None if there is none."""
    pointer = storage.join(url, LATEST)
    if not storage.exists(pointer):
        return None
    name = storage.read_bytes(pointer).decode().strip()
    ckpt = storage.join(url, name)
    if not storage.exists(storage.join(ckpt, "meta.json")):
        raise CheckpointError(f"{pointer}: points at {name}, which has no meta.json")
    return ckpt


def load_latest(url: str, config: TrainConfig | Pack | None = None) -> Checkpoint | None:
    """The newest checkpoint under `url` that loads, falling back to older ones.

    A directory without meta.json is a checkpoint that was never completed (meta.json is
    written last) and is ignored; a corrupt one is skipped with a warning naming its file;
    one that does not fit the run (another width, say) is an error at once.

    Returns:
        The checkpoint, or None when there is none at all.
    Raises:
        CorruptCheckpoint naming every file tried when none of them loads.
    """
    candidates = [c for c in checkpoints(url) if storage.exists(storage.join(c, "meta.json"))]
    try:
        newest = latest_checkpoint(url)
    except CheckpointError as e:
        log.warning("%s", e)
        newest = None
    if newest is not None:
        candidates = [newest] + [c for c in candidates if c != newest]
    problems = []
    for ckpt in candidates:
        try:
            return load_checkpoint(ckpt, config)
        except CorruptCheckpoint as e:
            log.warning("skipping a corrupt checkpoint: %s", e)
            problems.append(str(e))
    if problems:
        raise CorruptCheckpoint("no checkpoint under " + url + " loads: " + "; ".join(problems))
    return None


def _is_lean(node) -> bool:
    return isinstance(node, ScaleByAdamB1ZeroState)


def _template_for(template: TrainState, num_arrays: int):
    """(the tree a checkpoint of `num_arrays` leaves loads into, the map to today's state).

    Checkpoints written before the β₁ = 0 optimiser stopped storing Adam's first moment hold
    optax's ScaleByAdamState (count, μ, ν): their μ (the last gradient, never read with
    β₁ = 0) is dropped on load, so those runs resume unchanged.
    """
    same = lambda state: state  # noqa: E731
    if num_arrays == len(jax.tree_util.tree_leaves(template)):
        return template, same
    legacy = jax.tree.map(
        lambda n: optax.ScaleByAdamState(count=n.count, mu=n.nu, nu=n.nu) if _is_lean(n) else n,
        template, is_leaf=_is_lean)
    if num_arrays != len(jax.tree_util.tree_leaves(legacy)):
        return template, same
    is_adam = lambda n: isinstance(n, optax.ScaleByAdamState)  # noqa: E731

    def from_legacy(state):
        return jax.tree.map(
            lambda n: ScaleByAdamB1ZeroState(count=n.count, nu=n.nu) if is_adam(n) else n,
            state, is_leaf=is_adam)

    return legacy, from_legacy


def load_checkpoint(ckpt_url: str, config: TrainConfig | Pack | None = None) -> Checkpoint:
    """Load one checkpoint directory.

    Args:
        ckpt_url: a ``step-N`` directory (see `latest_checkpoint`).
        config: the run's recipe, which must agree on width and transcoder (default: the
            checkpoint's own); a `Pack` must also agree on its members' λ, lr and seed.
    Returns:
        A `Checkpoint`.
    Raises:
        CheckpointError naming the file when it is missing, incomplete or does not fit.
    """
    meta_url = storage.join(ckpt_url, "meta.json")
    try:
        meta = json.loads(storage.read_bytes(meta_url))
        saved = from_dict(TrainConfig, meta["config"])
        for key in ("step", "norm_scalar", "d", "d_out", "data_position"):
            meta[key]  # noqa: B018 - every field must be there
        saved_pack = Pack(tuple(from_dict(TrainConfig, c) for c in meta["members"])) \
            if "members" in meta else None
    except FileNotFoundError:
        raise CorruptCheckpoint(f"{meta_url}: missing (incomplete checkpoint)") from None
    except (ValueError, KeyError, TypeError) as e:  # JSON, missing fields, a bad config
        raise CorruptCheckpoint(f"{meta_url}: unreadable ({type(e).__name__}: {e})") from None
    _check_pack(meta_url, saved_pack, config)
    config = saved if config is None else config
    config = config.base if isinstance(config, Pack) else config
    if config.width != saved.width or config.transcoder != saved.transcoder:
        raise CheckpointError(f"{meta_url}: checkpoint has width={saved.width}, "
                              f"transcoder={saved.transcoder}; run wants width={config.width}, "
                              f"transcoder={config.transcoder}")
    template = init_state(config, meta["d"], d_out=meta["d_out"], key=jax.random.PRNGKey(0))
    if saved_pack is not None:
        template = stack([template] * len(saved_pack))
    state_url = storage.join(ckpt_url, "state.npz")
    try:
        data = storage.read_bytes(state_url)
    except FileNotFoundError:
        raise CorruptCheckpoint(f"{state_url}: missing") from None
    want = meta.get("state_sha256")
    if want is not None and hashlib.sha256(data).hexdigest() != want:
        raise CorruptCheckpoint(f"{state_url}: sha256 differs from meta.json's (altered or torn)")
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as z:
            arrays = [z[f"leaf_{i:04d}"] for i in range(len(z.files))]
    except KeyError as e:
        raise CorruptCheckpoint(f"{state_url}: missing key {e}") from None
    except Exception as e:  # noqa: BLE001 - zipfile / zlib / numpy raise many types
        raise CorruptCheckpoint(f"{state_url}: unreadable ({type(e).__name__}: {e})") from None
    template, from_legacy = _template_for(template, len(arrays))
    leaves, treedef = jax.tree_util.tree_flatten(template)
    if len(arrays) != len(leaves):
        raise CheckpointError(f"{state_url}: {len(arrays)} arrays but this optimiser needs "
                              f"{len(leaves)} (different grad_clip_norm or optimiser?)")
    for i, (a, t) in enumerate(zip(arrays, leaves)):
        if a.shape != t.shape:
            raise CheckpointError(f"{state_url}: leaf_{i:04d} has shape {a.shape}, expected {t.shape}")
    state = from_legacy(jax.tree_util.tree_unflatten(
        treedef, [jax.numpy.asarray(a, dtype=t.dtype) for a, t in zip(arrays, leaves)]))
    return Checkpoint(state=state, step=meta["step"], norm_scalar=meta["norm_scalar"],
                      d=meta["d"], d_out=meta["d_out"], config=saved,
                      data_position=meta["data_position"], url=ckpt_url, pack=saved_pack)


def _check_pack(meta_url: str, saved: Pack | None, run) -> None:
    """A packed checkpoint resumes only the same pack; an unpacked one only a lone run."""
    if run is None:
        return
    wanted = run if isinstance(run, Pack) else None
    if (saved is None) != (wanted is None):
        raise CheckpointError(f"{meta_url}: a {'packed' if saved else 'lone'} checkpoint, but "
                              f"this run trains {'a pack' if wanted else 'one SAE'}")
    if saved is None:
        return
    key = [tuple(getattr(c, f) for f in PACKED_FIELDS) for c in saved.members]
    want = [tuple(getattr(c, f) for f in PACKED_FIELDS) for c in wanted.members]
    if key != want:
        raise CheckpointError(f"{meta_url}: checkpoint's pack has members "
                              f"({', '.join(PACKED_FIELDS)}) {key}; this run's {want}")
