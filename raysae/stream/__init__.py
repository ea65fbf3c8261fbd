"""The shared activation stream: every trial of a sweep reads the same batches, read once.

Public API (each piece its own module):

- `StreamConfig` (config.py): batch size (4,096), row shuffle window (0: contiguous), seed, epochs,
  brokers, ring size K, lag policy, checksum verification, reader backend.
- `Plan(manifest, config)` (plan.py): the batch order, a pure function; `plan.total`,
  `plan.locate(g) -> (broker, local)`, `plan.global_index(broker, local)`.
- `LocalStream(manifest_url, config, start_index=0, normalize=True)` (reader.py): the stream in one
  process, no Ray: ``for g, batch in LocalStream(...)``; `.position`, `.batch(g)`,
  `.stats` (bytes read). Same batches as the brokers for the same config.
- `start_brokers(manifest_url, config, name="default", start=0, detached=False)
  -> BrokerHandle` (broker.py): named, restartable broker actors (reused by name);
  `get_brokers(name)`, `stop_brokers(handle)`; `handle.actors[b].stats.remote()`.
- `BatchStream(handle_or_name, start_index=0, consumer_id=None, sharding=None,
  normalize=True)` (consumer.py): the trial-side iterator yielding
  ``(global_index, float32 [B, width])``; `.position` for checkpoints; `.metrics()` (missed / looped /
  delivered / broker retries); `.close()` deregisters. `batches(stream)` yields arrays only.

Batches are float32 [batch_size, d * len(parts)], divided by the manifest's C by default
(`normalize=True`); with `normalize=False` they are raw rows and the trainer divides on
device (the sweep's trials do: a float32 batch is then the object store's buffer, no
host copy per trial). Brokers put batches raw and as stored (bf16 stays 2 bytes a value);
consumers convert. Split a transcoder batch with `raysae.activations.shards.split_parts`.

Reader choice: reader="memmap" (default) memory-maps local shards and reads remote ones
whole through fsspec; it measured several times faster than Ray Data here (see
BENCHMARKS.md), and a broker reads only its own slice, so it needs no cluster-wide read
scheduling. reader="ray_data" reads shards with Ray Data tasks ahead of use; choose it
when the broker's node should not do the reading itself (slow remote storage with many
nodes to spread the reads over).
"""

from raysae.stream.broker import BrokerHandle, get_brokers, start_brokers, stop_brokers
from raysae.stream.config import StreamConfig
from raysae.stream.consumer import BatchStream, batches
from raysae.stream.plan import Plan
from raysae.stream.reader import LocalStream, ReadStats, SliceReader

__all__ = ["StreamConfig", "Plan", "LocalStream", "ReadStats", "SliceReader",
           "BrokerHandle", "start_brokers", "get_brokers", "stop_brokers",
           "BatchStream", "batches"]
