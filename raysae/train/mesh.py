"""The (data, model) device mesh, its partition rules and the choice of the split.

Axes ``("data", "model")`` span every device of the job. Rules (Gemma Scope §4.2, Megatron
on the latent axis M): W_enc [d, M] P(None, "model"); W_dec [M, d] P("model", None);
b_enc, θ [M] P("model"); b_dec [d] replicated; the batch [B, d] P("data", None). A model
split then only all-reduces [B, d]-sized tensors and scalars; a data split all-reduces
gradients. `choose_degrees` takes the smallest data degree whose host-to-device transfer
stays below the step time (a cost model over a `DeviceProfile`), among splits that divide
the batch and width and fit in memory; TrainConfig.data_parallel / model_parallel override.
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

from raysae.config import ConfigError
from raysae.sae.params import SAEParams

DATA, MODEL = "data", "model"

PARAM_SPECS = SAEParams(W_enc=P(None, MODEL), W_dec=P(MODEL, None), b_enc=P(MODEL),
                        b_dec=P(), threshold=P(MODEL))
BATCH_SPEC = P(DATA, None)


def make_mesh(data: int, model: int, devices: list | None = None) -> Mesh:
    """A (data, model) mesh over `devices` (default: all devices of the job).

    Devices are ordered by (process, id) with "model" varying fastest, so a model group
    stays inside one host whenever model ≤ local devices: the per-step [B, d] all-reduces
    ride the fast intra-host links, the data-parallel gradient all-reduce crosses hosts.
    On one TPU host the topology-aware ordering of `mesh_utils` is used instead.
    """
    devices = list(jax.devices() if devices is None else devices)
    if data * model != len(devices):
        raise ConfigError(f"data_parallel: data × model = {data} × {model} = {data * model} "
                          f"but the job has {len(devices)} devices")
    if len({d.process_index for d in devices}) == 1 and devices[0].platform == "tpu":
        from jax.experimental import mesh_utils
        grid = mesh_utils.create_device_mesh((data, model), devices)
    else:
        grid = np.array(sorted(devices, key=lambda d: (d.process_index, d.id)),
                        dtype=object).reshape(data, model)
    # Auto axes: XLA's partitioner propagates the shardings we put on inputs and outputs.
    return Mesh(grid, (DATA, MODEL), axis_types=(AxisType.Auto, AxisType.Auto))


def _is_params(x: Any) -> bool:
    return isinstance(x, SAEParams)


def state_specs(state: Any) -> Any:
    """PartitionSpecs for a TrainState (or any pytree holding SAEParams, e.g. optax state).

    SAEParams nodes (params, Adam mu and nu) get PARAM_SPECS; a leaf of rank 1 whose
    length is the width (`last_fired`) is split on "model"; everything else is replicated.
    A packed state (`raysae.train.pack`: W_enc [K, d, M]) gets the same specs behind an
    unsplit member axis.
    """
    width, packed = None, False
    for node in jax.tree_util.tree_leaves(state, is_leaf=_is_params):
        if _is_params(node):
            width, packed = node.W_enc.shape[-1], len(node.W_enc.shape) == 3
            break
    lead = (None,) if packed else ()

    def spec(node):
        if _is_params(node):
            return SAEParams(*(P(*lead, *s) for s in PARAM_SPECS))
        if width is not None and getattr(node, "ndim", 0) == 1 + packed and \
                node.shape[-1] == width:
            return P(*lead, MODEL)
        return P()

    return jax.tree.map(spec, state, is_leaf=_is_params)


def shardings(mesh: Mesh, specs: Any) -> Any:
    """NamedShardings on `mesh` for a pytree of PartitionSpecs."""
    return jax.tree.map(lambda s: NamedSharding(mesh, s), specs,
                        is_leaf=lambda s: isinstance(s, P))


class DeviceProfile(NamedTuple):
    """What the cost model needs to know about one accelerator and its host."""

    peak_flops: float          # dense matmul FLOP/s per device in the compute dtype
    host_to_device: float      # bytes/s one host can push to its devices in total
    memory_bytes: float        # usable memory per device
    efficiency: float = 0.5    # fraction of peak a step reaches (the paper: ≈0.5 on TPUv3)


# Rough public figures (dense, per device). bf16 peak; fp32 compute divides by `fp32_ratio`.
_PROFILES = {
    "tpu v3": (123e12 / 2, 10e9, 16e9),   # per core (2 cores/chip), PCIe host link
    "tpu v4": (275e12, 20e9, 32e9),
    "tpu v5 lite": (197e12, 20e9, 16e9),
    "tpu v5e": (197e12, 20e9, 16e9),
    "tpu v5p": (459e12, 20e9, 95e9),
    "tpu v6 lite": (918e12, 25e9, 32e9),
    "h100": (989e12, 50e9, 80e9),
    "h200": (989e12, 50e9, 141e9),
    "a100": (312e12, 25e9, 80e9),
}
_FP32_RATIO = {"h100": 989 / 67, "h200": 989 / 67, "a100": 312 / 19.5}


def detect_profile(device=None, compute_dtype: str = "float32") -> DeviceProfile:
    """A DeviceProfile from the device kind (public peak figures); CPUs get a nominal one."""
    device = device or jax.devices()[0]
    kind = device.device_kind.lower()
    for key, (peak, h2d, mem) in _PROFILES.items():
        if key in kind:
            if compute_dtype == "float32":
                peak = peak / _FP32_RATIO.get(key, 1.0)  # TPU: default precision is bf16 passes
            return DeviceProfile(peak, h2d, mem)
    # CPU "devices" share the host: transfer is a memcpy, memory is host RAM.
    return DeviceProfile(peak_flops=50e9, host_to_device=5e9, memory_bytes=8e9)


@dataclasses.dataclass(frozen=True)
class MeshSplit:
    """A chosen split and the cost-model estimates behind it (seconds, bytes per device)."""

    data: int
    model: int
    step_s: float
    transfer_s: float
    memory_bytes: float
    reason: str


def step_flops(batch: int, d: int, width: int) -> float:
    """12·B·d·M: encoder and decoder matmuls (2·B·d·M each), ×3 for forward + backward."""
    return 12.0 * batch * d * width


class MemoryEstimate(NamedTuple):
    """Bytes per device of one training step (fp32 params, optimiser state, activations)."""

    params: float        # W_enc, W_dec, b_enc, θ, b_dec
    optimizer: float     # Adam's moments: ν, plus μ unless β₁ = 0
    grads: float         # the gradient tree
    activations: float   # z, f and their cotangents, [B/data, M/model] fp32 each
    other: float         # last_fired

    @property
    def total(self) -> float:
        return self.params + self.optimizer + self.grads + self.activations + self.other


def train_memory(batch: int, d: int, width: int, *, moments: int = 1, data: int = 1,
                 model: int = 1) -> MemoryEstimate:
    """Bytes per device of a train step:
    4·P·(2 + moments)/model + 16·(B/data)·(M/model) + 4·M/model.

    Args:
        batch, d, width: B, the input width d and M (P = 2·d·M + 2·M + d parameters).
        moments: Adam moments stored: 1 with β₁ = 0 (ν only), 2 otherwise (μ and ν).
        data, model: the mesh split.
    Returns:
        A `MemoryEstimate` (fp32 params, one gradient tree, four [B, M] activations).
    """
    params = (2 * d * width + 2 * width + d) * 4 / model
    return MemoryEstimate(params=params, optimizer=moments * params, grads=params,
                          activations=4 * (batch / data) * (width / model) * 4,
                          other=width * 4 / model)


def estimate(batch: int, d: int, width: int, data: int, model: int, profile: DeviceProfile,
             local_devices: int, in_bytes: int = 4, moments: int = 1
             ) -> tuple[float, float, float]:
    """(step seconds, host-to-device seconds, bytes per device) for one (data, model) split
    (`moments`: Adam moments stored, 1 with β₁ = 0)."""
    n = data * model
    step = step_flops(batch, d, width) / (n * profile.peak_flops * profile.efficiency)
    # Each device receives its data shard of the batch (replicated across its model group),
    # and one host feeds all of its local devices over its link.
    transfer = local_devices * (batch / data) * d * in_bytes / profile.host_to_device
    return step, transfer, train_memory(batch, d, width, moments=moments, data=data,
                                        model=model).total


def choose_degrees(width: int, d: int, batch: int, num_devices: int, *,
                   profile: DeviceProfile | None = None, local_devices: int | None = None,
                   data_parallel: int | None = None, model_parallel: int | None = None,
                   headroom: float = 0.9, moments: int = 1) -> MeshSplit:
    """The (data, model) split for a run: overrides if given, else the paper's rule.

    Candidates are splits with data | batch and model | width. The rule: the smallest data
    degree whose transfer time is at most `headroom` × step time, among those that fit in
    memory; if none is fast enough, the one with the least transfer (largest data degree).
    `moments` is how many Adam moments the optimiser stores (1 with β₁ = 0, else 2).
    """
    profile = profile or detect_profile()
    local_devices = local_devices or num_devices
    _check_overrides(width, batch, num_devices, data_parallel, model_parallel)
    if data_parallel is not None or model_parallel is not None:
        data = data_parallel or num_devices // model_parallel
        model = num_devices // data
        s, t, m = estimate(batch, d, width, data, model, profile, local_devices,
                           moments=moments)
        return MeshSplit(data, model, s, t, m, "set in config")
    candidates = []
    for data in range(1, num_devices + 1):
        model = num_devices // data
        if data * model != num_devices or batch % data or width % model:
            continue
        candidates.append((data, model) + estimate(batch, d, width, data, model, profile,
                                                   local_devices, moments=moments))
    if not candidates:
        raise ConfigError(f"width: no data × model split of {num_devices} devices divides "
                          f"batch_size={batch} and width={width}")
    fits = [c for c in candidates if c[4] <= profile.memory_bytes] or candidates
    for data, model, s, t, m in fits:
        if t <= headroom * s:
            return MeshSplit(data, model, s, t, m, "smallest data degree with transfer below step time")
    data, model, s, t, m = fits[-1]
    return MeshSplit(data, model, s, t, m, "transfer-bound: largest data degree")


def _check_overrides(width: int, batch: int, n: int, data: int | None, model: int | None) -> None:
    for name, value in (("data_parallel", data), ("model_parallel", model)):
        if value is not None and (value <= 0 or n % value):
            raise ConfigError(f"{name}: {value} does not divide the {n} devices of the job")
    if data is not None and model is not None and data * model != n:
        raise ConfigError(f"data_parallel: data_parallel × model_parallel = {data} × {model} "
                          f"= {data * model}, but the job has {n} devices")
    data = data or (n // model if model else None)
    model = model or (n // data if data else None)
    if data is not None and batch % data:
        raise ConfigError(f"data_parallel: batch_size={batch} is not divisible by the data "
                          f"degree {data}")
    if model is not None and width % model:
        raise ConfigError(f"model_parallel: width={width} is not divisible by the model "
                          f"degree {model}")


def mesh_for(config, d: int, devices: list | None = None,
             profile: DeviceProfile | None = None) -> tuple[Mesh, MeshSplit]:
    """The mesh a TrainConfig should train on.

    Args:
        config: the recipe (width, batch size, compute dtype, data/model overrides).
        d: the input width.
        devices: the devices to span (default: every device of the job).
        profile: the device's figures for the cost model (default: detected).
    Returns:
        (the Mesh, the `MeshSplit` chosen and why).
    """
    devices = list(jax.devices() if devices is None else devices)
    local = sum(1 for x in devices if x.process_index == jax.process_index())
    split = choose_degrees(config.width, d, config.batch_size, len(devices),
                           profile=profile or detect_profile(devices[0], config.compute_dtype),
                           local_devices=local, data_parallel=config.data_parallel,
                           model_parallel=config.model_parallel,
                           moments=1 if config.adam_b1 == 0 else 2)
    return make_mesh(split.data, split.model, devices), split


__all__ = ["DATA", "MODEL", "PARAM_SPECS", "BATCH_SPEC", "make_mesh", "state_specs",
           "shardings", "DeviceProfile", "detect_profile", "MeshSplit", "step_flops",
           "MemoryEstimate", "train_memory", "estimate",
           "choose_degrees", "mesh_for"]
