"""Inputs of a cache job: files at fsspec URLs turned into fixed-length token sequences.

`resolve_inputs(config)` expands URLs, globs and the offline corpus "python-stdlib" into a
sorted list of `InputFile`s, each checked to exist and be non-empty before any work;
`file_sequences` reads one file (what the Ray Data tokenize tasks run). Formats by extension:
text (one document per file), jsonl / parquet (field `text_field`), tokens (.npy, or parquet
with `format: tokens`); compressed files are read through fsspec. Each document becomes
sequences of `context_length` tokens, BOS first.
"""

from __future__ import annotations

import io
import json
import os
import sysconfig
from typing import Iterator, NamedTuple

import fsspec
import numpy as np

from raysae import storage
from raysae.activations.config import STDLIB

STDLIB_MAX_BYTES = 16 << 20  # the whole stdlib (≈11 MB of .py on CPython 3.11) fits
_SKIP_DIRS = {"site-packages", "dist-packages", "test", "tests", "__pycache__", "idlelib"}
_EXT = {".jsonl": "jsonl", ".json": "jsonl", ".parquet": "parquet", ".npy": "tokens"}
_COMPRESSED = (".gz", ".bz2", ".xz", ".zst", ".lz4")


class InputError(ValueError):
    """An input file is missing, unreadable, empty or malformed; the message names it."""


class InputFile(NamedTuple):
    url: str
    format: str  # text | jsonl | parquet | tokens
    size: int    # bytes on storage


def stdlib_files(max_bytes: int = STDLIB_MAX_BYTES) -> list[str]:
    """This Python's standard-library .py sources (no tests), sorted, UTF-8 only, capped by size."""
    root = sysconfig.get_paths()["stdlib"]
    found = []
    for dirpath, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if d not in _SKIP_DIRS)
        found += [os.path.join(dirpath, f) for f in files if f.endswith(".py")]
    out, total = [], 0
    for path in sorted(os.path.relpath(p, root) for p in found):
        full = os.path.join(root, path)
        size = os.path.getsize(full)
        if size == 0 or total + size > max_bytes:
            continue
        try:
            open(full, encoding="utf-8").read()
        except (UnicodeDecodeError, OSError):
            continue  # a few stdlib files are deliberately not UTF-8
        out.append(full)
        total += size
    return out


def _format_of(url: str, fmt: str) -> str:
    base = url
    for ext in _COMPRESSED:
        if base.endswith(ext):
            base = base[: -len(ext)]
    ext = os.path.splitext(base)[1].lower()
    if fmt == "tokens":
        return "tokens"
    if fmt != "auto":
        return fmt
    return _EXT.get(ext, "text")


def resolve_inputs(config) -> list[InputFile]:
    """The job's input files in order, each checked to exist and be non-empty."""
    out: list[InputFile] = []
    for entry in config.inputs:
        if entry == STDLIB:
            urls = stdlib_files()
            if not urls:
                raise InputError(f"inputs: {STDLIB}: no readable .py files under "
                                 f"{sysconfig.get_paths()['stdlib']}")
        else:
            fs, path = storage.fs_and_path(entry)
            if any(ch in path for ch in "*?["):
                urls = [_unstrip(entry, p) for p in sorted(fs.glob(path))]
                if not urls:
                    raise InputError(f"inputs: {entry}: the pattern matches no files")
            elif fs.isdir(path):
                urls = [_unstrip(entry, p) for p in sorted(fs.find(path))]
                if not urls:
                    raise InputError(f"inputs: {entry}: the directory is empty")
            else:
                urls = [entry]
        for url in urls:
            fs, path = storage.fs_and_path(url)
            try:
                size = int(fs.size(path))
            except FileNotFoundError:
                raise InputError(f"inputs: {url}: file not found") from None
            except OSError as e:
                raise InputError(f"inputs: {url}: unreadable ({e})") from None
            if size == 0:
                raise InputError(f"inputs: {url}: empty file")
            out.append(InputFile(url, _format_of(url, config.format), size))
    if config.max_input_bytes is not None:
        kept, total = [], 0
        for f in out:
            if kept and total + f.size > config.max_input_bytes:
                break
            kept.append(f)
            total += f.size
        out = kept
    return out


def _unstrip(entry: str, path: str) -> str:
    """A path from fs.glob/find back as a URL with the entry's scheme."""
    return f"{entry.split('://', 1)[0]}://{path}" if "://" in entry else path


def _read(url: str) -> bytes:
    try:
        with fsspec.open(url, "rb", compression="infer") as f:
            return f.read()
    except FileNotFoundError:
        raise InputError(f"{url}: file not found") from None
    except OSError as e:
        raise InputError(f"{url}: unreadable ({e})") from None


