"""Gemma Scope's `params.npz`: W_enc [d, M], W_dec [M, d], b_enc [M], b_dec [d], threshold [M],
float32, in raw activation space (folded, see `fold`), and the checks every format shares.

Files are read with `allow_pickle=False` (a pickled object is an error, not code execution)
from any fsspec URL; malformed files raise `SAEFormatError` naming the file and key. SAELens
directories are `raysae.sae.saelens`, the public release's folder layout `raysae.sae.release`.
"""

from __future__ import annotations

import io
from typing import Any

import numpy as np

from raysae import storage
from raysae.sae.params import SAEParams

NPZ_NAME = "params.npz"
KEYS = ("W_enc", "W_dec", "b_enc", "b_dec", "threshold")


class SAEFormatError(ValueError):
    """A saved SAE is malformed; the message names the file and the key."""


def to_numpy(params: SAEParams) -> dict[str, np.ndarray]:
    """The five tensors as float32 numpy arrays, by their Gemma Scope names."""
    return {k: np.asarray(getattr(params, k), dtype=np.float32) for k in KEYS}


def validate_arrays(arrays: dict[str, Any], where: str) -> SAEParams:
    """Check keys, dtypes and shapes of a Gemma Scope-style tensor dict; return SAEParams.

    A `log_threshold` (older SAELens 6.x files) stands in for `threshold` as exp of it.
    """
    if "threshold" not in arrays and "log_threshold" in arrays:
        arrays = {**arrays, "threshold": np.exp(np.asarray(arrays["log_threshold"], np.float64))}
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
    """Write a Gemma Scope `params.npz` (raw activation space: pass folded params).

    Args:
        params: the SAE.
        url: a file URL ending in .npz, or a directory URL to put params.npz in.
    Returns:
        The file's URL.
    """
    if not url.endswith(".npz"):
        url = storage.join(url, NPZ_NAME)
    buf = io.BytesIO()
    np.savez(buf, **to_numpy(params))
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
