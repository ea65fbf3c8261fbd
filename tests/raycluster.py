"""A private `ray start --head` for tests: its own ports, temp dir and auth token.

`head_node()` starts one with token auth (RAY_AUTH_MODE=token, as Ray 2.60 wants for job
submission and the dashboard) and yields a `Head` with the environment a client needs;
on exit it kills exactly that cluster's processes (never `ray stop`, which would stop
every Ray on the machine).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from typing import NamedTuple

import psutil

BIN = os.path.dirname(sys.executable)


class Head(NamedTuple):
    gcs: str        # host:port, for ray.init(address=...)
    dashboard: str  # http://127.0.0.1:port, for the job API
    env: dict       # environment of a client (PATH, auth token, no RAY_ADDRESS)
    temp_dir: str


def free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def client_env(token: str, **extra: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(PATH=f"{BIN}:{env.get('PATH', '')}", RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=token,
               RAY_USAGE_STATS_ENABLED="0", **extra)
    return env


@contextlib.contextmanager
def head_node(num_cpus: int = 2):
    temp_dir = tempfile.mkdtemp(prefix="/tmp/rs-")  # short: Ray's socket paths have a length cap
    gcs, dash, client, nm, om, agent, agent_grpc, rte, metrics, *workers = free_ports(9 + 32)
    token = secrets.token_hex(16)
    env = client_env(token)
    cmd = [f"{BIN}/ray", "start", "--head", f"--num-cpus={num_cpus}", f"--temp-dir={temp_dir}",
           f"--port={gcs}", "--include-dashboard=true", "--dashboard-host=127.0.0.1",
           f"--dashboard-port={dash}", f"--ray-client-server-port={client}",
           f"--node-manager-port={nm}", f"--object-manager-port={om}",
           f"--dashboard-agent-listen-port={agent}", f"--dashboard-agent-grpc-port={agent_grpc}",
           f"--runtime-env-agent-port={rte}", f"--metrics-export-port={metrics}",
           f"--worker-port-list={','.join(map(str, workers))}",
           "--object-store-memory=300000000", "--disable-usage-stats"]
    before = {p.pid for p in psutil.process_iter()}
    started = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    if started.returncode:
        _kill_cluster(temp_dir, before)
        raise RuntimeError(f"ray start failed: {started.stdout[-2000:]} {started.stderr[-2000:]}")
    try:
        yield Head(f"127.0.0.1:{gcs}", f"http://127.0.0.1:{dash}", env, temp_dir)
    finally:
        _kill_cluster(temp_dir, before)
        shutil.rmtree(temp_dir, ignore_errors=True)


def _kill_cluster(temp_dir: str, before: set[int]) -> None:
    """SIGKILL the processes this cluster started: new since `before`, and naming its temp dir
    (or children of one that does)."""
    mine = []
    for p in psutil.process_iter(["pid", "cmdline"]):
        try:
            if p.pid not in before and temp_dir in " ".join(p.info["cmdline"] or []):
                mine.append(p)
                mine.extend(p.children(recursive=True))
        except psutil.Error:
            continue
    for p in mine:
        with contextlib.suppress(psutil.Error):
            p.send_signal(signal.SIGKILL)
    psutil.wait_procs(mine, timeout=10)
    time.sleep(0.5)
