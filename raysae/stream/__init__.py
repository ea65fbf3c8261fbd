"""The shared activation stream on Ray: every trial of a sweep reads the same batches, each
read from storage once and put once into the object store.

- `start_brokers(manifest_url, batch_size, config, name) -> BrokerHandle` (broker.py):
  named, restartable broker actors; `get_brokers(name)`, `stop_brokers(handle)`.
- `BatchStream(handle_or_name, start_index)` (consumer.py): the trial-side iterator of raw
  float32 batches with `.position`; `SharedSource` opens them for `raysae.train.train`.
- The Ray-free parts (shard format, batch order, `LocalStream`) are in `raysae.data`.
"""

from raysae.stream.broker import BrokerHandle, get_brokers, start_brokers, stop_brokers
from raysae.stream.consumer import BatchStream, SharedSource, join_position
from raysae.stream.protocol import BrokerStats, FetchReply, FetchStatus

__all__ = ["BrokerHandle", "start_brokers", "get_brokers", "stop_brokers", "BatchStream",
           "SharedSource", "join_position", "BrokerStats", "FetchReply", "FetchStatus"]
