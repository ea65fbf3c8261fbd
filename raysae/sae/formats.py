"""Saving and loading SAEs in released formats.

- Gemma Scope: one `params.npz` with W_enc [d, M], W_dec [M, d], b_enc [M], b_dec [d],
  threshold [M], float32, in raw activation space (i.e. folded; see `fold`). Read with
  `allow_pickle=False`, so a pickled object in the file is an error, not code execution.
- SAELens (v6 layout): a directory with `cfg.json` (architecture "jumprelu", d_in, d_sae,
  dtype, apply_b_dec_to_input, normalize_activations, `meta` with the TransformerLens hook) and
  `sae_weights.safetensors` with the same five tensors, loadable by `sae_lens.SAE.load_from_disk`.

All paths are fsspec URLs. Malformed files raise `SAEFormatError` naming the file and key.
"""

from __future__ import annotations

import io
import json
from typing import Any

import numpy as np
import safetensors.numpy

from raysae import storage
from raysae.sae.params import SAEParams
from raysae.sites import ATTN, SAESite

NPZ_NAME = "params.npz"
SAELENS_CFG = "cfg.json"
SAELENS_WEIGHTS = "sae_weights.safetensors"
KEYS = ("W_enc", "W_dec", "b_enc", "b_dec", "threshold")


class SAEFormatError(ValueError):
    """A saved SAE is malformed; the message names the file and the key."""


def _to_numpy(params: SAEParams) -> dict[str, np.ndarray]:
    return {k: np.asarray(getattr(params, k), dtype=np.float32) for k in KEYS}


def validate_arrays(arrays: dict[str, Any], where: str) -> SAEParams:
    """Check keys, dtypes and shapes of a Gemma Scope-style tensor dict; return SAEParams."""
    for k in KEYS:
        if k not in arrays:
            raise SAEFormatError(f"{where}: missing key {k!r} (expected {', '.join(KEYS)})")
    out = {}
    for k in KEYS:
        a = np.asarray(arrays[k])
        if a.dtype == object or not np.issubdtype(a.dtype, np.floating):
            raise SAEFormatError(f"{where}: key {k!r} has dtype {a.dtype}, expected floating point")
        out[k] = a
    d_in, M = out["W_enc"].ndim == 2 and out["W_enc"].shape or (None, None)
    if d_in is None:
        raise SAEFormatError(f"{where}: key 'W_enc' has shape {out['W_enc'].shape}, expected [d, M]")
    if out["W_dec"].ndim != 2 or out["W_dec"].shape[0] != M:
        raise SAEFormatError(f"{where}: key 'W_dec' has shape {out['W_dec'].shape}, expected [{M}, d]")
    d_out = out["W_dec"].shape[1]
    for k, shape in (("b_enc", (M,)), ("b_dec", (d_out,)), ("threshold", (M,))):
        if out[k].shape != shape:
            raise SAEFormatError(f"{where}: key {k!r} has shape {out[k].shape}, expected {list(shape)}")
    return SAEParams(**{k: out[k].astype(np.float32) for k in KEYS})


def save_npz(params: SAEParams, url: str) -> str:
    """Write Gemma Scope `params.npz` (a file URL, or a directory URL to put it in)."""
    if not url.endswith(".npz"):
        url = storage.join(url, NPZ_NAME)
    buf = io.BytesIO()
    np.savez(buf, **_to_numpy(params))
    storage.write_bytes_atomic(url, buf.getvalue())
    return url


def load_npz(url: str) -> SAEParams:
    """Read a Gemma Scope `params.npz` (file URL, or a directory containing one)."""
    if not url.endswith(".npz"):
        url = storage.join(url, NPZ_NAME)
    try:
        data = storage.read_bytes(url)
    except FileNotFoundError:
        raise SAEFormatError(f"{url}: file not found") from None
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as z:
            arrays = {}
            for k in z.files:
                try:
                    arrays[k] = z[k]
                except ValueError as e:  # object arrays need pickle
                    raise SAEFormatError(f"{url}: key {k!r} holds a pickled object ({e})") from None
    except SAEFormatError:
        raise
    except Exception as e:
        raise SAEFormatError(f"{url}: not a readable npz file ({e})") from None
    return validate_arrays(arrays, url)


