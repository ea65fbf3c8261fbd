"""The bucket shuffle: which sequences make up each shard, and the order of rows inside it.

Gemma Scope shuffles activations in buckets of about 10^6 so that consecutive rows come
from many documents. Here one shard is one bucket, and the shuffle has two seeded levels,
both pure functions of (tokens, seed), so a rerun recomputes exactly the same shard:

1. `plan_shards`: all sequences of the corpus are put in a seeded random order (document
   order in the input does not survive) and packed greedily into shards of at most
   `rows_per_shard` rows (rows = unmasked positions, known from the tokens alone);
2. `shard_permutation`: inside a shard the rows of its sequences are permuted.

The same permutation serves every site of a job, so row i of shard k is the same token at
every site (res:3 and mlp:3 caches are aligned row by row, like a transcoder's pair).
`row_sources` says which (sequence, position) each stored row came from (provenance,
debugging, and how the tests check rows against the model).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np


class ShardPlan(NamedTuple):
    order: np.ndarray   # [n_seq] sequence indices in cache order
    bounds: np.ndarray  # [n_shards + 1]: shard k holds order[bounds[k]:bounds[k+1]]
    rows: np.ndarray    # [n_shards] rows in each shard

    @property
    def n_shards(self) -> int:
        return len(self.rows)

    def sequences(self, shard: int) -> np.ndarray:
        return self.order[self.bounds[shard]:self.bounds[shard + 1]]


def sequence_order(n: int, seed: int, shuffle: bool = True) -> np.ndarray:
    """Indices 0..n-1 in the order sequences enter the cache."""
    if not shuffle:
        return np.arange(n, dtype=np.int64)
    return np.random.default_rng([seed, 0]).permutation(n).astype(np.int64)


def plan_shards(row_counts: np.ndarray, rows_per_shard: int, seed: int,
                shuffle: bool = True) -> ShardPlan:
    """Pack sequences (in `sequence_order`) into shards of <= rows_per_shard rows.

    `row_counts[i]` is the number of unmasked positions of sequence i; sequences without
    any are left out. A sequence never spans two shards.
    """
    counts = np.asarray(row_counts, np.int64)
    if counts.size and counts.max() > rows_per_shard:
        raise ValueError(f"a sequence has {counts.max()} rows > rows_per_shard={rows_per_shard}")
    order = sequence_order(len(counts), seed, shuffle)
    order = order[counts[order] > 0]
    bounds, rows = [0], []
    acc = 0
    for i, c in enumerate(counts[order]):
        if acc + c > rows_per_shard:
            bounds.append(i)
            rows.append(acc)
            acc = 0
        acc += c
    if acc:
        bounds.append(len(order))
        rows.append(acc)
    return ShardPlan(order, np.asarray(bounds, np.int64), np.asarray(rows, np.int64))


def shard_permutation(n_rows: int, seed: int, shard: int, shuffle: bool = True) -> np.ndarray:
    """Stored row i of shard `shard` is unshuffled row perm[i] (unshuffled = sequence order, then position)."""
    if not shuffle:
        return np.arange(n_rows, dtype=np.int64)
    return np.random.default_rng([seed, 1, shard]).permutation(n_rows).astype(np.int64)


def shuffle_rows(rows: np.ndarray, seed: int, shard: int, shuffle: bool = True) -> np.ndarray:
    """Rows of one shard in stored order."""
    if not shuffle:
        return rows
    return rows[shard_permutation(len(rows), seed, shard, shuffle)]


def row_sources(plan: ShardPlan, mask: np.ndarray, shard: int, seed: int,
                shuffle: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """(sequence index, position) of every stored row of `shard`; `mask` is the [n_seq, T] row mask."""
    seqs = plan.sequences(shard)
    sub = np.asarray(mask)[seqs]
    r, pos = np.nonzero(sub)  # row-major: the order the LM actor gathers rows in
    perm = shard_permutation(len(r), seed, shard, shuffle)
    return seqs[r][perm], pos[perm]
