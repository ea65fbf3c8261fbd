"""What the command line prints for a failure, and the exit code that says its kind.

Every user-facing failure is one line naming the file, field or value:

    2  the command or its config (ConfigError, bad flags)
    3  the data: inputs, activation caches, SAE / LM / checkpoint files, a NaN batch
    4  storage or the cluster: a write that failed (disk full), Tune could not run the sweep
    1  the sweep ran, but some trials failed (`--resume` retries them)
"""

from __future__ import annotations

import sys

USAGE, DATA, STORAGE, TRIALS = 2, 3, 4, 1

# Error classes by module, looked up only once their module is imported (an error of a
# module nobody imported cannot have been raised), so this module imports nothing heavy.
_KINDS = (
    (USAGE, (("raysae.config", "ConfigError"),)),
    (DATA, (("raysae.activations.sources", "InputError"), ("raysae.activations.cache", "CacheError"),
            ("raysae.data.shards", "ShardError"), ("raysae.train.loop", "TrainingDataError"),
            ("raysae.train.checkpoint", "CheckpointError"), ("raysae.sae.formats", "SAEFormatError"),
            ("raysae.lm.weights", "WeightsError"), ("builtins", "FileNotFoundError"))),
    (STORAGE, (("raysae.sweep.launch", "SweepError"), ("builtins", "OSError"))),
)


def exit_code(error: BaseException) -> int | None:
    """The exit code of a user-facing error, or None for a bug (let it be a traceback)."""
    for code, classes in _KINDS:
        for module, name in classes:
            cls = getattr(sys.modules.get(module), name, None)
            if cls is not None and isinstance(error, cls):
                return code
    return None


def report(prog: str, error: BaseException) -> int:
    """Print `error` as one line under `prog` and return its exit code; re-raise a bug."""
    code = exit_code(error)
    if code is None:
        raise error
    message = " ".join(str(error).split()) or type(error).__name__
    print(f"{prog}: error: {message}", file=sys.stderr)
    return code
