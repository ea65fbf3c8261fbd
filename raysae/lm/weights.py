"""Hugging Face Gemma 2 checkpoints <-> the raysae params pytree, without torch.

Reads `config.json` and `model.safetensors` (or the sharded `model.safetensors.index.json`) from
any fsspec URL. The safetensors format is parsed here (8-byte header length, JSON header, raw
little-endian data) so bf16 works through numpy + ml_dtypes and remote files are streamed
tensor by tensor rather than copied whole. Missing, unexpected or mis-shaped tensors raise
`WeightsError` naming them.
"""

from __future__ import annotations

import json
import struct

import jax.numpy as jnp
import ml_dtypes
import numpy as np

from raysae.lm.config import LMConfig
from raysae.lm.model import LAYER_KEYS, param_shapes
from raysae.storage import exists, fs_and_path, join, open_url, read_bytes, write_bytes_atomic

_DTYPES = {"F32": np.float32, "F16": np.float16, "BF16": ml_dtypes.bfloat16, "F64": np.float64,
           "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_}
_NAMES = {np.dtype(v): k for k, v in _DTYPES.items()}
_HF_LAYER = {"input_layernorm": "input_layernorm", "q_proj": "self_attn.q_proj", "k_proj": "self_attn.k_proj",
             "v_proj": "self_attn.v_proj", "o_proj": "self_attn.o_proj",
             "post_attention_layernorm": "post_attention_layernorm",
             "pre_feedforward_layernorm": "pre_feedforward_layernorm", "gate_proj": "mlp.gate_proj",
             "up_proj": "mlp.up_proj", "down_proj": "mlp.down_proj",
             "post_feedforward_layernorm": "post_feedforward_layernorm"}
# Tensors a checkpoint may carry that the forward does not need (tied head, RoPE buffers).
_IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)
_IGNORED = ("lm_head.weight",)


class WeightsError(ValueError):
    """A checkpoint does not fit the config; the message names the tensors and the file."""


def hf_names(config: LMConfig) -> dict[str, tuple]:
    """HF tensor name -> path into the params pytree."""
    out = {"model.embed_tokens.weight": ("embed_tokens",), "model.norm.weight": ("norm",)}
    for i in range(config.n_layers):
        for k in LAYER_KEYS:
            out[f"model.layers.{i}.{_HF_LAYER[k]}.weight"] = ("layers", i, k)
    return out


def _header(f, url: str, size: int) -> tuple[dict, int]:
    """The JSON header of a safetensors file and where its data starts; errors name the file."""
    head = f.read(8)
    if len(head) < 8:
        raise WeightsError(f"{url}: {size} bytes, too short for a safetensors file (truncated?)")
    (n,) = struct.unpack("<Q", head)
    if n < 2 or 8 + n > size:
        raise WeightsError(f"{url}: header length {n} does not fit the file's {size} bytes "
                           "(truncated or not a safetensors file)")
    raw = f.read(n)
    try:
        header = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise WeightsError(f"{url}: the safetensors header is not valid JSON ({e})") from None
    if not isinstance(header, dict):
        raise WeightsError(f"{url}: the safetensors header is not a JSON object")
    return header, 8 + n


def _check_entry(url: str, name: str, info, data_bytes: int) -> tuple[np.dtype, tuple, int, int]:
    """(dtype, shape, start, end) of one header entry, checked against the file's data size."""
    if not isinstance(info, dict) or not {"dtype", "shape", "data_offsets"} <= set(info):
        raise WeightsError(f"{url}: tensor {name}: header entry needs dtype, shape and data_offsets")
    if info["dtype"] not in _DTYPES:
        raise WeightsError(f"{url}: tensor {name} has unsupported dtype {info['dtype']}")
    dtype = np.dtype(_DTYPES[info["dtype"]])
    try:
        shape = tuple(int(s) for s in info["shape"])
        start, end = (int(o) for o in info["data_offsets"])
    except (TypeError, ValueError):
        raise WeightsError(f"{url}: tensor {name}: shape {info['shape']!r} / data_offsets "
                           f"{info['data_offsets']!r} are not integers") from None
    want = int(np.prod(shape)) * dtype.itemsize
    if end - start != want or start < 0:
        raise WeightsError(f"{url}: tensor {name}: data_offsets [{start}, {end}) hold "
                           f"{end - start} bytes but shape {list(shape)} x {info['dtype']} needs {want}")
    if end > data_bytes:
        raise WeightsError(f"{url}: tensor {name} ends at byte {end} of the data but the file "
                           f"has {data_bytes} (truncated?)")
    return dtype, shape, start, end


def read_safetensors(url: str, names: set[str] | None = None) -> dict[str, np.ndarray]:
    """Tensors of one safetensors file (only `names` if given) as numpy arrays.

    Every header entry is checked against the file's size before anything is read, so a
    truncated or corrupted file raises `WeightsError` naming the file and the tensor.
    """
    fs, path = fs_and_path(url)
    try:
        size = int(fs.size(path))
    except FileNotFoundError:
        raise WeightsError(f"{url}: not found") from None
    out = {}
    with open_url(url, "rb") as f:
        header, base = _header(f, url, size)
        entries = {k: _check_entry(url, k, v, size - base) for k, v in header.items()
                   if k != "__metadata__"}
        for name, (dtype, shape, start, end) in sorted(entries.items(), key=lambda kv: kv[1][2]):
            if names is not None and name not in names:
                continue
            f.seek(base + start)
            buf = f.read(end - start)
            if len(buf) != end - start:  # a remote read can come back short
                raise WeightsError(f"{url}: tensor {name}: read {len(buf)} of {end - start} bytes")
            out[name] = np.frombuffer(buf, dtype=dtype).reshape(shape)
    return out


