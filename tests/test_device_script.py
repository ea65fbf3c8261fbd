"""bench/device.sh --dry-run: the GPU check's driver runs end to end on CPU (tiny shapes) and
writes one JSON with every section and finite figures."""

import json
import math
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

STEP_KEYS = {"d", "M", "B", "dtype", "decoder", "step_ms", "compile_s", "flops_per_s",
             "mfu_peak", "mfu_measured_matmul", "peak_bytes_so_far"}
SPARSE_KEYS = {"L0", "max_row", "capacity", "dense_ms", "sparse_ms", "dense_over_sparse",
               "d", "M", "B"}


def _numbers(tree):
    if isinstance(tree, dict):
        for v in tree.values():
            yield from _numbers(v)
    elif isinstance(tree, list):
        for v in tree:
            yield from _numbers(v)
    elif isinstance(tree, (int, float)) and not isinstance(tree, bool):
        yield float(tree)


def test_dry_run_writes_every_section_with_finite_values(tmp_path):
    out = tmp_path / "device.json"
    env = dict(os.environ, PYTHON=sys.executable)
    env.pop("OUT", None)
    subprocess.run(["bash", "bench/device.sh", "--dry-run", "--out", str(out)], cwd=ROOT,
                   env=env, check=True, capture_output=True, text=True, timeout=900)
    r = json.loads(out.read_text())
    assert r["dry_run"] is True and r["skipped"] == {}
    assert r["device"]["platform"] == "cpu"
    for section in ("matmul", "peak_flops"):
        assert set(r[section]) == {"bfloat16", "float32"}
        assert all(v > 0 for v in r[section].values())
    assert {(row["M"], row["dtype"]) for row in r["step"]} == {
        (M, dt) for M in (256, 512) for dt in ("bfloat16", "float32")}
    for row in r["step"]:
        assert set(row) == STEP_KEYS and row["step_ms"] > 0 and 0 < row["mfu_measured_matmul"]
    assert set(r["targets"]) == {"shape", "step_ms", "mfu_peak", "step_le_45ms",
                                 "mfu_ge_60pct"}
    assert len(r["sparse"]) == 2 and all(set(row) == SPARSE_KEYS for row in r["sparse"])
    assert all(row["capacity"] >= row["max_row"] for row in r["sparse"])
    assert r["feed"]["fed_bytes_per_s"] > 0 and r["feed"]["read_bytes_per_s"] > 0
    assert r["lm"]["tokens_per_s"] > 0 and r["lm"]["site"] == "res:0"
    assert [row["dtype"] for row in r["packed"]] == ["bfloat16", "float32"]
    assert all(row["k"] == 3 and row["packed_sae_steps_per_s"] > 0 and row["speedup"] > 0
               for row in r["packed"])
    assert r["memory"]["peak_bytes"] > 0
    numbers = list(_numbers(r))
    assert len(numbers) > 50 and all(math.isfinite(v) for v in numbers)
