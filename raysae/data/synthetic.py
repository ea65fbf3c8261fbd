"""Synthetic activation caches with traceable rows, for tests, benchmarks and demos.

`write_synthetic_cache` writes a real cache (shards via `write_shard`, a `Manifest`) of
random rows whose first column holds the row's global id times C, so a batch divided by C
says exactly which rows it holds (`row_ids`). Ids stay exact in
float32 below 2**24 rows and in bfloat16 below 2**8 (bf16 caches: use few rows).
"""

from __future__ import annotations

import numpy as np

from raysae.data.shards import Manifest, write_shard


def write_synthetic_cache(url: str, shard_rows: list[int], d: int = 8,
                          dtype: str = "float32", parts: tuple[str, ...] = ("x",),
                          norm_scalar: float = 2.0, seed: int = 0) -> tuple[Manifest, np.ndarray]:
    """Write a cache under `url`; return its manifest and all its rows (as stored, float32)."""
    rng = np.random.default_rng(seed)
    width = d * len(parts)
    total = int(sum(shard_rows))
    rows = rng.standard_normal((total, width), dtype=np.float32) * np.float32(norm_scalar)
    rows[:, 0] = np.arange(total, dtype=np.float32) * np.float32(norm_scalar)
    infos, start = [], 0
    for i, n in enumerate(shard_rows):
        infos.append(write_shard(url, i, rows[start:start + n], dtype=dtype))
        start += n
    site = "transcoder:0" if len(parts) == 2 else "res:0"
    m = Manifest(model="synthetic", site=site, layer=0, d=d, dtype=dtype,
                 parts=list(parts), rows_per_shard=max(shard_rows), total_rows=total,
                 tokens=total, norm_scalar=norm_scalar, shards=infos)
    m.save(url)
    if dtype == "bfloat16":
        import ml_dtypes

        rows = rows.astype(ml_dtypes.bfloat16).astype(np.float32)
    return m, rows


def row_ids(batch: np.ndarray, norm_scalar: float = 2.0) -> np.ndarray:
    """Global row ids of a raw batch from a synthetic cache (column 0 divided by C)."""
    return np.rint(np.asarray(batch[:, 0], dtype=np.float64) / norm_scalar).astype(np.int64)
