"""Starting Ray for vl2prep's jobs: an embedded local Ray bound to loopback by default, a cluster when asked.

With no address in the config and no `RAY_ADDRESS` in the environment (which `ray job submit` sets),
the job starts a local Ray that listens only on 127.0.0.1 and runs no dashboard: an exposed Ray port
runs arbitrary code for whoever reaches it. `ray.address: auto` or an address joins a running cluster.
The environment Ray needs for that is set when the `jobs` package is imported (see `jobs/__init__.py`).
"""

from __future__ import annotations

import os


def start_ray(
    address: str | None = None, num_cpus: int | None = None, object_store_memory: int | None = None
) -> None:
    """Connect to (or start) Ray once per process; an already initialised Ray is reused as it is."""
    import ray

    if ray.is_initialized():
        return
    if address is None and not os.environ.get("RAY_ADDRESS"):
        ray.init(
            num_cpus=num_cpus,
            object_store_memory=object_store_memory,
            include_dashboard=False,
            _node_ip_address="127.0.0.1",
            configure_logging=False,
            log_to_driver=False,
        )
    else:
        ray.init(address=address)


def pool_resources() -> tuple[int, float]:
    """(most actors in a pool, CPUs per actor) for the cluster Ray runs on.

    A pool must never take every CPU: read tasks would find none and the job would hang without an
    error. So the pool holds at most every CPU but one; on a one-CPU machine its single actor asks for
    half a CPU (and tasks must ask for at most the other half, see `task_cpus`).
    """
    import ray

    cpus = ray.cluster_resources().get("CPU", 1.0)
    if cpus >= 2:
        return int(cpus) - 1, 1.0
    return 1, cpus / 2


def task_cpus() -> float:
    """CPUs a read task asks for: one, or half of a one-CPU machine."""
    import ray

    cpus = ray.cluster_resources().get("CPU", 1.0)
    return 1.0 if cpus >= 2 else cpus / 2
