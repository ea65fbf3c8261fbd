import os

# Keep JAX on the CPU and quiet in tests; multi-device tests set XLA_FLAGS in a subprocess.
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
# gcsfs's experimental bucket-type probe (gRPC) hangs on the GCS emulator the tests use.
os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")


import sys

import pytest


@pytest.fixture(autouse=True, scope="module")
def _no_ray_left_running():
    """A module that leaves Ray connected must not break the next module's ray.init."""
    yield
    ray = sys.modules.get("ray")
    if ray is not None and ray.is_initialized():
        ray.shutdown()
