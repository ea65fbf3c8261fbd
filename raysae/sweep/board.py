"""A trial's TensorBoard events, by optimiser step, under ``<sweep>/tensorboard/<trial>/``.

`tensorboard --logdir <storage>/<name>` shows one run per trial: every numeric metric
against the optimiser step (tokens = step x batch size is a scalar of its own), the final
evaluation at the last step, and the trial's hyperparameters with its final metrics in the
HPARAMS tab. Events are written by tensorboardX to a local directory (the sweep's own for
local storage, a temporary one otherwise) and uploaded whole on `sync` (an object store
has no append; event files of a trial are small).
"""

from __future__ import annotations

import os
import shutil
import tempfile

from raysae import storage

BOARD_DIR = "tensorboard"


def board_url(sweep_url: str, trial_key: str) -> str:
    return storage.join(sweep_url, BOARD_DIR, trial_key)


class TrialBoard:
    """TensorBoard scalars of one trial.

    Args:
        url: the trial's event directory (any fsspec URL).
    """

    def __init__(self, url: str):
        from tensorboardX import SummaryWriter

        self.url = url
        self.local = storage.is_local(url)
        self.dir = storage.absolute(url) if self.local else tempfile.mkdtemp(prefix="raysae-tb-")
        os.makedirs(self.dir, exist_ok=True)
        self.writer = SummaryWriter(logdir=self.dir, flush_secs=30)

    def scalars(self, step: int, row: dict, prefix: str = "") -> None:
        """Every finite number in `row` at optimiser step `step`."""
        for k, v in row.items():
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                continue
            if k in ("step", "pid") or v != v:  # the x axis itself; NaN
                continue
            self.writer.add_scalar(prefix + k, float(v), global_step=step)

    def hparams(self, params: dict, metrics: dict) -> None:
        """The trial's hyperparameters with its final metrics (the HPARAMS tab)."""
        clean = {k: v if isinstance(v, (int, float, str, bool)) else str(v)
                 for k, v in params.items() if v is not None}
        final = {k: float(v) for k, v in metrics.items()
                 if isinstance(v, (int, float)) and not isinstance(v, bool) and v == v}
        self.writer.add_hparams(clean, final, name="hparams")

    def sync(self) -> None:
        """Flush, and copy the event files to `url` when it is not local."""
        self.writer.flush()
        if self.local:
            return
        for root, _, files in os.walk(self.dir):
            for name in files:
                path = os.path.join(root, name)
                rel = os.path.relpath(path, self.dir).replace(os.sep, "/")
                with open(path, "rb") as f:
                    storage.write_bytes_atomic(storage.join(self.url, rel), f.read())

    def close(self) -> None:
        self.sync()
        self.writer.close()
        if not self.local:
            shutil.rmtree(self.dir, ignore_errors=True)
