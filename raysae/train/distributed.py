"""`jax.distributed` set-up for a training job that spans several processes (hosts).

JAX is multi-controller: every process runs the same program over the global mesh. Each
process calls `initialize(...)` once, before any JAX computation, with the coordinator's
address (process 0's host and a free port), the number of processes and its own id. On
Cloud TPU all three can be left out (JAX reads them from the TPU metadata). On CPU,
collectives across processes need the gloo implementation, which must be selected before
the CPU backend starts; `initialize` does that.

Pure JAX: the Ray Train launcher (raysae/sweep/jax_trainer.py) calls this inside each
worker when Ray has not already initialised JAX (Ray 2.60 only does so on TPU and GPU).
"""

from __future__ import annotations

import contextlib
import socket
from typing import NamedTuple, Sequence

import jax


class ProcessInfo(NamedTuple):
    process_index: int
    process_count: int
    local_devices: int
    global_devices: int
    platform: str


def is_initialized() -> bool:
    return jax.distributed.is_initialized()


def initialize(coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None, *,
               local_device_ids: int | Sequence[int] | None = None,
               cpu_collectives: str = "gloo", timeout_s: int = 300) -> ProcessInfo:
    """Join the job (idempotent: a second call returns the current ProcessInfo).

    `num_processes=1` (a single-process job) skips `jax.distributed` entirely.
    """
    if is_initialized() or num_processes == 1:
        return process_info()
    # Harmless on TPU/GPU (it only configures the CPU client), required on CPU.
    jax.config.update("jax_cpu_collectives_implementation", cpu_collectives)
    jax.distributed.initialize(coordinator_address, num_processes, process_id,
                               local_device_ids=local_device_ids,
                               initialization_timeout=timeout_s)
    return process_info()


def shutdown() -> None:
    if is_initialized():
        jax.distributed.shutdown()


def process_info() -> ProcessInfo:
    return ProcessInfo(jax.process_index(), jax.process_count(), jax.local_device_count(),
                       jax.device_count(), jax.devices()[0].platform)


def free_port(host: str = "") -> int:
    """A TCP port free right now on this host (for the coordinator of a new job)."""
    with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


__all__ = ["ProcessInfo", "is_initialized", "initialize", "shutdown", "process_info",
           "free_port"]
