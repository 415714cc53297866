"""Connecting to Ray: the cluster in RAY_ADDRESS when set (as inside `ray job submit`), else a fresh local one."""

from __future__ import annotations

import os


def init_ray(num_cpus: int | None = None) -> None:
    import ray

    if ray.is_initialized():
        return
    if os.environ.get("RAY_ADDRESS"):
        ray.init()
        return
    # the dashboard serves the State API, which Ray Train uses to clean up placement groups; it listens
    # on 127.0.0.1 only (whoever reaches it can run code)
    ray.init(address="local", num_cpus=num_cpus or os.cpu_count(), include_dashboard=True, dashboard_host="127.0.0.1")
