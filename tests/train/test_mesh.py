"""Single-process parts of sharded training: the cost model, config checks, prefetch."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from raysae.config import ConfigError, from_dict
from raysae.train import TrainConfig
from raysae.train.mesh import DeviceProfile, choose_degrees, estimate, step_flops
from raysae.train.sharded import prefetch

# One TPUv3 host: 8 cores, ~61.5 TFLOP/s bf16 each, a ~10 GB/s host link.
TPU_V3 = DeviceProfile(peak_flops=61.5e12, host_to_device=10e9, memory_bytes=16e9)


def test_step_flops_is_twelve_bdm():
    assert step_flops(4096, 2304, 131072) == 12 * 4096 * 2304 * 131072


def test_narrow_saes_go_data_parallel_wide_ones_split_the_model():
    narrow = choose_degrees(16384, 2304, 4096, 8, profile=TPU_V3)
    wide = choose_degrees(131072, 2304, 4096, 8, profile=TPU_V3)
    assert (narrow.data, narrow.model) == (8, 1)     # the paper's 16K runs: pure data parallel
    assert wide.data < 8 and wide.data * wide.model == 8
    # The rule: the chosen split's transfer fits under the step, the next smaller one's doesn't.
    assert wide.transfer_s <= 0.9 * wide.step_s
    s, t, _ = estimate(4096, 2304, 131072, wide.data // 2 or 1, 8 // (wide.data // 2 or 1),
                       TPU_V3, 8)
    assert wide.data == 1 or t > 0.9 * s


def test_memory_rules_out_splits_that_do_not_fit():
    # A slow link wants pure data parallelism, but a replicated 262K SAE (params + Adam,
    # 14.5 GB) does not fit in 10 GB: the largest data degree that fits is chosen.
    slow = TPU_V3._replace(host_to_device=1e3, memory_bytes=10e9)
    plan = choose_degrees(262144, 2304, 4096, 8, profile=slow)
    assert (plan.data, plan.model) == (4, 2) and plan.memory_bytes <= 10e9
    assert estimate(4096, 2304, 262144, 8, 1, slow, 8)[2] > 10e9


def test_transfer_bound_falls_back_to_the_largest_data_degree():
    slow = TPU_V3._replace(host_to_device=1e3)
    plan = choose_degrees(16384, 2304, 4096, 8, profile=slow)
    assert (plan.data, plan.model) == (8, 1) and "transfer-bound" in plan.reason


def test_overrides_win_and_bad_degrees_name_the_field():
    assert choose_degrees(1024, 16, 64, 8, model_parallel=2, profile=TPU_V3).data == 4
    assert choose_degrees(1024, 16, 64, 8, data_parallel=2, profile=TPU_V3).model == 4
    with pytest.raises(ConfigError, match=r"^model_parallel: width=1001 is not divisible"):
        choose_degrees(1001, 16, 64, 8, model_parallel=8, profile=TPU_V3)
    with pytest.raises(ConfigError, match=r"^data_parallel: batch_size=60 is not divisible"):
        choose_degrees(1024, 16, 60, 8, data_parallel=8, profile=TPU_V3)
    with pytest.raises(ConfigError, match=r"^data_parallel: 3 does not divide the 8 devices"):
        choose_degrees(1024, 16, 64, 8, data_parallel=3, profile=TPU_V3)
    with pytest.raises(ConfigError, match=r"^data_parallel: .* = 16, but the job has 8"):
        choose_degrees(1024, 16, 64, 8, data_parallel=4, model_parallel=4, profile=TPU_V3)
    with pytest.raises(ConfigError, match=r"^width: no data × model split"):
        choose_degrees(1001, 16, 63, 8, profile=TPU_V3)


def test_train_config_checks_parallel_degrees():
    cfg = from_dict(TrainConfig, {"width": 1024, "batch_size": 64, "data_parallel": 2,
                                  "model_parallel": 4})
    assert (cfg.data_parallel, cfg.model_parallel) == (2, 4)
    with pytest.raises(ConfigError, match=r"^model_parallel: width=1000 is not divisible"):
        from_dict(TrainConfig, {"width": 1000, "model_parallel": 16})
    with pytest.raises(ConfigError, match=r"^data_parallel: batch_size=100 is not divisible"):
        from_dict(TrainConfig, {"batch_size": 100, "data_parallel": 8})
    with pytest.raises(ConfigError, match=r"^data_parallel: must be positive"):
        from_dict(TrainConfig, {"data_parallel": 0})


def test_prefetch_keeps_order_and_runs_ahead():
    placed = []

    def place(item):
        i, x = item
        placed.append(int(x[0]))
        return i, x * 2

    items = [(i, np.full(3, i)) for i in range(6)]
    it = prefetch(iter(items), place, size=2)
    first = next(it)
    assert first[0] == 0 and list(first[1]) == [0, 0, 0]
    for _ in range(100):                  # the thread fills the queue without being asked
        if len(placed) >= 3:
            break
        threading.Event().wait(0.01)
    assert len(placed) >= 3
    rest = list(it)
    assert [i for i, _ in rest] == [1, 2, 3, 4, 5]
    assert all(int(a[0]) == 2 * i for i, a in rest)


def test_prefetch_reraises_reader_errors_and_stops_when_closed():
    def broken():
        yield np.zeros(2)
        raise RuntimeError("shard 7 unreadable")

    it = prefetch(broken(), lambda x: x, size=2)
    next(it)
    with pytest.raises(RuntimeError, match="shard 7 unreadable"):
        next(it)

    pulled = []

    def endless():
        i = 0
        while True:
            pulled.append(i)
            yield np.full(1, i)
            i += 1

    it = prefetch(endless(), lambda x: x, size=2)
    next(it)
    it.close()                              # returns once the producer left the generator
    n = len(pulled)
    threading.Event().wait(0.3)
    assert len(pulled) == n <= 5           # the producer stopped after the consumer left
