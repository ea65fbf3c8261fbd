"""Checkpoint pointers: what a trial hands Tune (or Ray Train) in place of a checkpoint.

Training checkpoints live once, on the sweep's storage (`TrialPlan.checkpoint_url`); Tune
holds a tiny directory with ``pointer.json`` naming the newest one, so its checkpoint
bookkeeping and restores work without copying the SAE state around.
"""

from __future__ import annotations

import json
import os
import tempfile

from raysae import metrics as names

POINTER = "pointer.json"


def pointer_dir(checkpoint_url: str, metrics: dict) -> str:
    """A new local directory holding a pointer to `checkpoint_url` (one ``step-N`` dir)."""
    d = tempfile.mkdtemp(prefix="raysae-pointer-")
    with open(os.path.join(d, POINTER), "w") as f:
        json.dump({"checkpoint_url": checkpoint_url, names.STEP: metrics.get(names.STEP)}, f)
    return d


def read_pointer(directory: str) -> tuple[str, int]:
    """(checkpoint URL, step) from a pointer directory."""
    with open(os.path.join(directory, POINTER)) as f:
        data = json.load(f)
    return data["checkpoint_url"], int(data.get(names.STEP) or 0)
