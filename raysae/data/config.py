"""`StreamConfig`: how an activation stream orders, reads and buffers its batches.

Used by `LocalStream` (one process), the Ray brokers and their consumers. The fields in
`ORDER_FIELDS`, with the batch size (which belongs to the trainer and is passed beside the
config), decide which rows land in which batch; the others only change speed or failure
behaviour.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

from raysae.config import check

ORDER_FIELDS = ("shuffle_window", "shuffle_shards", "seed", "epochs",
                "drop_last", "num_brokers")


@dataclasses.dataclass(frozen=True)
class StreamConfig:
    """How a stream orders, reads and buffers its batches (the batch size comes beside it)."""

    # --- batch order -------------------------------------------------------------------
    # Rows permuted together inside each window of an epoch; <= 1: none (the caching job
    # already shuffled each shard, so a batch is a zero-copy shard slice). A window costs a
    # row gather and pays off when training cycles the cache several times.
    shuffle_window: int = 0
    shuffle_shards: bool = True       # a fresh seeded shard order in every epoch
    seed: int = 0
    epochs: int | None = None         # None: cycle epochs forever (the trainer stops)
    drop_last: bool = True            # finite epochs: drop each broker's last partial batch
    num_brokers: int = 1              # brokers, each owning a contiguous slice of shards
    # --- reading -----------------------------------------------------------------------
    reader: Literal["memmap", "ray_data"] = "memmap"  # memmap: local shards memory-mapped,
                                      # remote ones range-read; ray_data: Ray Data read tasks
    read_ahead_mib: float = 512.0     # memmap reader, remote shards: MiB of fetched rows held
                                      # ahead of use (the reader's memory bound, any shard
                                      # size); must hold one batch's blocks (window shuffle:
                                      # the windows a batch draws from)
    check_blocks: bool = True         # check each block's crc32 (manifest) before its rows are
                                      # used, ahead of use in a background thread
    verify: bool = False              # sha256 every shard on load (reads it all into memory)
    ray_data_prefetch_shards: int = 64  # ray_data reader: shards per dataset (read ahead)
    # --- brokers and consumers -----------------------------------------------------------
    buffer_batches: int = 32          # K: ring of the most recent batches per broker
    block_batches: int = 8            # refs handed out per broker call
    lag_policy: Literal["loop", "skip"] = "loop"
    consumer_timeout_s: float = 120.0  # a consumer silent this long stops holding others back
    expect_consumers: int = 0         # hold the first ring until this many have joined
                                      # (or consumer_timeout_s passed): trials start unevenly
    max_restarts: int = -1            # broker restarts (-1: unlimited)
    spread: bool = False              # place brokers on different nodes (one per node)
    broker_resources: dict[str, float] = dataclasses.field(default_factory=dict)
                                      # custom Ray resources a broker needs, e.g. {data: 0.01}
                                      # to keep brokers on the nodes that advertise `data`
    object_store_fraction: float = 0.5  # rings must fit in this share of a node's store
    prefault_object_store: bool = True  # brokers pre-fault their view of the store at start

    def __post_init__(self) -> None:
        check(self.shuffle_window >= 0, "shuffle_window",
              f"must be >= 0 rows, got {self.shuffle_window}")
        check(self.epochs is None or self.epochs >= 1, "epochs",
              f"must be >= 1 or null (forever), got {self.epochs}")
        check(self.num_brokers >= 1, "num_brokers", f"must be >= 1, got {self.num_brokers}")
        check(self.reader in ("memmap", "ray_data"), "reader",
              f"{self.reader!r} is not one of ['memmap', 'ray_data']")
        check(self.read_ahead_mib > 0, "read_ahead_mib",
              f"must be > 0 MiB, got {self.read_ahead_mib}")
        check(self.ray_data_prefetch_shards >= 1, "ray_data_prefetch_shards",
              f"must be >= 1, got {self.ray_data_prefetch_shards}")
        check(self.buffer_batches >= 2, "buffer_batches",
              f"must be >= 2, got {self.buffer_batches}")
        check(1 <= self.block_batches <= self.buffer_batches, "block_batches",
              f"must be between 1 and buffer_batches={self.buffer_batches}, "
              f"got {self.block_batches}")
        check(self.lag_policy in ("loop", "skip"), "lag_policy",
              f"{self.lag_policy!r} is not one of ['loop', 'skip']")
        check(self.consumer_timeout_s > 0, "consumer_timeout_s",
              f"must be > 0 seconds, got {self.consumer_timeout_s}")
        check(self.expect_consumers >= 0, "expect_consumers",
              f"must be >= 0, got {self.expect_consumers}")
        check(self.max_restarts >= -1, "max_restarts",
              f"must be >= -1, got {self.max_restarts}")
        for k, v in self.broker_resources.items():
            check(isinstance(v, (int, float)) and v > 0, f"broker_resources.{k}",
                  f"must be a number > 0, got {v!r}")
        check(0 < self.object_store_fraction <= 1, "object_store_fraction",
              f"must be in (0, 1], got {self.object_store_fraction}")

    def order_key(self, batch_size: int) -> tuple:
        """What decides the batch order (equal keys: identical streams)."""
        return (batch_size,) + tuple(getattr(self, f) for f in ORDER_FIELDS)
