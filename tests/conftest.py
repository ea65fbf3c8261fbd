import os

# Keep JAX on the CPU and quiet in tests; multi-device tests set XLA_FLAGS in a subprocess.
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
# gcsfs's experimental bucket-type probe (gRPC) hangs on the GCS emulator the tests use.
os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")
