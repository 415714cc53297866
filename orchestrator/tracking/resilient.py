"""Writes to MLflow that never raise into training or Tune and never make it wait: a Tracker queues them
(ops.py) for a background thread, which sends them in order.

When the server is unreachable the thread says so once (server and journal named), keeps what it cannot
send in the run's journal (journal.py), retries every tracking.retry_every_s, and when the server is back
sends the journal in order, says so, and goes on live. ``close`` (the end of the run) keeps trying for
tracking.flush_timeout_s, plus at most the request in flight (bounded by outage.bound_http); what is left
stays in the journal for `moss tracking replay RUN_DIR`. Only that thread sends or journals, and it does
one or the other with each op: nothing is sent twice by design (an answer lost with its connection may
repeat a write, which changes nothing: see ops.py).
"""

from __future__ import annotations

import queue
import shutil
import tempfile
import threading
import time

from . import ops
from . import tags as TAG
from .journal import Journal
from .mlflow import client
from .outage import bound_http, brief, request_bound_s, say, unreachable
from .redact import redact_text

STOP, WAKE, ADOPT = object(), object(), object()
HURRY_RETRY_S = 1.0  # retry period while a flush waits


class Tracker:
    def __init__(self, uri: str, journal: Journal, retry_every_s: float = 15.0, flush_timeout_s: float = 60.0):
        bound_http()
        self.uri, self.journal = uri, journal
        self.retry_every_s, self.flush_timeout_s = retry_every_s, flush_timeout_s
        # replay needs the URI; one holding a password is not written down (replay takes --tracking-uri)
        self._kept_uri = uri if redact_text(uri) == uri else None
        self._queue: queue.Queue = queue.Queue()
        self._pending: list[str] = []  # journal entries to send before anything newer, oldest first
        self._ops: dict[str, dict] = {}  # this writer's journaled ops, with their local artifact folders
        self._outage: str | None = None  # why the server is unreachable, while it is
        self._hurry_until = 0.0
        self._unsettled = 0  # ops submitted, not yet sent or journaled
        self._stamp = 0
        self._lock = threading.Lock()
        self._idle = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="moss-tracking", daemon=True)
        self._thread.start()

    @classmethod
    def for_run(cls, uri: str, run_dir: str, settings) -> "Tracker":
        """``settings``: the config's tracking section."""
        return cls(uri, Journal(run_dir), settings.retry_every_s, settings.flush_timeout_s)

    # the writes (non-blocking); ``run``: a run id, or a named run (ops.py)
    def log_metrics(self, run, values: dict[str, float], step: int) -> None:
        self._submit(ops.metrics(run, values, step))

    def log_params(self, run, values: dict[str, str]) -> None:
        self._submit(ops.params(run, values))

    def set_tags(self, run, values: dict[str, str]) -> None:
        self._submit(ops.tags(run, values))

    def log_text(self, run, body: str, path: str) -> None:
        self._submit(ops.text(run, body, path))

    def log_dataset(self, run, **fields) -> None:
        """An MLflow dataset input (ops.dataset's fields)."""
        self._submit(ops.dataset(run, **fields))

    def log_dir(self, run, directory, path: str) -> None:
        """A copy of ``directory`` is sent: the caller may delete it as soon as this returns."""
        staged = tempfile.mkdtemp(prefix="moss-artifacts-")
        shutil.copytree(directory, staged, dirs_exist_ok=True)
        self._submit(ops.artifacts(run, staged, path))

    def log_model(self, run, directory, name: str, params: dict[str, str], tags: dict[str, str], step: int) -> None:
        """The run's LoggedModel from the model folder ``directory`` at training step ``step`` (a copy is
        sent, as for log_dir)."""
        staged = tempfile.mkdtemp(prefix="moss-model-")
        shutil.copytree(directory, staged, dirs_exist_ok=True)
        self._submit(ops.model(run, staged, name, params, tags, step))

    def terminate(self, run, status: str, only_if_running: bool = False) -> None:
        self._submit(ops.terminate(run, status, only_if_running))

    def adopt(self) -> None:
        """Send, before anything newer, what other writers left in this journal (call it only when they
        have ended: workers after fit(), an earlier process of a relaunched run or resumed sweep)."""
        self._queue.put(ADOPT)

    def flush(self, timeout: float) -> bool:
        """Wait up to ``timeout`` (retrying often) until everything is sent; -> whether it was."""
        with self._lock:
            self._hurry_until = time.monotonic() + timeout
        self._queue.put(WAKE)
        with self._idle:
            return self._idle.wait_for(lambda: not self._busy(), timeout)

    def settle(self, timeout: float) -> bool:
        """Wait up to ``timeout`` until every write submitted so far is sent or journaled, so that a kill of
        this process loses none of them; -> whether they were. Quick while the server answers (the writes in
        flight) and once an outage is known (new writes go straight to the journal); at most one request's
        bound (outage.request_bound_s) when the server has just gone away."""
        with self._idle:
            return self._idle.wait_for(lambda: self._unsettled == 0, timeout)

    def close(self, timeout: float | None = None) -> int:
        """Flush for ``timeout`` (default tracking.flush_timeout_s), then journal what is left; -> how many
        ops are left in the journal."""
        if self._closed:
            return len(self._pending)
        self.flush(self.flush_timeout_s if timeout is None else timeout)
        self._closed = True
        self._queue.put(STOP)
        self._thread.join(request_bound_s() + 120)  # the request in flight, then journal writes
        left = len(self._pending) + (self._unsettled if self._thread.is_alive() else 0)
        if left:
            say(f"{left} write(s) to MLflow at {redact_text(self.uri)} were not sent; they are kept in "
                f"{self.journal.uri}: when the server is back, run `moss tracking replay {self.journal.run_dir}`")
        return left

    def _busy(self) -> bool:
        return self._unsettled > 0 or bool(self._pending)

    def _submit(self, op: dict) -> None:
        with self._lock:
            self._stamp = max(self._stamp + 1, time.time_ns())
            op["t"] = self._stamp
            closed = self._closed
            if not closed:
                self._unsettled += 1
        if closed:  # a write after close: the thread is gone, keep it for replay
            say(f"{op['kind']} written after the tracker closed: journaled")
            self._journal(op)
        else:
            self._queue.put(op)

    def _run(self) -> None:
        mlc, runs = client(self.uri), {}
        next_try = 0.0
        while True:
            wait = max(0.0, next_try - time.monotonic()) if self._pending else None
            try:
                item = self._queue.get(timeout=wait)
            except queue.Empty:
                item = None
            if item is STOP:
                return
            try:
                next_try = self._step(mlc, runs, item, next_try)
            except Exception as err:  # a bug here must not stop the thread (nor reach training)
                say(f"tracking thread error: {brief(err)}")
            with self._idle:
                self._idle.notify_all()

    def _step(self, mlc, runs: dict, item, next_try: float) -> float:
        """Handle one queue item, then the journal if a retry is due; -> when to retry next."""
        if item is ADOPT:
            self._adopt()
            next_try = 0.0
        elif item is WAKE:
            next_try = 0.0
        elif item is not None:
            try:
                if self._pending or self._closed:  # behind what waits in the journal; or out of time
                    self._journal(item)
                else:
                    self._send(mlc, runs, item)
            finally:
                with self._lock:
                    self._unsettled -= 1
        if self._pending and not self._closed and time.monotonic() >= next_try and not self._drain(mlc, runs):
            hurry = time.monotonic() < self._hurry_until
            next_try = time.monotonic() + (min(self.retry_every_s, HURRY_RETRY_S) if hurry else self.retry_every_s)
        return next_try

    def _send(self, mlc, runs: dict, op: dict) -> None:
        try:
            ops.apply(mlc, self.uri, op, runs)
        except Exception as err:
            if unreachable(err):
                self._went_away(err)
                self._journal(op)
            else:
                self._rejected(op, err)
            return
        self._discard(op)

    def _drain(self, mlc, runs: dict) -> bool:
        """Send the journal in order, deleting each entry once sent; -> whether all of it was."""
        sent = 0
        while self._pending:
            if self._closed:  # close() ran out of time: the rest stays in the journal
                return False
            name = self._pending[0]
            op = self._ops.get(name) or self._read(name)
            if op is not None:
                try:
                    self._apply_entry(mlc, runs, name, op)
                except Exception as err:
                    if unreachable(err):
                        self._went_away(err)
                        return False
                    self._rejected(op, err, name)
                else:
                    self._forget(name)
                    self._discard(op)
                    sent += 1
            self._pending.pop(0)
            self._ops.pop(name, None)
        if self._outage is not None:
            say(f"MLflow at {redact_text(self.uri)} is reachable again: sent the {sent} write(s) kept in "
                f"{self.journal.uri}")
            self._outage = None
        elif sent:
            say(f"sent {sent} write(s) an earlier process left in {self.journal.uri}")
        return True

    def _apply_entry(self, mlc, runs: dict, name: str, op: dict) -> None:
        if op["kind"] in ops.WITH_FILES and op.get("dir") is None:  # another writer's: the journal's copy
            with self.journal.files(name) as files:
                ops.apply(mlc, self.uri, {**op, "dir": files}, runs)
        else:
            ops.apply(mlc, self.uri, op, runs)

    def _read(self, name: str) -> dict | None:
        try:
            return self.journal.read(name)["op"]
        except Exception as err:  # sent meanwhile by `moss tracking replay`, or unreadable
            say(f"skipped {self.journal.uri}/{name}.json: {brief(err)}")
            return None

    def _adopt(self) -> None:
        try:
            others = [n for n in self.journal.names() if n not in self._ops and n not in self._pending]
        except Exception as err:
            say(f"cannot list {self.journal.uri}: {brief(err)}")
            return
        self._pending = sorted(self._pending + others)

    def _journal(self, op: dict) -> None:
        name = self.journal.name(op["t"])
        entry = {"uri": self._kept_uri, "op": {k: v for k, v in op.items() if k != "dir"}}
        if op["kind"] in ops.WITH_FILES:
            entry["op"]["dir"] = None  # the journal's copy: <name>.files/
        try:
            self.journal.write(name, entry, files=op.get("dir"))
        except Exception as err:  # kept in memory: this process can still send it
            say(f"cannot write to {self.journal.uri} ({brief(err)}): {op['kind']} kept in memory only")
        self._pending.append(name)
        self._ops[name] = op

    def _forget(self, name: str) -> None:
        try:
            self.journal.delete(name)
        except Exception as err:
            say(f"sent, but cannot delete {self.journal.uri}/{name}.json ({brief(err)}): a replay would send it "
                "again (harmless)")

    def _went_away(self, err: BaseException) -> None:
        if self._outage is None:
            self._outage = brief(err)
            say(f"MLflow at {redact_text(self.uri)} is unreachable ({self._outage}); training goes on: what "
                f"cannot be sent is kept in {self.journal.uri} and retried every {self.retry_every_s:g} s")

    def _rejected(self, op: dict, err: BaseException, name: str | None = None) -> None:
        where = ""
        if name is not None:
            try:
                where = f"; set aside as {self.journal.reject(name)}"
            except Exception:
                where = f"; {self.journal.uri}/{name}.json left in place"
        say(f"MLflow at {redact_text(self.uri)} refused a {op['kind']} write ({brief(err)}){where}")
        self._discard(op)

    @staticmethod
    def _discard(op: dict) -> None:
        if op.get("kind") in ops.WITH_FILES and op.get("dir"):
            shutil.rmtree(op["dir"], ignore_errors=True)


