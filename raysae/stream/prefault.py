"""Pre-faulting this process's view of Ray's object store, so `ray.put` is a plain memcpy.

Ray's `preallocate_plasma_memory` faults the store in once, in the store process; every
other process still pays its own page faults the first time it touches each page (the
effect on a broker's puts is in BENCHMARKS.md). `populate_object_store()` builds this
process's page tables for the store up front (`madvise(MADV_POPULATE_WRITE)`, Linux >= 5.14)
without touching the data. It finds the store as a shared mapping of a ``plasma*`` file in
/proc/self/maps; where there is none it does nothing and returns 0 (only speed depends on it).
"""

from __future__ import annotations

import ctypes
import os

MADV_POPULATE_READ = 22   # page tables readable (a consumer only reads)
MADV_POPULATE_WRITE = 23  # page tables writable (a producer writes)


def store_mappings() -> list[tuple[int, int]]:
    """(address, length) of this process's shared mappings of the object store file."""
    out = []
    try:
        with open("/proc/self/maps") as f:
            lines = f.readlines()
    except OSError:
        return out
    for line in lines:
        parts = line.split()
        if len(parts) < 6 or "s" not in parts[1]:
            continue
        if not os.path.basename(parts[5]).startswith("plasma"):
            continue
        lo, hi = (int(x, 16) for x in parts[0].split("-"))
        out.append((lo, hi - lo))
    return out


def populate_object_store(write: bool = True) -> int:
    """Build this process's page tables for the object store; bytes populated (0: none)."""
    mappings = store_mappings()
    if not mappings:
        return 0
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        madvise = libc.madvise
    except (OSError, AttributeError):
        return 0
    madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    advice = MADV_POPULATE_WRITE if write else MADV_POPULATE_READ
    done = 0
    for addr, length in mappings:
        if madvise(addr, length, advice) == 0:  # EINVAL on kernels without populate
            done += length
    return done
