"""The Ray Data parts of a cache job: tokenize files in tasks, run the LM in an actor pool.

`tokenize_files`: tasks read and tokenize files; the driver gathers the (small) token arrays
in file order, and a bad file's `InputError` comes back by name before any LM work.
`build_shards`: an actor pool (one LM per actor, on GPUs / TPUs when the cluster has them)
turns the sequences of each planned shard into that shard at every site: one forward that
stops after the last layer needed, unmasked positions only, rows shuffled, written
atomically by the actor (or by the driver for storage other processes cannot see).
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from typing import Callable, Iterator

import numpy as np
import ray

from raysae.activations import shuffle
from raysae.activations.sources import InputError, InputFile, file_sequences
from raysae.data.shards import ShardInfo, write_shard
from raysae.lm.source import ModelSource
from raysae.sites import SAESite


def row_mask(tokens: np.ndarray, lm) -> np.ndarray:
    """Bool [n, T]: positions whose activations are cached (= `raysae.lm.loss_mask` with
    attention on every non-pad token): not BOS, EOS or pad."""
    t = np.asarray(tokens)
    return (t != lm.bos_id) & (t != lm.eos_id) & (t != lm.pad_id)


def shared_storage(url: str) -> bool:
    """Whether worker processes see what the driver sees at `url` (memory:// is per process)."""
    return not url.startswith("memory://")


# ---------------------------------------------------------------- tokenize


def _tokenize_batch(batch: dict, files: list, config, tokenizer, lm) -> dict:
    idx, docs, seqs, errors = [], [], [], []
    for i in batch["file"]:
        i = int(i)
        try:
            s, d = file_sequences(files[i], config, tokenizer, lm)
            err = ""
        except InputError as e:  # reported by the driver, naming the file
            s, d = np.zeros((1, config.context_length), np.int32), np.zeros(1, np.int64)
            err = str(e)
        idx.append(np.full(len(s), i, np.int64))
        docs.append(d)
        seqs.append(s)
        errors += [err] * len(s)
    return {"file": np.concatenate(idx), "doc": np.concatenate(docs),
            "tokens": np.concatenate(seqs), "error": np.asarray(errors, dtype=object)}


def tokenize_files(files: list[InputFile], config, tokenizer, lm) -> tuple[np.ndarray, np.ndarray]:
    """(sequences [N, T] int32, global document id [N]) of all files, in file order."""
    kwargs = dict(files=files, config=config, tokenizer=tokenizer, lm=lm)
    index = {"file": np.arange(len(files), dtype=np.int64)}
    if all(shared_storage(f.url) for f in files):
        per = config.tokenize_files_per_task
        ds = ray.data.from_items([{"file": i} for i in range(len(files))],
                                 override_num_blocks=max(1, math.ceil(len(files) / per)))
        ds = ds.map_batches(_tokenize_batch, batch_size=per, batch_format="numpy",
                            fn_kwargs=kwargs, num_cpus=1)
        parts = list(ds.iter_batches(batch_size=None, batch_format="numpy"))
    else:  # memory:// inputs live in this process only
        parts = [_tokenize_batch(index, **kwargs)]
    parts = [p for p in parts if len(p["file"])]
    file_idx = np.concatenate([p["file"] for p in parts])
    order = np.argsort(file_idx, kind="stable")  # tasks finish in any order; within a file rows keep theirs
    file_idx = file_idx[order]
    doc = np.concatenate([p["doc"] for p in parts])[order]
    tokens = np.concatenate([p["tokens"] for p in parts])[order].astype(np.int32)
    errors = np.concatenate([p["error"] for p in parts])[order]
    bad = [e for e in errors if e]
    if bad:
        raise InputError(bad[0])
    # global document ids: (file, doc within file) -> consecutive ints
    key = file_idx * (int(doc.max()) + 1 if len(doc) else 1) + doc
    _, gdoc = np.unique(key, return_inverse=True)
    return tokens, gdoc.astype(np.int64)


# ---------------------------------------------------------------- LM actors


def _lm_site_tuple(keys: list[str]):
    return tuple(sorted({s for k in keys for s in SAESite.parse(k).lm_sites}))


class ShardBuilder:
    """One LM per actor; turns the sequences of one shard into that shard at every site."""

    def __init__(self, config, write: bool):
        from raysae.lm import site_activations  # jax is imported in the actor, not the driver

        self.config, self.write = config, write
        self.model = ModelSource(config.model).load(config.model_dtype, seed=config.seed,
                                                    layers=config.model_layers)
        self.lm = self.model.config
        self._site_activations = site_activations

    def _forward(self, seqs: np.ndarray, sites) -> tuple[dict, np.ndarray]:
        """{Site: [rows, d] float32} of the unmasked positions of `seqs`, in (sequence, position) order."""
        B, lm = self.config.batch_size, self.lm
        out: dict = {s: [] for s in sites}
        for a in range(0, len(seqs), B):
            toks = seqs[a:a + B]
            n = len(toks)
            if n < B:  # keep one compiled shape; pad rows are all masked
                toks = np.concatenate([toks, np.full((B - n, toks.shape[1]), lm.pad_id, np.int32)])
            acts = self._site_activations(self.model, toks, sites, attention_mask=toks != lm.pad_id)
            m = row_mask(toks, lm)
            for s in sites:
                out[s].append(np.asarray(acts[s], dtype=np.float32)[m])
        return {s: np.concatenate(v) for s, v in out.items()}

    def __call__(self, batch: dict) -> dict:
        k = int(batch["shard"][0])
        keys = str(batch["keys"][0]).split(",")
        seqs = np.asarray(batch["tokens"][0], np.int32).reshape(-1, self.config.context_length)
        t0 = time.perf_counter()
        acts = self._forward(seqs, _lm_site_tuple(keys))
        t1 = time.perf_counter()
        rows = {}
        for key in keys:
            parts = [acts[s] for s in SAESite.parse(key).lm_sites]
            x = parts[0] if len(parts) == 1 else np.concatenate(parts, axis=1)  # input | target
            rows[key] = shuffle.shuffle_rows(x, self.config.seed, k, self.config.shuffle)
        t2 = time.perf_counter()
        out = {"shard": np.array([k]), "keys": np.array([",".join(keys)], dtype=object),
               "tokens": np.array([int((seqs != self.lm.pad_id).sum())]),
               "lm_s": np.array([t1 - t0]), "shuffle_s": np.array([t2 - t1])}
        if self.write:
            infos = {key: dataclasses.asdict(write_shard(
                         self.config.site_url(key), k, r, self.config.dtype))
                     for key, r in rows.items()}
            out["infos"] = np.array([json.dumps(infos)], dtype=object)
        else:
            for i, key in enumerate(keys):
                out[f"rows_{i}"] = rows[key][None]
            out["infos"] = np.array([""], dtype=object)
        out["write_s"] = np.array([time.perf_counter() - t2])
        return out


def resources(config) -> tuple[str, int, dict]:
    """(accelerator, actors, ray_remote_args) for the LM actor pool on this cluster."""
    acc = config.accelerator
    have = ray.cluster_resources()
    if acc == "auto":
        acc = "gpu" if have.get("GPU", 0) > 0 else "tpu" if have.get("TPU", 0) > 0 else "cpu"
    per = config.accelerators_per_worker
    if acc == "cpu":
        n = config.workers or 1
        # pin JAX to the CPU in the actor even if the node has an accelerator
        return acc, n, {"num_cpus": 1, "runtime_env": {"env_vars": {"JAX_PLATFORMS": "cpu"}}}
    key = "GPU" if acc == "gpu" else "TPU"
    if have.get(key, 0) < per:
        raise InputError(f"accelerator: {acc!r} requested but the cluster has {have.get(key, 0)} {key}")
    n = config.workers or max(1, int(have[key] // per))
    args = {"num_gpus": per} if acc == "gpu" else {"resources": {"TPU": per}}
    return acc, n, {"num_cpus": 1, **args}


def build_shards(config, tokens: np.ndarray, plan: shuffle.ShardPlan, todo: dict[int, list[str]],
                 write_here: Callable[[int, str, np.ndarray], ShardInfo] | None) -> Iterator[dict]:
    """Yield one result per finished shard: {"shard", "infos": {key: ShardInfo}, "tokens", timings}.

    `todo` maps shard index -> site keys still missing it. With `write_here` the rows come
    back and the caller writes them (storage the actors cannot see); else actors write.
    """
    if not todo:
        return
    acc, n_actors, remote = resources(config)
    items = [{"shard": k, "keys": ",".join(keys), "tokens": tokens[plan.sequences(k)].reshape(-1)}
             for k, keys in sorted(todo.items())]
    ds = ray.data.from_items(items, override_num_blocks=len(items))
    ds = ds.map_batches(ShardBuilder, batch_size=1, batch_format="numpy",
                        fn_constructor_kwargs={"config": config, "write": write_here is None},
                        compute=ray.data.ActorPoolStrategy(size=min(n_actors, len(items))),
                        **remote)
    for batch in ds.iter_batches(batch_size=1, batch_format="numpy"):
        k = int(batch["shard"][0])
        keys = str(batch["keys"][0]).split(",")
        t0 = time.perf_counter()
        if write_here is None:
            infos = {key: ShardInfo(**v) for key, v in json.loads(str(batch["infos"][0])).items()}
        else:
            infos = {key: write_here(k, key, np.asarray(batch[f"rows_{i}"][0]))
                     for i, key in enumerate(keys)}
        yield {"shard": k, "infos": infos, "tokens": int(batch["tokens"][0]),
               "lm_s": float(batch["lm_s"][0]), "shuffle_s": float(batch["shuffle_s"][0]),
               "write_s": float(batch["write_s"][0]) + time.perf_counter() - t0}


__all__ = ["row_mask", "shared_storage", "tokenize_files", "ShardBuilder",
           "resources", "build_shards"]
