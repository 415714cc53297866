"""System metrics (tracking/system.py): sampled per node by MLflow's monitors, sent through a Tracker into a
real sqlite store, one step per sample."""

import time

import pytest

from orchestrator.tracking.journal import Journal
from orchestrator.tracking.resilient import Tracker
from orchestrator.tracking.system import SystemMetrics, wanted


@pytest.mark.parametrize("setting, device, on", [("auto", "cuda", True), ("auto", "cpu", False), (True, "cpu", True),
                                                 (False, "cuda", False)])
def test_when_system_metrics_are_sampled(setting, device, on):
    assert wanted(setting, device) is on


def test_samples_go_through_the_tracker_one_step_each(store, tmp_path):
    uri, mlc, exp = store
    run_id = mlc.create_run(exp).info.run_id
    tracker = Tracker(uri, Journal(str(tmp_path / "run")), retry_every_s=60, flush_timeout_s=30)
    sampler = SystemMetrics(tracker, run_id, "node3", every_s=0.2, gpu=False).start()
    time.sleep(1.0)
    sampler.stop()
    assert tracker.close() == 0
    keys = set(mlc.get_run(run_id).data.metrics)
    assert {"system/node3/cpu_utilization_percentage", "system/node3/system_memory_usage_megabytes",
            "system/node3/disk_usage_percentage", "system/node3/network_receive_megabytes"} <= keys
    assert all(k.startswith("system/node3/") for k in keys)
    steps = sorted(m.step for m in mlc.get_metric_history(run_id, "system/node3/system_memory_usage_megabytes"))
    assert steps == list(range(len(steps))) and len(steps) >= 4  # the first at start, the last at stop
