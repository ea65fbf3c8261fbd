"""A sweep through the job API, as a user submits it: `ray job submit ... -- raysae sweep FILE`
against a private `ray start --head` with token auth; where results land, a relative storage
refused, a resubmitted job resuming with --resume-if-exists; and which cluster a driver joins."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time

import psutil
import pytest
import yaml

from raysae.evals.frontier import read_frontier
from tests.raycluster import BIN, head_node

pytestmark = [pytest.mark.slow, pytest.mark.ray, pytest.mark.timeout(900)]

SWEEP = {"name": "job", "storage": "runs", "model": "tiny", "sites": ["res:1"], "widths": [64],
         "sparsity": {"grid": [0.01]}, "tokens": 256 * 20,
         "train": {"batch_size": 256, "lr": 0.003, "lr_warmup_steps": 5,
                   "sparsity_warmup_steps": 10, "log_every": 10, "checkpoint_every": 10},
         "data": {"text": "python-stdlib",
                  "cache": {"max_tokens": 12000, "context_length": 64, "rows_per_shard": 8192,
                            "norm_sample_rows": 2048, "progress": False}},
         "eval": {"num_sequences": 4, "context_length": 64, "frequency_sequences": 8,
                  "per_position": False, "r_l0": False},
         "stream": {"buffer_batches": 8}, "resources": {"cpus": 1}}


@pytest.fixture(scope="module")
def head():
    with head_node() as h:
        yield h


def submit(head, workdir, *args: str) -> tuple[str, str]:
    """`ray job submit` (waits for the job); returns (final status, the job's log)."""
    job_id = f"raysae_{os.urandom(4).hex()}"
    cmd = [f"{BIN}/ray", "job", "submit", "--address", head.dashboard, "--submission-id", job_id,
           "--working-dir", str(workdir), "--", "raysae", "sweep", "sweep.yaml", *args]
    subprocess.run(cmd, env=head.env, capture_output=True, text=True, timeout=600)
    status = subprocess.run([f"{BIN}/ray", "job", "status", "--address", head.dashboard, job_id],
                            env=head.env, capture_output=True, text=True, timeout=60)
    logs = subprocess.run([f"{BIN}/ray", "job", "logs", "--address", head.dashboard, job_id],
                          env=head.env, capture_output=True, text=True, timeout=60).stdout
    found = re.search(rf"Job '{job_id}' (succeeded|failed|stopped)", status.stdout + status.stderr)
    if found:
        return found.group(1).upper(), logs
    raise AssertionError(f"job {job_id}: no final status in {status.stdout!r} {status.stderr!r}")


def test_a_sweep_submitted_as_a_job_lands_where_asked_and_resumes(head, tmp_path):
    workdir = tmp_path / "work"
    workdir.mkdir()
    (workdir / "sweep.yaml").write_text(yaml.safe_dump(SWEEP))
    # a relative storage under a job would land in Ray's temporary package copy: refused
    status, logs = submit(head, workdir)
    assert status == "FAILED"
    assert "storage: 'runs' is relative" in logs and "--storage-base" in logs
    assert "Traceback" not in logs

    out = tmp_path / "submitter"
    status, logs = submit(head, workdir, "--storage-base", str(out), "--resume-if-exists")
    assert status == "SUCCEEDED", logs[-3000:]
    assert f"ray: joined the cluster at" in logs  # the job's cluster, said first
    sweep = out / "runs" / "job"
    (row,) = read_frontier(str(sweep))
    assert row["status"] == "done" and row["sae_url"].startswith(str(sweep))
    # the dashboard (state API) lists the trial's actor by the trial's name
    actors = subprocess.run([f"{BIN}/ray", "list", "actors", "--address", head.gcs,
                             "--detail", "--format", "json", "--limit", "1000"],
                            env=head.env, capture_output=True, text=True, timeout=120)
    names = {a["repr_name"] for a in json.loads(actors.stdout)}
    assert "SAETrial(res_1-w64-l0.01)" in names, actors.stdout[-2000:] + actors.stderr[-2000:]
    done = (sweep / "saes").rglob("result.json")
    (result,) = list(done)
    before = result.read_bytes()

    # the same job resubmitted (a RayJob retry): it resumes instead of failing
    status, logs = submit(head, workdir, "--storage-base", str(out), "--resume-if-exists")
    assert status == "SUCCEEDED", logs[-3000:]
    assert f"resuming the sweep at {sweep}" in logs
    assert result.read_bytes() == before  # the finished trial is kept, not retrained


DRIVER = textwrap.dedent("""
    import json, os, sys, time
    import psutil, ray
    from raysae.connect import connect
    line = connect(num_cpus=1, include_dashboard=False)
    ours = [p.pid for p in psutil.Process().children(recursive=True)]
    print(json.dumps({"line": line, "gcs": ray.get_runtime_context().gcs_address,
                      "pids": ours}), flush=True)
    time.sleep(300)
""")


def _driver(env):
    proc = subprocess.Popen([sys.executable, "-c", DRIVER], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True)
    return proc, json.loads(proc.stdout.readline())


def test_a_driver_never_joins_a_running_cluster_unasked_and_leaves_no_orphans(head):
    env = dict(head.env)  # a cluster is running on this machine, RAY_ADDRESS is unset
    env.pop("RAY_AUTH_MODE"), env.pop("RAY_AUTH_TOKEN")
    proc, info = _driver(env)
    try:
        assert info["line"].startswith("ray: started a private local cluster")
        assert info["gcs"].split(":")[-1] != head.gcs.split(":")[-1]
        assert info["pids"], "the private cluster's processes are the driver's children"
    finally:
        proc.send_signal(signal.SIGKILL)  # the driver dies without cleaning up
        proc.wait()
    deadline = time.time() + 60
    while time.time() < deadline and any(psutil.pid_exists(p) and psutil.Process(p).status()
                                         != psutil.STATUS_ZOMBIE for p in info["pids"]):
        time.sleep(1)
    alive = [p for p in info["pids"] if psutil.pid_exists(p)
             and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]
    assert not alive, f"orphaned Ray processes after the driver was killed: {alive}"

    # named by RAY_ADDRESS (as `ray job submit` does), the running cluster is joined
    proc, info = _driver({**head.env, "RAY_ADDRESS": head.gcs})
    try:
        assert info["line"].startswith(f"ray: joined the cluster at {head.gcs}")
        assert info["gcs"].split(":")[-1] == head.gcs.split(":")[-1]
    finally:
        proc.kill()
        proc.wait()
