"""Sharded training: the train step jitted over a (data, model) mesh, global batches, prefetch.

`ShardedStep` wraps `step.train_step` in `jax.jit` with in/out shardings from
`mesh.state_specs` (params, Adam moments and `last_fired` split on "model", the batch on
"data"; metrics replicated) and the state donated. The math is the single-device step:
XLA's SPMD partitioner inserts the collectives (see mesh.py for which ones).

Batches become global arrays with `jax.make_array_from_process_local_data`: each process
hands over either the whole global batch (every process reads the same stream; each keeps
its rows) or only its own rows (`local_rows` says which). `prefetch` runs that placement
in a background thread a few batches ahead, so reading the next batch and its
host-to-device copy overlap with the step running on the devices.

`train_sharded` plugs all this into `loop.train` (via `step_fn=` and `place=`): the same
loop, checkpoints (gathered to host arrays, so they load unsharded and back) and resume.
In a multi-process job every process calls it with the same config after
`distributed.initialize`; only process 0 writes checkpoints.
"""

from __future__ import annotations

import itertools
import queue
import threading
from typing import Any, Callable, Iterable, Iterator

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from raysae.train.checkpoint import _host
from raysae.train.config import TrainConfig
from raysae.train.loop import TrainResult, train
from raysae.train.mesh import BATCH_SPEC, Plan, mesh_for, shardings, state_specs
from raysae.train.step import TrainState, train_step


def state_shardings(mesh: Mesh, state: Any) -> Any:
    """NamedShardings for a TrainState (or its `jax.eval_shape`)."""
    return shardings(mesh, state_specs(state))


def place_state(state: TrainState, mesh: Mesh) -> TrainState:
    """Host-complete state (same values on every process) -> global arrays on `mesh`."""
    target = state_shardings(mesh, state)

    def put(x, sharding):
        if isinstance(x, jax.Array) and x.sharding == sharding:
            return x
        host = _host(x)
        return jax.make_array_from_callback(host.shape, sharding, lambda idx: host[idx])

    return jax.tree.map(put, state, target)


def local_rows(sharding: NamedSharding, global_shape: tuple[int, ...]) -> slice:
    """The contiguous rows of a global batch that this process's devices hold."""
    starts, stops = [], []
    for index in sharding.addressable_devices_indices_map(tuple(global_shape)).values():
        rows = index[0]
        starts.append(rows.start or 0)
        stops.append(global_shape[0] if rows.stop is None else rows.stop)
    lo, hi = min(starts), max(stops)
    covered = sum(b - a for a, b in {(a, b) for a, b in zip(starts, stops)})
    if covered != hi - lo:
        raise ValueError(f"this process's rows of the batch are not contiguous ({starts}); "
                         "build the mesh with make_mesh, which keeps them contiguous")
    return slice(lo, hi)


def place_batch(batch: Any, sharding: NamedSharding, global_rows: int | None = None) -> jax.Array:
    """A numpy batch -> a global array sharded on "data".

    `global_rows=None`: `batch` is the whole global batch (the same on every process).
    Otherwise `batch` holds only this process's rows (`local_rows`) of a `global_rows` batch.
    """
    if isinstance(batch, jax.Array) and batch.sharding == sharding:
        return batch
    batch = np.asarray(batch)
    shape = batch.shape if global_rows is None else (global_rows,) + batch.shape[1:]
    return jax.make_array_from_process_local_data(sharding, batch, shape)


_END = object()


