"""The on-storage activation cache format: `.npy` shards plus one `manifest.json`.

A cache directory (any fsspec URL) for one (model, site, layer) holds::

    manifest.json          what is in the cache (see `Manifest`)
    shard-00000.npy        rows [n, width] in C order, little-endian
    shard-00001.npy        ...

Plain `.npy` (a 128-byte header, then raw fixed-width rows): a local shard memory-maps
with no decode, a remote one is read by byte ranges of rows, and Ray Data reads it with
`read_numpy` (the formats compared: BENCHMARKS.md).

Rows are `width = d * len(parts)` wide: an SAE cache has parts ["x"]; a transcoder cache
has parts ["input", "target"], so its input/target pairs are aligned by construction.
bfloat16 rows are stored as their uint16 bit patterns (npy has no bfloat16 dtype) and
viewed back on read. Every shard is written atomically and listed in the manifest with
its row count, byte size and sha256, so a torn or altered shard is detected by name.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import zlib
from typing import Any

import ml_dtypes
import numpy as np

from raysae import storage
from raysae.sites import SAESite

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
DTYPES = ("float32", "bfloat16")


class ShardError(ValueError):
    """A shard or manifest is missing, torn, altered or inconsistent; names the file."""


def shard_name(index: int) -> str:
    return f"shard-{index:05d}.npy"


BLOCK_BYTES = 4 << 20  # rows are checksummed in blocks of about this many bytes


@dataclasses.dataclass
class ShardInfo:
    name: str
    rows: int
    bytes: int
    sha256: str                                            # of the whole file
    block_rows: int = 0                                    # rows per checksummed block
    crc32: list[int] = dataclasses.field(default_factory=list)  # of each block's raw rows


def block_rows_for(row_bytes: int) -> int:
    """Rows per checksummed block for rows of `row_bytes` bytes."""
    return max(1, BLOCK_BYTES // max(1, row_bytes))


def block_checksums(stored: np.ndarray, block_rows: int) -> list[int]:
    """crc32 of each block of `block_rows` rows of a C-contiguous array as stored."""
    raw = np.ascontiguousarray(stored)
    return [zlib.crc32(raw[i:i + block_rows].view(np.uint8)) for i in range(0, len(raw), block_rows)]


@dataclasses.dataclass
class Manifest:
    """Everything a reader needs to stream a cache, and how it was made."""

    model: str
    site: str                 # "res:12", "transcoder:5" (older caches: the kind alone)
    layer: int
    d: int
    dtype: str = "float32"
    parts: list[str] = dataclasses.field(default_factory=lambda: ["x"])
    rows_per_shard: int = 0
    total_rows: int = 0
    tokens: int = 0
    norm_scalar: float = 1.0  # C: E||x / C||^2 = 1 (transcoders: of the input part)
    shards: list[ShardInfo] = dataclasses.field(default_factory=list)
    config: dict[str, Any] = dataclasses.field(default_factory=dict)
    format_version: int = FORMAT_VERSION

    @property
    def width(self) -> int:
        return self.d * len(self.parts)

    @property
    def sae_site(self) -> SAESite:
        """The site the cache holds (caches before the typed sites stored the kind alone)."""
        return SAESite.parse(self.site if ":" in str(self.site) else f"{self.site}:{self.layer}")

    @property
    def row_bytes(self) -> int:
        return self.width * np.dtype(storage_dtype(self.dtype)).itemsize

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str, where: str = MANIFEST) -> "Manifest":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise ShardError(f"{where}: not valid JSON ({e})") from None
        if not isinstance(data, dict):
            raise ShardError(f"{where}: expected a JSON object")
        known = {f.name for f in dataclasses.fields(cls)}
        missing = [k for k in ("model", "site", "layer", "d") if k not in data]
        if missing:
            raise ShardError(f"{where}: missing field {missing[0]!r}")
        unknown = sorted(set(data) - known)
        if unknown:
            raise ShardError(f"{where}: unknown field {unknown[0]!r}")
        if data.get("dtype", "float32") not in DTYPES:
            raise ShardError(f"{where}: dtype {data['dtype']!r} is not one of {DTYPES}")
        try:
            data["shards"] = [ShardInfo(**s) for s in data.get("shards", [])]
        except TypeError as e:
            raise ShardError(f"{where}: bad shard entry ({e})") from None
        return cls(**data)

    def save(self, url: str) -> None:
        storage.write_bytes_atomic(storage.join(url, MANIFEST), self.to_json().encode())

    @classmethod
    def load(cls, url: str) -> "Manifest":
        path = storage.join(url, MANIFEST)
        try:
            text = storage.read_bytes(path).decode()
        except FileNotFoundError:
            raise ShardError(f"{path}: no manifest (not an activation cache?)") from None
        return cls.from_json(text, where=path)


def storage_dtype(dtype: str) -> np.dtype:
    """The numpy dtype rows are stored as on disk."""
    if dtype not in DTYPES:
        raise ShardError(f"dtype {dtype!r} is not one of {DTYPES}")
    return np.dtype(np.uint16) if dtype == "bfloat16" else np.dtype(np.float32)


def encode_rows(rows: np.ndarray, dtype: str) -> np.ndarray:
    """Rows as stored: float32, or bfloat16 bit patterns in uint16."""
    if dtype == "bfloat16":
        return np.ascontiguousarray(rows.astype(ml_dtypes.bfloat16)).view(np.uint16)
    return np.ascontiguousarray(rows, dtype=np.float32)


def decode_rows(stored: np.ndarray, dtype: str) -> np.ndarray:
    """Stored rows back as an array of the manifest's dtype (a view where possible)."""
    if dtype == "bfloat16":
        return stored.view(ml_dtypes.bfloat16)
    return stored