def _text(data: bytes, url: str) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise InputError(f"{url}: not UTF-8 text ({e})") from None


def documents(f: InputFile, field: str, tokenizer, vocab_size: int) -> Iterator[list[int] | np.ndarray]:
    """Token ids of each document in `f` (BOS not included)."""
    data = _read(f.url)
    if f.format in ("text", "jsonl", "parquet") and tokenizer is None:
        raise InputError(f"{f.url}: the model has no tokenizer; give pre-tokenized inputs (format: tokens)")

    def enc(text: str) -> list[int]:
        ids = tokenizer.encode(text)
        return ids[1:] if ids and ids[0] == tokenizer.bos_id else ids

    if f.format == "text":
        text = _text(data, f.url)
        if not text.strip():
            raise InputError(f"{f.url}: empty text")
        yield enc(text)
    elif f.format == "jsonl":
        for i, line in enumerate(_text(data, f.url).splitlines(), 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise InputError(f"{f.url}:{i}: not valid JSON ({e})") from None
            if not isinstance(obj, dict) or field not in obj:
                raise InputError(f"{f.url}:{i}: no field {field!r} (set text_field)")
            if not isinstance(obj[field], str):
                raise InputError(f"{f.url}:{i}: field {field!r} is not a string")
            yield enc(obj[field])
    elif f.format == "parquet":
        for value in _column(data, f, field):
            if not isinstance(value, str):
                raise InputError(f"{f.url}: column {field!r} holds {type(value).__name__}, not text "
                                 "(pre-tokenized? use format: tokens)")
            yield enc(value)
    elif f.format == "tokens":
        for ids in _token_docs(data, f, field):
            ids = np.asarray(ids)
            if ids.size and (not np.issubdtype(ids.dtype, np.integer) or ids.min() < 0
                             or ids.max() >= vocab_size):
                raise InputError(f"{f.url}: token ids must be integers in [0, {vocab_size})")
            yield ids
    else:
        raise InputError(f"{f.url}: unknown format {f.format!r}")


def _column(data: bytes, f: InputFile, field: str) -> list:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(io.BytesIO(data))
    except Exception as e:  # pyarrow raises several types for a bad file
        raise InputError(f"{f.url}: not a readable parquet file ({e})") from None
    if field not in table.column_names:
        raise InputError(f"{f.url}: no column {field!r} (has {table.column_names}; set text_field)")
    return table.column(field).to_pylist()


def _token_docs(data: bytes, f: InputFile, field: str):
    if f.url.endswith(".parquet"):
        return [np.asarray(v if v is not None else [], np.int64) for v in _column(data, f, field)]
    try:
        arr = np.load(io.BytesIO(data), allow_pickle=False)
    except ValueError as e:
        raise InputError(f"{f.url}: not a readable .npy array ({e})") from None
    if arr.ndim == 1:
        return [arr]
    if arr.ndim == 2:
        return list(arr)
    raise InputError(f"{f.url}: token arrays must be 1-D (one document) or 2-D (one per row), "
                     f"got shape {arr.shape}")


def chunk(ids, length: int, bos_id: int, pad_id: int, min_tokens: int) -> np.ndarray:
    """[n, length] int32 sequences of one document: BOS + up to length-1 of its tokens each."""
    ids = np.asarray(ids, np.int64)
    if ids.size and ids[0] == bos_id:
        ids = ids[1:]
    if ids.size and ids[-1] == pad_id:  # right-padded token rows
        nz = np.flatnonzero(ids != pad_id)
        ids = ids[: nz[-1] + 1] if nz.size else ids[:0]
    step = length - 1
    starts = [s for s in range(0, len(ids), step) if len(ids) - s >= min_tokens]
    out = np.full((len(starts), length), pad_id, np.int32)
    for r, s in enumerate(starts):
        piece = ids[s:s + step]
        out[r, 0] = bos_id
        out[r, 1:1 + len(piece)] = piece
    return out


def file_sequences(f: InputFile, config, tokenizer, lm) -> tuple[np.ndarray, np.ndarray]:
    """(sequences [n, T] int32, document index within the file [n]) of one input file."""
    seqs, docs = [], []
    for d, ids in enumerate(documents(f, config.text_field, tokenizer, lm.vocab_size)):
        s = chunk(ids, config.context_length, lm.bos_id, lm.pad_id, config.min_tokens)
        seqs.append(s)
        docs.append(np.full(len(s), d, np.int64))
    if not seqs or sum(len(s) for s in seqs) == 0:
        raise InputError(f"{f.url}: no tokens (empty documents)")
    return np.concatenate(seqs), np.concatenate(docs)
