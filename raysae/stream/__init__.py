"""The shared activation stream: every trial of a sweep reads the same batches, read once.

Pieces (each its own module):
- `StreamConfig` (config.py): batch size, shuffling, epochs, brokers, buffer, lag policy.
- `Plan` (plan.py): the batch order, a pure function of (manifest, config).
- `LocalStream` (reader.py): the stream in one process, no Ray (notebooks, baselines).
"""

from raysae.stream.config import StreamConfig
from raysae.stream.plan import Plan
from raysae.stream.reader import LocalStream, ReadStats, SliceReader

__all__ = ["StreamConfig", "Plan", "LocalStream", "ReadStats", "SliceReader"]