def prefetch(items: Iterable[Any], place: Callable[[Any], Any], size: int = 2) -> Iterator[Any]:
    """Yield `place(item)` for each item, placing up to `size` items ahead in a thread.

    Items may be arrays or `(index, array)` pairs (the stream's form; the index is kept).
    Errors in reading or placing are re-raised in the consumer. Closing the iterator
    (or dropping it) stops the thread.
    """
    if size <= 0:
        yield from (_place_item(item, place) for item in items)
        return
    out: queue.Queue = queue.Queue(maxsize=size)
    stop = threading.Event()

    def produce():
        try:
            for item in items:
                placed = _place_item(item, place)
                while not stop.is_set():
                    try:
                        out.put(("ok", placed), timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            out.put(("ok", _END))
        except BaseException as e:  # noqa: BLE001 - handed to the consumer
            out.put(("error", e))

    thread = threading.Thread(target=produce, name="raysae-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            kind, value = out.get()
            if kind == "error":
                raise value
            if value is _END:
                return
            yield value
    finally:
        stop.set()


def _place_item(item: Any, place: Callable[[Any], Any]) -> Any:
    if isinstance(item, tuple) and len(item) == 2 and np.isscalar(item[0]):
        return item[0], place(item[1])
    return place(item)


class ShardedStep:
    """The train step for `config` on `mesh`: `step(state, x)` or `step(state, x, target)`.

    Compiles on first use from the state's shapes; a state not yet on the mesh (a fresh
    `init_state`, or one loaded from a checkpoint) is placed there first.
    """

    def __init__(self, config: TrainConfig, mesh: Mesh):
        self.config, self.mesh = config, mesh
        self.batch_sharding = NamedSharding(mesh, BATCH_SPEC)
        self._jitted: dict[bool, Callable] = {}
        self._state_sh = None

    def lower(self, state: Any, x: Any, target: Any = None):
        """`jax.jit(...).lower` of the step (for inspecting HLO and memory)."""
        return self._fn(state, target is not None).lower(*((state, x) if target is None
                                                           else (state, x, target)))

    def _fn(self, state: Any, has_target: bool) -> Callable:
        if has_target not in self._jitted:
            self._state_sh = state_shardings(self.mesh, jax.eval_shape(lambda: state))
            replicated = NamedSharding(self.mesh, P())
            config = self.config
            if has_target:
                fn = lambda s, x, t: train_step(s, x, t, config)  # noqa: E731
                ins = (self._state_sh, self.batch_sharding, self.batch_sharding)
            else:
                fn = lambda s, x: train_step(s, x, None, config)  # noqa: E731
                ins = (self._state_sh, self.batch_sharding)
            self._jitted[has_target] = jax.jit(fn, in_shardings=ins,
                                               out_shardings=(self._state_sh, replicated),
                                               donate_argnums=0)
        return self._jitted[has_target]

    def __call__(self, state: TrainState, x: jax.Array, target: jax.Array | None = None):
        fn = self._fn(state, target is not None)
        w = state.params.W_enc
        if not (isinstance(w, jax.Array) and w.sharding == self._state_sh.params.W_enc):
            state = place_state(state, self.mesh)
        x = place_batch(x, self.batch_sharding)
        if target is None:
            return fn(state, x)
        return fn(state, x, place_batch(target, self.batch_sharding))


def train_sharded(config: TrainConfig, data: Any, *, d: int | None = None,
                  d_out: int | None = None, mesh: Mesh | None = None,
                  devices: list | None = None, local_batches: bool = False,
                  prefetch_batches: int = 2, state: TrainState | None = None,
                  on_plan: Callable[[Plan], None] | None = None,
                  **train_kwargs: Any) -> TrainResult:
    """`loop.train` on a mesh over `devices` (default: every device of the job).

    `data` is what `loop.train` takes (an iterable, or `start -> iterable`). With
    `local_batches=False` every process yields the same global [B, ·] batches; with True
    each yields only its `local_rows` of them. The mesh is `mesh`, or chosen by
    `mesh.mesh_for` (config overrides, else the cost model) once d is known (from `d` or
    the first batch). Other keyword arguments go to `loop.train`; checkpoints are written
    by process 0 only unless `write_checkpoints` is given.
    """
    train_kwargs.setdefault("write_checkpoints", jax.process_index() == 0)
    holder: dict[str, Any] = {"mesh": mesh}

    def get_mesh(width_in: int) -> Mesh:
        if holder["mesh"] is None:
            in_dim = d if d is not None else (width_in // 2 if config.transcoder else width_in)
            holder["mesh"], plan = mesh_for(config, in_dim, devices)
            if on_plan:
                on_plan(plan)
        return holder["mesh"]

    def place(batch: Any) -> jax.Array:
        sharding = NamedSharding(get_mesh(batch.shape[1]), BATCH_SPEC)
        rows = config.batch_size if local_batches else None
        return place_batch(batch, sharding, rows)

    def source(start: int) -> Iterator[Any]:
        items = data(start) if callable(data) else itertools.islice(data, start, None)
        return prefetch(items, place, prefetch_batches)

    def step_fn(state: TrainState, x: jax.Array, target: jax.Array | None = None):
        if "step" not in holder:
            holder["step"] = ShardedStep(config, get_mesh(x.shape[1]))
        return holder["step"](state, x, target)

    return train(config, source, d=d, d_out=d_out, step_fn=step_fn, place=lambda b: b,
                 state=state, **train_kwargs)


__all__ = ["state_shardings", "place_state", "local_rows", "place_batch", "prefetch",
           "ShardedStep", "train_sharded"]