def write_shard(url: str, index: int, rows: np.ndarray, dtype: str = "float32") -> ShardInfo:
    """Atomically write one shard.

    Args:
        url: the cache directory.
        index: the shard's number (its name is ``shard-NNNNN.npy``).
        rows: [n, width] raw activations.
        dtype: the storage dtype ("float32" or "bfloat16").
    Returns:
        Its `ShardInfo` (rows, bytes, sha256, per-block crc32) for the manifest.
    """
    stored = encode_rows(np.asarray(rows), dtype)
    if stored.ndim != 2:
        raise ShardError(f"{shard_name(index)}: rows must be 2-D, got shape {stored.shape}")
    buf = io.BytesIO()
    np.save(buf, stored, allow_pickle=False)
    data = buf.getvalue()
    name = shard_name(index)
    storage.write_bytes_atomic(storage.join(url, name), data)
    block = block_rows_for(stored.shape[1] * stored.itemsize)
    return ShardInfo(name=name, rows=int(stored.shape[0]), bytes=len(data),
                     sha256=hashlib.sha256(data).hexdigest(), block_rows=block,
                     crc32=block_checksums(stored, block))


def _check_layout(dtype: np.dtype, shape: tuple, manifest: Manifest, info: ShardInfo,
                  where: str) -> None:
    want = storage_dtype(manifest.dtype)
    if dtype != want:
        raise ShardError(f"{where}: dtype {dtype} but manifest says {manifest.dtype}")
    if len(shape) != 2 or shape[1] != manifest.width:
        raise ShardError(f"{where}: shape {shape} but manifest d={manifest.d} "
                         f"x {len(manifest.parts)} part(s) needs width {manifest.width}")
    if shape[0] != info.rows:
        raise ShardError(f"{where}: {shape[0]} rows but manifest lists {info.rows}")


def _check_size(fs, fpath: str, info: ShardInfo, where: str) -> None:
    try:
        size = fs.size(fpath)
    except FileNotFoundError:
        raise ShardError(f"{where}: shard listed in the manifest is missing") from None
    if size != info.bytes:
        raise ShardError(f"{where}: {size} bytes but the manifest lists {info.bytes} (truncated?)")


def data_offset(url: str, manifest: Manifest, info: ShardInfo) -> tuple[int, int]:
    """Where a shard's rows start, from one small ranged read of its `.npy` header.

    Args:
        url: the cache directory.
        manifest: its manifest (dtype and width the header must agree with).
        info: the shard's entry.
    Returns:
        (byte offset of row 0, bytes read). Row r is at offset + r * manifest.row_bytes.
    Raises:
        ShardError naming the shard if it is missing, truncated, not an .npy file, or its
        header disagrees with the manifest on d, dtype or rows.
    """
    path = storage.join(url, info.name)
    fs, fpath = storage.fs_and_path(path)
    _check_size(fs, fpath, info, path)
    # the rows fill the end of the file, so the header is whatever comes before them
    head = info.bytes - info.rows * manifest.row_bytes
    data = fs.cat_file(fpath, 0, head) if head > 0 else b""
    buf = io.BytesIO(data)
    try:
        version = np.lib.format.read_magic(buf)
        read = {(1, 0): np.lib.format.read_array_header_1_0,
                (2, 0): np.lib.format.read_array_header_2_0}.get(version)
        if read is None:
            raise ValueError(f"npy format version {version}")
        shape, fortran, dtype = read(buf)
    except (ValueError, EOFError, SyntaxError) as e:
        raise ShardError(f"{path}: not a readable .npy shard ({e})") from None
    _check_layout(dtype, shape, manifest, info, path)
    if fortran or buf.tell() != head:
        raise ShardError(f"{path}: not a C-order .npy shard of the manifest's layout")
    return head, len(data)


def read_shard(url: str, manifest: Manifest, info: ShardInfo, verify: bool = True,
               mmap: bool = True) -> np.ndarray:
    """Rows of one shard, decoded to the manifest dtype.

    Local shards are memory-mapped when `mmap` and not `verify` (verification reads every
    byte anyway). Raises ShardError naming the shard if it is missing, truncated, has the
    wrong checksum, or disagrees with the manifest on d, dtype or rows.
    """
    path = storage.join(url, info.name)
    fs, fpath = storage.fs_and_path(path)
    _check_size(fs, fpath, info, path)
    local = fs.protocol in ("file", ("file", "local")) or "file" in fs.protocol
    if mmap and local and not verify:
        arr = np.load(fpath, mmap_mode="r", allow_pickle=False)
    else:
        data = storage.read_bytes(path)
        if verify and hashlib.sha256(data).hexdigest() != info.sha256:
            raise ShardError(f"{path}: sha256 mismatch (corrupted or altered shard)")
        try:
            arr = np.load(io.BytesIO(data), allow_pickle=False)
        except ValueError as e:
            raise ShardError(f"{path}: not a readable .npy shard ({e})") from None
    _check_layout(arr.dtype, arr.shape, manifest, info, path)
    return decode_rows(arr, manifest.dtype)


def split_parts(rows: np.ndarray, manifest: Manifest) -> dict[str, np.ndarray]:
    """{part name: [n, d] view} for rows of a (possibly transcoder) cache."""
    d = manifest.d
    return {p: rows[:, i * d:(i + 1) * d] for i, p in enumerate(manifest.parts)}


def complete_shards(url: str) -> set[str]:
    """Names of fully written shards present under `url` (temp files excluded)."""
    return {n for n in storage.listdir(url)
            if n.startswith("shard-") and n.endswith(".npy") and not storage.is_temp_name(n)}
