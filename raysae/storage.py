"""Storage through fsspec URLs: local paths, gs:// (gcsfs), s3://, memory://.

Nothing in raysae assumes a local disk. Writers that must never leave a half-written file
(checkpoints, activation shards, frontier files) use `write_bytes_atomic`: a local file is
renamed into place when complete, an object store's single upload is atomic by itself, so
a crash leaves either the old file or the new one, never a torn one.
"""

from __future__ import annotations

import contextlib
import io
import os
import threading
import uuid
from typing import Iterator

import fsspec
from fsspec.implementations.local import LocalFileSystem


def fs_and_path(url: str) -> tuple[fsspec.AbstractFileSystem, str]:
    """The filesystem and the in-filesystem path for `url`."""
    fs, path = fsspec.core.url_to_fs(url)
    return fs, path


def is_local(url: str) -> bool:
    """True for a plain path or a file:// URL."""
    return "://" not in url or url.startswith("file://")


def absolute(url: str, base: str | None = None) -> str:
    """`url` with a relative local path made absolute (other URLs unchanged).

    Ray workers (Tune trials, Data tasks) run in their own working directories, so any local
    path handed to them must not depend on the driver's cwd.

    Args:
        url: a path or URL.
        base: the directory a relative path is relative to (default: the cwd).
    """
    if "://" in url:
        return url
    url = os.path.expanduser(url)
    if base is not None and not os.path.isabs(url):
        return absolute(join(base, url))
    return os.path.abspath(url)


def join(url: str, *parts: str) -> str:
    """Join URL path components with '/' (works for local paths and scheme://)."""
    out = url.rstrip("/")
    for p in parts:
        out = out + "/" + p.strip("/")
    return out


def open_url(url: str, mode: str = "rb"):
    fs, path = fs_and_path(url)
    return fs.open(path, mode)


def exists(url: str) -> bool:
    fs, path = fs_and_path(url)
    return fs.exists(path)


def makedirs(url: str) -> None:
    fs, path = fs_and_path(url)
    fs.makedirs(path, exist_ok=True)


def listdir(url: str) -> list[str]:
    """Base names of the entries directly under `url` (empty if it does not exist)."""
    fs, path = fs_and_path(url)
    if not fs.exists(path):
        return []
    return sorted(os.path.basename(p.rstrip("/")) for p in fs.ls(path, detail=False))


def remove(url: str, recursive: bool = False) -> None:
    fs, path = fs_and_path(url)
    if fs.exists(path):
        fs.rm(path, recursive=recursive)


def read_bytes(url: str) -> bytes:
    with open_url(url, "rb") as f:
        return f.read()


def write_bytes_atomic(url: str, data: bytes) -> None:
    """Write `data` to `url` so that readers see the old file or the whole new one.

    A local file is written under a temporary name and renamed into place. An object store
    (gs://, s3://, ...) publishes an upload whole, so it is one upload: a temporary object
    and a move would copy every byte twice there.
    """
    fs, path = fs_and_path(url)
    if not isinstance(fs, LocalFileSystem):
        fs.pipe_file(path, data)
        return
    parent = os.path.dirname(path)
    if parent:
        fs.makedirs(parent, exist_ok=True)
    tmp = f"{path}.tmp-{uuid.uuid4().hex[:12]}"
    try:
        with fs.open(tmp, "wb") as f:
            f.write(data)
        fs.mv(tmp, path)
    finally:
        if fs.exists(tmp):
            fs.rm(tmp)


@contextlib.contextmanager
def atomic_write(url: str) -> Iterator[io.BytesIO]:
    """`with atomic_write(url) as f: f.write(...)` — published only if the block succeeds."""
    buf = io.BytesIO()
    yield buf
    write_bytes_atomic(url, buf.getvalue())


def is_temp_name(name: str) -> bool:
    """True for the temporary files `atomic_write` leaves behind when killed mid-write."""
    return ".tmp-" in name


def unwritable_reason(url: str, timeout_s: float = 30.0) -> str | None:
    """Why `url` cannot take writes, or None: a probe file is written and removed under it.

    The probe runs in a thread given `timeout_s`, because a storage client retrying an
    unreachable host would take minutes. Callers turn the reason into their own error naming
    their field.

    Args:
        url: a directory URL (created if needed, as any writer would).
        timeout_s: how long storage may take to answer.
    Returns:
        None if writable; else a one-line reason (the exception's type and first line).
    """
    probe = join(url, f".raysae-probe-{uuid.uuid4().hex[:8]}")
    failure: list[BaseException] = []

    def attempt() -> None:
        try:
            write_bytes_atomic(probe, b"")
            remove(probe)
        except BaseException as e:  # noqa: BLE001 - any backend's failure (DNS, auth, quota)
            failure.append(e)

    worker = threading.Thread(target=attempt, daemon=True, name="storage-probe")
    worker.start()
    worker.join(timeout_s)
    if worker.is_alive():
        return f"did not answer within {timeout_s:g} s (unreachable host, or no credentials?)"
    if failure:
        e = failure[0]
        first = (str(e).strip().splitlines() or [""])[0][:200]
        return f"is not writable ({type(e).__name__}: {first})"
    return None


def pyarrow_filesystem(url: str):
    """(path, pyarrow filesystem or None) for libraries that take pyarrow filesystems (Tune,
    Ray Train): a local path stays a path; anything else is its fsspec filesystem wrapped."""
    if is_local(url):
        return os.path.abspath(url.removeprefix("file://")), None
    import pyarrow.fs

    fs, path = fs_and_path(url)
    return path, pyarrow.fs.PyFileSystem(pyarrow.fs.FSSpecHandler(fs))
