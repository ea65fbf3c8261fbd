"""Which Ray cluster a command runs on: the one it is told about, or a private local one.

`ray.init()` with no address joins any cluster already running on the machine (another
user's, say) and dies with it. Every raysae entry point connects here instead: the cluster
`--address` or `RAY_ADDRESS` names (under `ray job submit` Ray sets `RAY_ADDRESS` itself),
otherwise a new local cluster that belongs to this process (Ray stops its processes when
the driver exits or is killed). The returned line says which, for the first line of output.
"""

from __future__ import annotations

import os

JOB_CONFIG_ENV = "RAY_JOB_CONFIG_JSON_ENV_VAR"  # set by Ray's job supervisor for the entrypoint


def under_ray_job() -> bool:
    """Whether this process is the entrypoint of a `ray job submit` job."""
    return JOB_CONFIG_ENV in os.environ


def connect(address: str | None = None, *, log_to_driver: bool = False, **init_kwargs) -> str:
    """Connect this process to Ray, unless it already is.

    Args:
        address: a cluster address ("auto", "host:6379", "ray://..."); default `RAY_ADDRESS`,
            and without either a private local cluster is started.
        log_to_driver: stream the workers' logs to this terminal.
        init_kwargs: more `ray.init` arguments for a new local cluster (e.g. num_cpus);
            ignored when joining one.
    Returns:
        One line saying which cluster this process runs on.
    """
    import logging

    import ray

    if not log_to_driver:  # this line replaces Ray's own start-up lines
        init_kwargs.setdefault("logging_level", logging.WARNING)
        logging.getLogger("ray._private.authentication").setLevel(logging.ERROR)
    if ray.is_initialized():
        return f"ray: using the cluster this process is already connected to ({_size()})"
    address = address or os.environ.get("RAY_ADDRESS") or None
    if address:
        ray.init(address=address, log_to_driver=log_to_driver,
                 logging_level=init_kwargs.get("logging_level", logging.INFO))
        return f"ray: joined the cluster at {address} ({_size()})"
    ctx = ray.init(address="local", log_to_driver=log_to_driver, **init_kwargs)
    _reap_with_this_process()
    dashboard = getattr(ctx, "dashboard_url", None)
    where = f", dashboard http://{dashboard}" if dashboard else ""
    return (f"ray: started a private local cluster ({_size()}{where}); --address or "
            "RAY_ADDRESS joins a running one")


def _reap_with_this_process() -> None:
    """Have the new cluster's processes stopped when this driver dies, even by SIGKILL."""
    import psutil

    from raysae import reaper

    reaper.watch([p.pid for p in psutil.Process().children(recursive=True)])


def _size() -> str:
    import ray

    res = ray.cluster_resources()
    nodes = sum(1 for n in ray.nodes() if n.get("Alive"))
    gpus = f", {res['GPU']:g} GPUs" if res.get("GPU") else ""
    return f"{nodes} node{'s' * (nodes != 1)}, {res.get('CPU', 0):g} CPUs{gpus}"
