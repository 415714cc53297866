"""System metrics per node (CPU, memory, disk, network, and each GPU when there is one) logged into the run.

MLflow's own monitors take the samples; the metrics go through a Tracker like every other write of the
run, so an outage journals them instead of stopping the sampler (MLflow's SystemMetricsMonitor sends
directly and gives up at the first failure). Names: ``system/<node>/<metric>``, e.g.
``system/node0/gpu_0_utilization_percentage``; one sampler per node (its local rank 0 worker).
"""

from __future__ import annotations

import logging
import threading

PREFIX = "system"


def wanted(setting: bool | str, device_type: str) -> bool:
    """tracking.system_metrics: true, false, or auto (true when training on GPUs)."""
    return setting is True or (setting == "auto" and device_type == "cuda")


def monitors(gpu: bool) -> list:
    from mlflow.system_metrics.metrics.cpu_monitor import CPUMonitor
    from mlflow.system_metrics.metrics.disk_monitor import DiskMonitor
    from mlflow.system_metrics.metrics.network_monitor import NetworkMonitor

    out = [CPUMonitor(), DiskMonitor(), NetworkMonitor()]
    if gpu:
        try:
            from mlflow.system_metrics.metrics.gpu_monitor import GPUMonitor

            out.append(GPUMonitor())  # needs nvidia-ml-py and a driver; else raises
        except Exception as err:  # noqa: BLE001 - no GPU metrics, the others still go
            logging.getLogger(__name__).warning("no GPU system metrics: %s", err)
    return out


def next_step(uri: str, run_id: str, prefix: str) -> int:
    """One past the last step logged under ``prefix`` (a relaunch goes on from there); 0 when there is none
    or MLflow does not answer (then steps may repeat an earlier launch's)."""
    from .mlflow import client

    try:
        metrics = client(uri).get_run(run_id).data._metric_objs
    except Exception:  # noqa: BLE001 - unreachable
        return 0
    return max((m.step + 1 for m in metrics if m.key.startswith(prefix)), default=0)


class SystemMetrics:
    """Samples every ``every_s`` seconds in a daemon thread; each sample is one step of ``system/<node>/*``
    sent with ``tracker`` to ``run_id``. ``stop`` logs a last sample."""

    def __init__(self, tracker, run_id: str, node: str, every_s: float, gpu: bool):
        self.tracker, self.run_id, self.node, self.every_s = tracker, run_id, node, every_s
        self._monitors = monitors(gpu)
        self._stop = threading.Event()
        self._step = 0
        self._thread = threading.Thread(target=self._run, name="moss-system-metrics", daemon=True)

    def start(self) -> "SystemMetrics":
        self._thread.start()
        return self

    def sample(self) -> None:
        values = {}
        for m in self._monitors:
            try:
                m.collect_metrics()
                values.update(m.aggregate_metrics())
            except Exception:  # noqa: BLE001 - a monitor that fails (a GPU gone) leaves the others
                pass
            finally:
                m.clear_metrics()
        if values:
            self.tracker.log_metrics(self.run_id, {f"{PREFIX}/{self.node}/{k}": float(v) for k, v in values.items()},
                                     self._step)
            self._step += 1

    def _run(self) -> None:
        # here, not in start(): reading MLflow may wait (an outage), and training never waits on it
        self._step = next_step(self.tracker.uri, self.run_id, f"{PREFIX}/{self.node}/")  # after a relaunch's
        self.sample()  # a first sample at once: what the node looked like at the start
        while not self._stop.wait(self.every_s):
            self.sample()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)
        if not self._thread.is_alive():  # else it still samples: no second sampler on the same monitors
            self.sample()
