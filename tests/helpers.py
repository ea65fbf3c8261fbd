"""Shared test helpers: small activation caches of known dictionaries."""

from __future__ import annotations

import os

import numpy as np

from raysae.data import Manifest, write_shard
from raysae.synthetic import SparseDictionary


def write_cache(url: str, site: str = "res:1", d: int = 32, shards: int = 2, rows: int = 2048,
                norm_scalar: float = 1.3) -> str:
    """A cache at `url` of rows from a 64-feature sparse dictionary in R^d; returns `url`."""
    sd = SparseDictionary.random(d=d, n_features=64, active=3, seed=0)
    rng = np.random.default_rng(0)
    infos = [write_shard(url, i, sd.sample(rows, rng)) for i in range(shards)]
    from raysae.sites import SAESite

    s = SAESite.parse(site)
    Manifest(model="synthetic", site=str(s), layer=s.layer, d=d, rows_per_shard=rows,
             total_rows=rows * shards, tokens=rows * shards, norm_scalar=norm_scalar,
             shards=infos).save(url)
    return url


def read_events(directory: str) -> dict[str, list[tuple[int, float]]]:
    """Scalars of the TensorBoard event files in `directory` (not its subdirectories):
    tag -> [(step, value)].
    (TFRecord framing: u64 length, u32 crc, the Event proto, u32 crc.)"""
    import struct

    from tensorboardX.proto import event_pb2

    out: dict[str, list[tuple[int, float]]] = {}
    for root, files in [(directory, os.listdir(directory))]:
        for name in sorted(f for f in files if "tfevents" in f):
            data = open(os.path.join(root, name), "rb").read()
            i = 0
            while i + 12 <= len(data):
                (n,) = struct.unpack("<Q", data[i:i + 8])
                event = event_pb2.Event.FromString(data[i + 12:i + 12 + n])
                i += 12 + n + 4
                for v in event.summary.value:
                    if v.HasField("simple_value"):
                        out.setdefault(v.tag, []).append((event.step, v.simple_value))
    return out
