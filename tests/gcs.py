"""A GCS emulator on loopback (gcp-storage-emulator, from the package index) for gs:// tests.

`emulator()` starts an in-memory server, points gcsfs at it (STORAGE_EMULATOR_HOST) and yields
the environment Ray workers need too (pass it as runtime_env env_vars).
"""

from __future__ import annotations

import contextlib
import os
import socket

BUCKET = "raysae-test"


def _free_port() -> int:
    with contextlib.closing(socket.socket()) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def emulator():
    from gcp_storage_emulator.server import create_server

    port = _free_port()
    server = create_server("127.0.0.1", port, in_memory=True, default_bucket=BUCKET)
    server.start()
    env = {"STORAGE_EMULATOR_HOST": f"http://127.0.0.1:{port}",
           # gcsfs's experimental bucket-type probe speaks gRPC, which the emulator does not
           "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false"}
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    import gcsfs

    gcsfs.GCSFileSystem.clear_instance_cache()
    try:
        yield env
    finally:
        server.stop()
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        gcsfs.GCSFileSystem.clear_instance_cache()
