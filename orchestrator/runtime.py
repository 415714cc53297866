"""Connecting to Ray: the cluster in RAY_ADDRESS when set (as inside `ray job submit`), else a fresh local one."""

from __future__ import annotations

import os

_STARTED_LOCALLY = False


def init_ray(num_cpus: int | None = None) -> None:
    global _STARTED_LOCALLY
    import ray

    if ray.is_initialized():
        return
    if os.environ.get("RAY_ADDRESS"):
        ray.init()
        return
    _STARTED_LOCALLY = True
    # the dashboard serves the State API, which Ray Train uses to clean up placement groups; it listens
    # on 127.0.0.1 only (whoever reaches it can run code)
    ray.init(address="local", num_cpus=num_cpus or os.cpu_count(), include_dashboard=True, dashboard_host="127.0.0.1")


def unplaceable(requests: list[dict[str, float]]) -> list[str]:
    """Custom resources asked for that the local Ray cluster this process started does not have (it has no
    autoscaler to add them: such workers would wait forever). [] on a cluster reached by RAY_ADDRESS."""
    import ray

    if not _STARTED_LOCALLY:
        return []
    have = ray.cluster_resources()
    return sorted({k for r in requests for k, v in r.items() if v > 0 and k not in ("CPU", "GPU", "memory")
                   and not k.startswith("accelerator_type:") and k not in have})


def refuse_unplaceable(requests: list[dict[str, float]], what: str) -> None:
    from .config import ConfigError

    missing = unplaceable(requests)
    if missing:
        raise ConfigError(f"{what} asks for the resource(s) {missing}, which this local Ray cluster does not have "
                          "(scaling.node_type / scaling.resources_per_worker name cluster node types): set "
                          "scaling.node_type=null to run here, or submit the job to the cluster")