def saelens_config(params: SAEParams, *, model_name: str | None = None,
                   site: "SAESite | str | None" = None, hook_name: str | None = None,
                   hook_layer: int | None = None, context_size: int | None = None,
                   extra: dict | None = None) -> dict:
    """cfg.json for a folded JumpReLU SAE (raw activation space, b_dec not applied to input).

    Args:
        params: the folded SAE.
        model_name: the model it was trained on.
        site: a raysae site ("res:12", "transcoder:5"): sets the TransformerLens hook names
            (and hook_z reshaping for attention sites); else give `hook_name` / `hook_layer`.
        context_size: the training context length.
        extra: raysae's own metadata (kept under the "raysae" key).
    """
    reshape = "none"
    if site is not None:
        site = SAESite.parse(site)
        hook_name, hook_layer = site.input.tl_hook, site.layer
        reshape = "hook_z" if site.input.kind == ATTN else "none"
    meta = {
        "model_name": model_name, "hook_name": hook_name, "hook_layer": hook_layer,
        "hook_head_index": None, "model_class_name": "HookedTransformer",
        "model_from_pretrained_kwargs": {}, "prepend_bos": True, "exclude_special_tokens": True,
        "context_size": context_size, "dataset_path": None,
    }
    cfg = {
        "architecture": "jumprelu", "d_in": int(params.W_enc.shape[0]),
        "d_sae": int(params.W_enc.shape[1]), "dtype": "float32", "device": "cpu",
        "apply_b_dec_to_input": False, "normalize_activations": "none",
        "reshape_activations": reshape, "meta": meta,
    }
    if site is not None and site.is_transcoder:
        # App. B transcoder: mlp_in -> mlp at one layer (SAELens' JumpReLU transcoder).
        cfg.update(architecture="jumprelu_transcoder", d_out=int(params.W_dec.shape[1]),
                   hook_name_out=site.target.tl_hook, hook_layer_out=site.layer,
                   hook_head_index_out=None)
    if extra:
        cfg["raysae"] = extra
    return cfg


def save_saelens(params: SAEParams, url: str, **cfg_kwargs: Any) -> str:
    """Write a SAELens directory (`cfg.json` + `sae_weights.safetensors`) at `url`."""
    weights = safetensors.numpy.save(_to_numpy(params))
    storage.write_bytes_atomic(storage.join(url, SAELENS_WEIGHTS), weights)
    cfg = saelens_config(params, **cfg_kwargs)
    storage.write_bytes_atomic(storage.join(url, SAELENS_CFG), json.dumps(cfg, indent=2).encode())
    return url


def load_saelens(url: str) -> tuple[SAEParams, dict]:
    """Read a SAELens JumpReLU directory; returns (params, cfg)."""
    cfg_url = storage.join(url, SAELENS_CFG)
    w_url = storage.join(url, SAELENS_WEIGHTS)
    try:
        cfg = json.loads(storage.read_bytes(cfg_url))
    except FileNotFoundError:
        raise SAEFormatError(f"{cfg_url}: file not found") from None
    except json.JSONDecodeError as e:
        raise SAEFormatError(f"{cfg_url}: not valid JSON ({e})") from None
    arch = cfg.get("architecture")
    if arch not in ("jumprelu", "jumprelu_transcoder"):
        raise SAEFormatError(f"{cfg_url}: key 'architecture' is {arch!r}, expected 'jumprelu'")
    try:
        arrays = safetensors.numpy.load(storage.read_bytes(w_url))
    except FileNotFoundError:
        raise SAEFormatError(f"{w_url}: file not found") from None
    except Exception as e:
        raise SAEFormatError(f"{w_url}: not a readable safetensors file ({e})") from None
    params = validate_arrays(arrays, w_url)
    for key, got in (("d_in", params.W_enc.shape[0]), ("d_sae", params.W_enc.shape[1])):
        if key in cfg and cfg[key] != got:
            raise SAEFormatError(f"{cfg_url}: key {key!r} is {cfg[key]} but the weights have {got}")
    norm = cfg.get("normalize_activations", "none")
    if norm not in ("none", None):
        # Run-time input normalisation is not part of the five tensors: evaluating such an
        # SAE on raw activations would silently give wrong numbers.
        raise SAEFormatError(f"{cfg_url}: key 'normalize_activations' is {norm!r}; only 'none' "
                             "(raw activation space) is supported")
    if cfg.get("apply_b_dec_to_input"):
        # SAELens subtracts b_dec before encoding: fold it so our encode (no pre-bias) matches.
        params = params._replace(b_enc=params.b_enc - params.b_dec @ params.W_enc)
    return params, cfg