def safetensors_bytes(tensors: dict[str, np.ndarray], metadata: dict[str, str] | None = None) -> bytes:
    """Serialise numpy arrays (bf16 via ml_dtypes included) in the safetensors format."""
    header, blobs, off = {}, [], 0
    for name in sorted(tensors):
        a = np.ascontiguousarray(tensors[name])
        b = a.tobytes()
        header[name] = {"dtype": _NAMES[a.dtype], "shape": list(a.shape), "data_offsets": [off, off + len(b)]}
        blobs.append(b)
        off += len(b)
    if metadata:
        header["__metadata__"] = dict(metadata)
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * (-len(h) % 8)  # data starts 8-byte aligned, as the reference writer does
    return struct.pack("<Q", len(h)) + h + b"".join(blobs)


def load_config(url: str) -> LMConfig:
    """The LMConfig of a Hugging Face Gemma 2 checkpoint dir (its config.json).

    Raises:
        WeightsError when config.json is missing or not JSON; ConfigError naming the field
        when a value is missing, of the wrong type or unsupported.
    """
    path = join(url, "config.json")
    try:
        hf = json.loads(read_bytes(path))
    except FileNotFoundError:
        raise WeightsError(f"{path}: not found (expected a Hugging Face Gemma 2 checkpoint dir)") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise WeightsError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(hf, dict):
        raise WeightsError(f"{path}: expected a JSON object")
    return LMConfig.from_hf(hf, where=path)


def load_params(url: str, config: LMConfig, dtype=jnp.float32) -> dict:
    """Params pytree from a checkpoint dir at `url` (single file or sharded index)."""
    index_url = join(url, "model.safetensors.index.json")
    if exists(index_url):
        try:
            weight_map = json.loads(read_bytes(index_url))["weight_map"]
        except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as e:
            raise WeightsError(f"{index_url}: not a safetensors index with a weight_map "
                               f"({type(e).__name__}: {e})") from None
        files: dict[str, set] = {}
        for name, fname in weight_map.items():
            files.setdefault(fname, set()).add(name)
    else:
        single = join(url, "model.safetensors")
        if not exists(single):
            raise WeightsError(f"{url}: neither model.safetensors nor model.safetensors.index.json found")
        files = {"model.safetensors": None}
    expected = hf_names(config)
    shapes = param_shapes(config)
    params = {"embed_tokens": None, "norm": None, "layers": [dict() for _ in range(config.n_layers)]}
    seen, unexpected, misshaped = set(), [], []
    for fname, names in sorted(files.items()):
        for name, arr in read_safetensors(join(url, fname), names).items():
            if name in _IGNORED or name.endswith(_IGNORED_SUFFIXES):
                continue
            if name not in expected:
                unexpected.append(name)
                continue
            path = expected[name]
            want = shapes[path[0]] if len(path) == 1 else shapes["layers"][path[1]][path[2]]
            if tuple(arr.shape) != tuple(want):
                misshaped.append(f"{name} {tuple(arr.shape)} (expected {tuple(want)})")
                continue
            value = jnp.asarray(arr, dtype=dtype)
            if len(path) == 1:
                params[path[0]] = value
            else:
                params["layers"][path[1]][path[2]] = value
            seen.add(name)
    missing = sorted(set(expected) - seen - {m.split(" ")[0] for m in misshaped})
    problems = []
    if missing:
        problems.append(f"missing tensors: {', '.join(missing[:8])}" + (" ..." if len(missing) > 8 else ""))
    if unexpected:
        problems.append(f"unexpected tensors: {', '.join(sorted(unexpected)[:8])}"
                        + (" ..." if len(unexpected) > 8 else ""))
    if misshaped:
        problems.append(f"mis-shaped tensors: {'; '.join(misshaped[:8])}")
    if problems:
        raise WeightsError(f"{url}: " + " | ".join(problems))
    return params


def save_weights(url: str, params: dict, config: LMConfig, dtype=np.float32,
                    metadata: dict[str, str] | None = None) -> None:
    """Write `config.json` + `model.safetensors` in Hugging Face layout (loadable by transformers)."""
    tensors = {}
    for name, path in hf_names(config).items():
        v = params[path[0]] if len(path) == 1 else params["layers"][path[1]][path[2]]
        tensors[name] = np.asarray(v).astype(dtype)
    meta = {"format": "pt", **(metadata or {})}
    write_bytes_atomic(join(url, "model.safetensors"), safetensors_bytes(tensors, meta))
    hf = config.to_hf()
    hf["torch_dtype"] = "bfloat16" if np.dtype(dtype) == np.dtype(ml_dtypes.bfloat16) else "float32"
    write_bytes_atomic(join(url, "config.json"), (json.dumps(hf, indent=2) + "\n").encode())
