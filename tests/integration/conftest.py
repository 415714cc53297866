"""A real local Ray cluster (2 CPUs) shared by the integration tests of one session, and a guard that makes
a test which leaves CPUs reserved (a placement group or actor that outlived it) fail itself, not its
successors."""

import contextlib
import os
import signal
import time

import pytest

#: how long a finished test's placement groups and actors may take to go (a killed trial's controller dies
#: asynchronously; the reaper in orchestrator/runtime.py runs every 5 s)
RELEASE_S = 60


@pytest.fixture(scope="session")
def ray_cluster():
    import ray

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    ray.init(num_cpus=2, include_dashboard=True, dashboard_host="127.0.0.1", log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture(autouse=True)
def no_leaked_reservations(request):
    yield
    if "ray_cluster" not in request.fixturenames:
        return
    import ray

    if not ray.is_initialized():
        return
    deadline = time.time() + RELEASE_S
    while True:
        total, free = ray.cluster_resources().get("CPU", 0), ray.available_resources().get("CPU", 0)
        if free >= total - 1e-6:
            return
        if time.time() > deadline:
            break
        time.sleep(1)
    from ray.util.placement_group import PlacementGroup, remove_placement_group
    from ray.util.state import list_actors

    # so the tests after this one start with the whole cluster: the runs it left (a trial still training
    # after a timeout recreates its group), then their groups
    leftovers = [a for a in list_actors(filters=[("state", "=", "ALIVE")], limit=1000, detail=True)
                 if a.class_name in LEFTOVER_ACTORS]
    for actor in leftovers:  # a local cluster: its actors are processes of this machine
        if actor.pid and actor.pid > 0:
            with contextlib.suppress(ProcessLookupError):
                os.kill(actor.pid, signal.SIGKILL)
    held = {k: v for k, v in ray.util.placement_group_table().items() if v["state"] != "REMOVED"}
    for pg_id in held:
        remove_placement_group(PlacementGroup(ray.PlacementGroupID.from_hex(pg_id)))
    pytest.fail(f"{request.node.name} left {total - free:g} of {total:g} CPUs reserved {RELEASE_S} s after it ended: "
                f"placement groups {[(k[:12], v['bundles']) for k, v in held.items()]}, live actors "
                f"{sorted(a.class_name for a in leftovers)}")


#: actors of a run or trial; none may outlive the test that started it
LEFTOVER_ACTORS = {"TrainController", "RayTrainWorker", "ImplicitFunc", "SplitCoordinator"}

