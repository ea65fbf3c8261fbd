"""The train step on a (data, model) device mesh, global batches and a prefetch thread.

`ShardedStep` jits `step.train_step` with the partition rules of `mesh.state_specs` and the
state donated, and divides the raw batch by C inside the jitted function: the one place the
normalisation is applied. XLA's SPMD partitioner inserts the collectives (mesh.py says
which). Batches become global arrays with `jax.make_array_from_process_local_data`, placed
in a background thread a few batches ahead (`prefetch`).
"""

from __future__ import annotations

import queue
import threading
from typing import Any, Callable, Iterable, Iterator

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from raysae.train.checkpoint import host_array
from raysae.train.config import TrainConfig
from raysae.train.mesh import BATCH_SPEC, shardings, state_specs
from raysae.train.pack import packed_train_step
from raysae.train.step import Knobs, TrainState, train_step


def state_shardings(mesh: Mesh, state: Any) -> Any:
    """NamedShardings for a TrainState (or its `jax.eval_shape`)."""
    return shardings(mesh, state_specs(state))


def place_state(state: TrainState, mesh: Mesh) -> TrainState:
    """Host-complete state (same values on every process) -> global arrays on `mesh`."""
    target = state_shardings(mesh, state)

    def put(x, sharding):
        if isinstance(x, jax.Array) and x.sharding == sharding:
            return x
        host = host_array(x)
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

    Args:
        batch: the whole global batch (the same on every process), or with `global_rows`
            only this process's `local_rows` of it.
        sharding: the batch sharding.
        global_rows: the global batch's rows when `batch` is this process's part.
    """
    if isinstance(batch, jax.Array) and batch.sharding == sharding:
        return batch
    batch = np.asarray(batch)
    shape = batch.shape if global_rows is None else (global_rows,) + batch.shape[1:]
    return jax.make_array_from_process_local_data(sharding, batch, shape)


_END = object()


def prefetch(items: Iterable[Any], fn: Callable[[Any], Any], size: int = 2,
             join_s: float = 60.0) -> Iterator[Any]:
    """Yield `fn(item)` for each item, computing up to `size` ahead in a thread.

    Errors in reading or in `fn` are re-raised in the consumer. Closing the iterator stops
    the thread and waits (up to `join_s`) until it has left `items`, so the caller can then
    close what the items come from.
    """
    if size <= 0:
        yield from (fn(item) for item in items)
        return
    out: queue.Queue = queue.Queue(maxsize=size)
    stop = threading.Event()

    def produce():
        try:
            for item in items:
                placed = fn(item)
                while not stop.is_set():
                    try:
                        out.put((True, placed), timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            out.put((True, _END))
        except BaseException as e:  # noqa: BLE001 - handed to the consumer
            out.put((False, e))

    thread = threading.Thread(target=produce, name="raysae-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            ok, value = out.get()
            if not ok:
                raise value
            if value is _END:
                return
            yield value
    finally:
        stop.set()
        while thread.is_alive():  # unblock a producer waiting on a full queue
            try:
                out.get_nowait()
            except queue.Empty:
                pass
            thread.join(timeout=0.05)
            join_s -= 0.05
            if join_s <= 0:
                break


class ShardedStep:
    """The train step for `config` on `mesh`, on raw batches divided by C here.

    `step(state, x)` or `step(state, x, target)`; compiles on first use from the state's
    shapes. `place_state` puts a host state (fresh or from a checkpoint) on the mesh. With
    `knobs` (a pack's λ and lr, `raysae.train.pack`) the state is stacked and every member
    steps on the same batch.
    """

    def __init__(self, config: TrainConfig, mesh: Mesh, norm_scalar: float,
                 knobs: Knobs | None = None):
        self.config, self.mesh, self.norm_scalar = config, mesh, float(norm_scalar)
        self.knobs = knobs
        self.batch_sharding = NamedSharding(mesh, BATCH_SPEC)
        self._jitted: dict[bool, Callable] = {}
        self._state_sh = None

    def place_state(self, state: TrainState) -> TrainState:
        return place_state(state, self.mesh)

    def lower(self, state: Any, x: Any, target: Any = None):
        """`jax.jit(...).lower` of the step (for inspecting HLO and memory)."""
        args = (state, x) if target is None else (state, x, target)
        return self._fn(state, target is not None).lower(*args)

    def _fn(self, state: Any, has_target: bool) -> Callable:
        if has_target not in self._jitted:
            state_sh = self._state_sh = state_shardings(self.mesh, jax.eval_shape(lambda: state))
            replicated = NamedSharding(self.mesh, P())
            config, C, knobs = self.config, self.norm_scalar, self.knobs
            if knobs is None:
                step = train_step
            else:
                def step(s, x, t, config):
                    return packed_train_step(s, x, t, config, knobs)
            if has_target:
                fn = lambda s, x, t: step(s, x / C, t / C, config)  # noqa: E731
                ins = (state_sh, self.batch_sharding, self.batch_sharding)
            else:
                fn = lambda s, x: step(s, x / C, None, config)  # noqa: E731
                ins = (state_sh, self.batch_sharding)
            self._jitted[has_target] = jax.jit(fn, in_shardings=ins,
                                               out_shardings=(state_sh, replicated),
                                               donate_argnums=0)
        return self._jitted[has_target]

    def __call__(self, state: TrainState, x: Any, target: Any = None):
        fn = self._fn(state, target is not None)
        w = state.params.W_enc
        if not (isinstance(w, jax.Array) and w.sharding == self._state_sh.params.W_enc):
            state = place_state(state, self.mesh)
        x = place_batch(x, self.batch_sharding)
        if target is None:
            return fn(state, x)
        return fn(state, x, place_batch(target, self.batch_sharding))


__all__ = ["state_shardings", "place_state", "local_rows", "place_batch", "prefetch",
           "ShardedStep"]
