"""Reading eval inputs from fsspec URLs: SAE files, text documents, token arrays (for the CLI).

- `load_sae(url)`: a Gemma Scope `params.npz` (file, or a directory holding one) or a SAELens
  directory (`cfg.json` + `sae_weights.safetensors`); malformed files raise SAEFormatError
  naming the file and key.
- `iter_texts(urls)`: documents, lazily, from files, directories (every file under them, sorted)
  or globs; a `.jsonl` file gives one document per line from its "text" field.
- `read_tokens(url)`: an int `.npy` array ([N, T] rows or a 1-D stream).
"""

from __future__ import annotations

import io
import json
from typing import Iterable, Iterator

import fsspec
import numpy as np

from raysae import storage
from raysae.sae.formats import NPZ_NAME, SAEFormatError, load_npz
from raysae.sae.saelens import CFG_NAME as SAELENS_CFG, load_saelens
from raysae.sae.params import SAEParams


def load_sae(url: str) -> SAEParams:
    """SAEParams from a params.npz or a SAELens directory at `url`."""
    if url.endswith(".npz") or storage.exists(storage.join(url, NPZ_NAME)):
        return load_npz(url)
    if storage.exists(storage.join(url, SAELENS_CFG)):
        return load_saelens(url)[0]
    raise SAEFormatError(f"{url}: neither a params.npz file nor a directory with {NPZ_NAME} or {SAELENS_CFG}")


def _expand(url: str) -> list[str]:
    fs, path = storage.fs_and_path(url)
    if any(c in path for c in "*?["):
        paths = sorted(fs.glob(path))
    elif fs.isdir(path):
        paths = sorted(p for p in fs.find(path) if not fs.isdir(p))
    elif fs.exists(path):
        paths = [path]
    else:
        raise FileNotFoundError(f"{url}: no such file, directory or glob match")
    if not paths:
        raise FileNotFoundError(f"{url}: matched no files")
    proto = fs.protocol[0] if isinstance(fs.protocol, (tuple, list)) else fs.protocol
    return [p if proto in ("file", "local") else fs.unstrip_protocol(p) for p in paths]


def iter_texts(urls: Iterable[str]) -> Iterator[str]:
    """Documents from each URL in turn (read lazily: the eval stops once it has enough)."""
    for url in urls:
        for path in _expand(url):
            with fsspec.open(path, "rb") as fb:
                raw = fb.read()
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise ValueError(f"{path}: not UTF-8 text (byte {e.start}: {raw[e.start:e.start + 4]!r})"
                                 " — binary data?") from None
            if not path.endswith(".jsonl"):
                yield text
                continue
            for i, line in enumerate(text.splitlines()):
                if line.strip():
                    try:
                        yield json.loads(line)["text"]
                    except (json.JSONDecodeError, KeyError, TypeError):
                        raise ValueError(f"{path}:{i + 1}: expected a JSON object with a 'text' field")


def read_tokens(url: str) -> np.ndarray:
    """An integer array from a `.npy` file at `url`."""
    try:
        arr = np.load(io.BytesIO(storage.read_bytes(url)), allow_pickle=False)
    except FileNotFoundError:
        raise FileNotFoundError(f"{url}: file not found") from None
    except ValueError as e:
        raise ValueError(f"{url}: not a readable .npy array ({e})") from None
    if not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"{url}: token array has dtype {arr.dtype}, expected integers")
    return arr