class MetricsLogger:
    """Rank 0's handle on the run: metrics per step, params, the final adapter, through a Tracker whose
    journal is in the run's folder."""

    def __init__(self, uri: str, run_id: str, settings, journal: Journal):
        """``settings``: the config's tracking section."""
        self.run_id, self._wait_s = run_id, settings.startup_wait_s
        self.tracker = Tracker(uri, journal, settings.retry_every_s, settings.flush_timeout_s)

    def log(self, metrics: dict[str, float], step: int) -> None:
        self.tracker.log_metrics(self.run_id, metrics, step)

    def log_params(self, params: dict[str, str]) -> None:
        self.tracker.log_params(self.run_id, params)

    def has_artifact(self, path: str) -> bool:
        """A read: waits for an unreachable server (tracking.startup_wait_s)."""
        parent = path.rpartition("/")[0]
        mlc = client(self.tracker.uri, self._wait_s)
        return any(f.path == path for f in mlc.list_artifacts(self.run_id, parent or None))

    def log_dir(self, directory, artifact_path: str) -> None:
        self.tracker.log_dir(self.run_id, directory, artifact_path)

    def log_adapter(self, directory, cfg, logged_config: dict, artifact_path: str, step: int,
                    folder: bool = True) -> None:
        """The final adapter: its folder as ``artifact_path`` (unless not ``folder``), and an MLflow
        LoggedModel (models.py) at ``step`` recording ``logged_config`` (the config as the driver redacted it)."""
        from .models import MODEL_NAME, base_reference, save_model_dir

        if folder:
            self.tracker.log_dir(self.run_id, directory, artifact_path)
        with tempfile.TemporaryDirectory() as d:
            self.tracker.log_model(self.run_id, save_model_dir(directory, logged_config, d), MODEL_NAME,
                                   base_reference(cfg),
                                   {TAG.BACKBONE: cfg.backbone.name, TAG.VARIANT: cfg.adapter.variant}, step)

    def has_model(self) -> bool:
        """Whether the run's adapter model is READY; a read: waits for an unreachable server."""
        from .models import find_logged_model, ready

        mlc = client(self.tracker.uri, self._wait_s)
        return ready(find_logged_model(mlc, mlc.get_run(self.run_id).info.experiment_id, self.run_id))

    def settle(self) -> bool:
        """Everything logged so far sent or journaled (Tracker.settle, bounded by one request)."""
        return self.tracker.settle(request_bound_s() + 5)

    def close(self) -> int:
        return self.tracker.close()
