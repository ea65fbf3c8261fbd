"""Every ```python block of README.md runs as written, in order, in one interpreter (later
blocks use names earlier ones define, as in a notebook), in a fresh directory.

The only setup is what the README says a user has: `my_activations.npy` (their activations:
res:2 of the tiny model here) and the cache that the caching section's `raysae cache
... --output runs/cache --site res:2` writes (a synthetic cache of the same shape here).
A block preceded by ``<!-- readme-test: skip (reason) -->`` is not run; nothing else is
skipped.
"""

import os
import re
import subprocess
import sys
import textwrap

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = os.path.join(ROOT, "README.md")
SKIP = re.compile(r"<!--\s*readme-test:\s*skip\b.*-->")

pytestmark = [pytest.mark.ray, pytest.mark.slow]


def python_blocks(text: str) -> list[tuple[int, str, bool]]:
    """(first code line number, code, skipped) for each ```python block of `text`."""
    lines = text.splitlines()
    out, i = [], 0
    while i < len(lines):
        if lines[i].strip() == "```python":
            before = next((l for l in reversed(lines[:i]) if l.strip()), "")
            j = i + 1
            while lines[j].strip() != "```":
                j += 1
            out.append((i + 2, "\n".join(lines[i + 1:j]), bool(SKIP.search(before))))
            i = j
        i += 1
    return out


def test_blocks_are_found_and_skips_are_few():
    blocks = python_blocks(open(README, encoding="utf-8").read())
    assert len(blocks) >= 5
    assert sum(skipped for _, _, skipped in blocks) <= 1
    assert python_blocks("<!-- readme-test: skip (x) -->\n```python\n1\n```\n```python\n2\n```\n") == \
        [(3, "1", True), (6, "2", False)]


SETUP = textwrap.dedent("""
    import os

    import numpy as np
    from raysae.data.synthetic import write_synthetic_cache
    from raysae.lm import encode_batch, load_lm, site_activations

    lm = load_lm("tiny")
    text = open(os.__file__).read() * 2
    chunks = [text[i:i + 127] for i in range(0, 127 * 240, 127)]
    tok, mask = encode_batch(lm, chunks, 128)
    acts = np.asarray(site_activations(lm, tok, ["res:2"], mask)["res:2"])[np.asarray(mask)]
    np.save("my_activations.npy", acts.astype(np.float32))
    write_synthetic_cache("runs/cache/res_2", [8192] * 4, d=lm.config.d_model, norm_scalar=10.0)
""")

RUNNER = textwrap.dedent("""
    import json, sys
    blocks = json.load(open(sys.argv[1]))
    namespace = {"__name__": "__main__"}
    for line, code in blocks:
        print(f"--- README.md:{line}", flush=True)
        exec(compile("\\n" * (line - 1) + code, "README.md", "exec"), namespace)
    print("--- all blocks ran", flush=True)
""")


def test_readme_python_blocks_run(tmp_path):
    import json

    blocks = [(line, code) for line, code, skipped in python_blocks(open(README, encoding="utf-8").read())
              if not skipped]
    (tmp_path / "blocks.json").write_text(json.dumps(blocks))
    (tmp_path / "runner.py").write_text(RUNNER)
    env = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""),
           "RAY_ADDRESS": "", "HF_HUB_OFFLINE": "1"}
    setup = subprocess.run([sys.executable, "-c", SETUP], cwd=tmp_path, env=env, capture_output=True,
                           text=True, timeout=300)
    assert setup.returncode == 0, setup.stderr[-3000:]
    run = subprocess.run([sys.executable, "runner.py", "blocks.json"], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=540)
    assert run.returncode == 0 and "--- all blocks ran" in run.stdout, \
        (run.stdout[-2000:] + "\n" + run.stderr[-4000:])
