"""A local filesystem that runs out of space: `full:///path` writes fail with ENOSPC once a
byte budget shared by every process (driver, Ray workers) is spent.

The budget lives in a file named by $RAYSAE_FULLFS_BUDGET ({"left": bytes, "written": bytes}),
updated under an flock, so a test can fill the "disk" mid-sweep and later free it. Register
the protocol with `register()` (Ray workers: runtime_env worker_process_setup_hook).
"""

from __future__ import annotations

import errno
import fcntl
import json
import os

import fsspec
from fsspec.implementations.local import LocalFileSystem

ENV = "RAYSAE_FULLFS_BUDGET"


def set_budget(path: str, left: int | None) -> None:
    """Allow `left` more bytes to be written (None: unlimited)."""
    with open(path, "a+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        f.seek(0)
        old = json.loads(f.read() or "{}")
        f.seek(0)
        f.truncate()
        f.write(json.dumps({"left": left, "written": old.get("written", 0)}))


def read_budget(path: str) -> dict:
    with open(path) as f:
        return json.loads(f.read() or "{}")


def _spend(n: int) -> None:
    path = os.environ.get(ENV)
    if not path:
        return
    with open(path, "r+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        state = json.loads(f.read() or "{}")
        left = state.get("left")
        if left is not None and n > left:
            raise OSError(errno.ENOSPC, "No space left on device (test filesystem)")
        state["left"] = None if left is None else left - n
        state["written"] = state.get("written", 0) + n
        f.seek(0)
        f.truncate()
        f.write(json.dumps(state))


class _Counted:
    """A writable file whose writes spend the shared budget."""

    def __init__(self, f):
        self._f = f

    def write(self, data):
        _spend(len(data))
        return self._f.write(data)

    def __getattr__(self, name):
        return getattr(self._f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._f.close()


class FullFileSystem(LocalFileSystem):
    protocol = "full"
    root_marker = "/"

    def _open(self, path, mode="rb", **kwargs):
        f = super()._open(path, mode, **kwargs)
        return _Counted(f) if any(c in mode for c in "wa+") else f

    def unstrip_protocol(self, name: str) -> str:
        return "full://" + self._strip_protocol(name)


def register() -> None:
    fsspec.register_implementation("full", FullFileSystem, clobber=True)
