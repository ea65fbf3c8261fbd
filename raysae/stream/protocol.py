"""The typed messages between a broker and its consumers (`Broker.fetch` answers)."""

from __future__ import annotations

import enum
from typing import Any, NamedTuple


class FetchStatus(enum.Enum):
    OK = "ok"          # refs for the requested batches (at least the first)
    BEHIND = "behind"  # the first requested batch left the ring: loop over it or skip
    END = "end"        # the broker's plan has no such batch (a finite stream ended)
    WAIT = "wait"      # nothing yet within the wait; ask again


class FetchReply(NamedTuple):
    status: FetchStatus
    refs: tuple[Any, ...]   # ObjectRefs of consecutive local batches from the requested one
    lo: int | None          # oldest batch still in the ring
    hi: int | None          # next batch the producer will put


class BrokerStats(NamedTuple):
    """A broker's state and counters (`Broker.stats`)."""

    broker: int
    lo: int | None                 # oldest buffered batch (local index)
    hi: int | None                 # next batch to produce
    restarted: bool
    buffered: int
    consumers: dict[str, tuple[int, float]]  # id -> (ack, seconds since last heard)
    bytes_read: int
    rows_read: int
    batches_built: int
    prefaulted_bytes: int
    wait_s: float                  # producer time: waiting for consumers
    build_s: float                 #   building batches (beyond the read-ahead)
    put_s: float                   #   ray.put
    error: str | None
    first_batch: int | None = None   # the first local batch the producer put
    expect_consumers: int = 0        # consumers it holds its first ring for
    read_ahead_peak_bytes: int = 0   # range reads: most bytes its read-ahead buffer held
