"""The activation data core, pure numpy (no Ray): the shard format, C, the batch order,
shard readers and the single-process stream.

The Ray Data caching job (`raysae.activations`) writes this format and the Ray brokers
(`raysae.stream`) read it; a notebook reads it with `LocalStream` and no cluster.
"""

from raysae.data.config import StreamConfig
from raysae.data.local import LocalSource, LocalStream
from raysae.data.normalize import estimate_norm_scalar
from raysae.data.plan import BatchPlan
from raysae.data.ranged import RangedShards
from raysae.data.reader import ReadStats, ShardFiles, SliceReader, to_float32
from raysae.data.shards import (Manifest, ShardError, ShardInfo, complete_shards, read_shard,
                                split_parts, write_shard)

__all__ = ["StreamConfig", "LocalSource", "LocalStream", "estimate_norm_scalar", "BatchPlan",
           "RangedShards", "ReadStats", "ShardFiles", "SliceReader", "to_float32", "Manifest", "ShardError",
           "ShardInfo", "complete_shards", "read_shard", "split_parts", "write_shard"]
