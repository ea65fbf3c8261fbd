"""Stops a private local Ray cluster's processes when the driver that started it dies.

Ray stops its GCS and raylet with a killed driver, but its dashboard and runtime-env agents
outlive them (reparented to init). `watch(pids)` starts this module as a small detached
process that follows the driver: while it lives, it tracks the cluster's process tree;
once it is gone, it terminates whatever of that tree is left (matched by pid and start
time, so a reused pid is never touched).

    python -m raysae.reaper DRIVER_PID PID [PID ...]
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

import psutil

POLL_S = 1.0


def watch(pids: list[int]) -> subprocess.Popen:
    """Start a reaper for this process and the cluster processes `pids`.

    Args:
        pids: the processes the local cluster started (with their descendants, found later).
    Returns:
        The reaper's process (it exits by itself after the driver).
    """
    return subprocess.Popen([sys.executable, "-m", "raysae.reaper", str(os.getpid()),
                             *map(str, pids)], stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)  # not in the driver's process group


def _track(tree: dict[int, float]) -> None:
    """Add the current descendants of the tracked processes to `tree` (pid -> start time)."""
    for pid, started in list(tree.items()):
        try:
            proc = psutil.Process(pid)
            if proc.create_time() != started:
                continue
            for child in proc.children(recursive=True):
                tree.setdefault(child.pid, child.create_time())
        except psutil.Error:
            continue


def _stop(tree: dict[int, float], grace_s: float = 3.0) -> None:
    procs = []
    for pid, started in tree.items():
        try:
            proc = psutil.Process(pid)
            if proc.create_time() == started:
                procs.append(proc)
        except psutil.Error:
            continue
    for proc in procs:
        try:
            proc.terminate()
        except psutil.Error:
            pass
    _, alive = psutil.wait_procs(procs, timeout=grace_s)
    for proc in alive:
        try:
            proc.kill()
        except psutil.Error:
            pass


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def main(argv: list[str]) -> int:
    driver, pids = int(argv[0]), [int(p) for p in argv[1:]]
    tree = {}
    for pid in pids:
        try:
            tree[pid] = psutil.Process(pid).create_time()
        except psutil.Error:
            continue
    while _alive(driver):
        _track(tree)
        time.sleep(POLL_S)
    _track(tree)
    _stop(tree)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
