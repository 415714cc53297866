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
    from .console import quiet_now, ray_logs, say

    # quiet console: the workers' output stays in Ray's session logs (printed below), not forwarded here
    ray.init(address="local", num_cpus=num_cpus or os.cpu_count(), include_dashboard=True, dashboard_host="127.0.0.1",
             log_to_driver=not quiet_now())
    if quiet_now():
        say(f"ray: a local cluster of {num_cpus or os.cpu_count()} CPUs; its logs: {ray_logs()}")


def shutdown_local_ray() -> None:
    """Stop the local Ray cluster this process started (a command's end), not one reached by RAY_ADDRESS."""
    global _STARTED_LOCALLY
    if _STARTED_LOCALLY:
        import ray

        ray.shutdown()
        _STARTED_LOCALLY = False


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


def orphaned_placement_groups() -> list[tuple[object, dict[str, float]]]:
    """(placement group, CPU/GPU it holds) of every live, non-detached placement group whose creator actor is
    dead while its job lives.

    Ray keeps such a group until the job ends (a placement group is scoped to its job, not to the actor
    that made it). A Ray Train controller killed with its Tune trial leaves exactly that: Train's own
    cleaner misses a group it had not registered yet, or gives up when the State API is slow, and the
    group's CPUs stay reserved for nothing, so the retry's Ray Data tasks wait forever. The creator fields
    are only in GCS's raw table (ray.util.placement_group_table drops them): read through Ray's state
    accessor, pinned with ray==2.60.0.
    """
    from ray._private.state import state
    from ray.core.generated import gcs_pb2
    import ray
    from ray.util.placement_group import PlacementGroup

    job = ray.get_runtime_context().get_job_id()  # this job's groups only: other users' jobs are theirs
    out = []
    for raw in state._connect_and_get_accessor().get_placement_group_table():
        pg = gcs_pb2.PlacementGroupTableData.FromString(raw)
        live = pg.state in (gcs_pb2.PlacementGroupTableData.CREATED, gcs_pb2.PlacementGroupTableData.PENDING,
                            gcs_pb2.PlacementGroupTableData.PREPARED, gcs_pb2.PlacementGroupTableData.RESCHEDULING)
        by_actor = pg.creator_actor_id.strip(b"\xff") != b""  # nil (all 0xff): made by a driver, e.g. Tune's
        ours = pg.creator_job_id.hex() == job
        if live and ours and by_actor and not pg.is_detached and pg.creator_actor_dead and not pg.creator_job_dead:
            held: dict[str, float] = {}
            for bundle in pg.bundles:
                for k, v in bundle.unit_resources.items():
                    if k in ("CPU", "GPU"):
                        held[k] = held.get(k, 0.0) + v
            out.append((PlacementGroup(ray.PlacementGroupID(pg.placement_group_id)), held))
    return out


def release_orphans(log=print) -> int:
    """Remove the placement groups of dead creators (see orphaned_placement_groups); -> how many."""
    from ray.util.placement_group import remove_placement_group

    n = 0
    for pg, held in orphaned_placement_groups():
        try:
            remove_placement_group(pg)
        except Exception as e:  # removed meanwhile, or GCS busy: the next pass sees it again
            log(f"warning: cannot release placement group {pg.id.hex()}: {type(e).__name__}: {e}")
            continue
        n += 1
        log(f"released placement group {pg.id.hex()[:12]} ({', '.join(f'{k} {v:g}' for k, v in held.items()) or 'no CPU'}"
            ") left by a dead Ray Train controller")
    return n


class OrphanReaper:
    """While a run trains, release dead creators' placement groups every ``every_s`` (a killed attempt's
    controller may die seconds after its retry started)."""

    def __init__(self, every_s: float = 5.0):
        import threading

        self.every_s, self._stop = every_s, threading.Event()
        self._thread = threading.Thread(target=self._loop, name="moss-pg-reaper", daemon=True)

    def _loop(self) -> None:
        while True:
            try:
                release_orphans()
            except Exception:
                pass  # GCS unreachable for a moment: the next pass tries again
            if self._stop.wait(self.every_s):
                return

    def __enter__(self) -> OrphanReaper:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
