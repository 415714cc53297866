"""What a long command (demo, preprocess, train, sweep) shows on the terminal: its own progress and summary.

Everything else written to stdout / stderr in the process while it runs (Ray's and Tune's console output,
Ray Data's progress, the raylet's worker-pool warnings, MLflow's and transformers' logs and warnings) goes to
a log file, whose path is the first line shown (a command refused at once, a bad config, shows only why).
``--verbose`` keeps the old behaviour: all of it on the terminal. The command's own lines go through ``say``
(to the terminal either way). Jobs (``ray job submit``, KubeRay) are never quiet: their logs are the job's.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import TextIO

_TERMINAL: TextIO | None = None  # the real stdout while quiet
_TERMINAL_ERR: TextIO | None = None  # and stderr
_HEADER: list[str] = []  # the log's path, shown before the command's first line (none when it fails at once)
_LIVE: list = [None]  # the Live block drawn last, while nothing was printed below it


def quiet_now() -> bool:
    return _TERMINAL is not None


def terminal() -> TextIO:
    return _TERMINAL or sys.stdout


def say(text: str = "") -> None:
    out = terminal()
    while _HEADER:
        out.write(_HEADER.pop() + "\n")
    _LIVE[0] = None  # a live block above this line is not redrawn over it
    out.write(text + "\n")
    out.flush()


def warn(text: str) -> None:
    """A line on the terminal's stderr, quiet or not (what the user must see: an outage, a retry)."""
    err = _TERMINAL_ERR or sys.stderr
    _LIVE[0] = None
    err.write(text + "\n")
    err.flush()


def interactive() -> bool:
    try:
        return terminal().isatty()
    except (AttributeError, ValueError):
        return False


def default_log(command: str) -> Path:
    """<tmp>/moss-logs-<uid>/<command>-<time>.log: one folder per user (a shared one would be another's)."""
    uid = os.getuid() if hasattr(os, "getuid") else "user"
    return (Path(tempfile.gettempdir()) / f"moss-logs-{uid}"
            / f"{command}-{dt.datetime.now().strftime('%Y%m%d-%H%M%S')}.log")


class _Redirected:
    """sys.stdout / sys.stderr while quiet: writes go to the log while it is open, to the saved stream after
    (a handler or faulthandler made while quiet keeps this object, never a closed file). ``fileno``: the
    descriptor (stderr: 2, which is the log's while quiet); stdout has none to offer."""

    encoding, errors = "utf-8", "replace"

    def __init__(self, log: TextIO, after: TextIO, fd: int | None):
        self._log, self._after, self._fd = log, after, fd

    def _target(self) -> TextIO:
        return self._log if not self._log.closed else self._after

    def write(self, text: str) -> int:
        return self._target().write(text)

    def writelines(self, lines) -> None:
        for line in lines:
            self.write(line)

    def flush(self) -> None:
        self._target().flush()

    def isatty(self) -> bool:
        return False

    def fileno(self) -> int:
        if self._fd is None:
            raise OSError("no file descriptor while the console is quiet")
        return self._fd

    @property
    def closed(self) -> bool:
        return False


@contextlib.contextmanager
def quiet(log_path: str | Path | None, verbose: bool = False):
    """Send the process's stdout and stderr (file descriptor 2 included) to ``log_path`` (appending) for the
    block; ``say`` and ``warn`` still reach the terminal. ``verbose``, ``log_path`` None, or a log that
    cannot be opened (said on stderr): nothing changes."""
    global _TERMINAL, _TERMINAL_ERR
    if verbose or log_path is None or _TERMINAL is not None:
        yield None
        return
    path = Path(log_path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        log = open(path, "a", buffering=1, encoding="utf-8", errors="replace")
    except OSError as e:
        warn(f"moss: cannot write the log {path} ({e}); the output stays here")
        yield None
        return
    saved = sys.stdout, sys.stderr
    with contextlib.ExitStack() as undo:
        undo.callback(log.close)
        for stream in saved:
            stream.flush()
        # fd 2 too: Ray's C++ core worker writes its log lines there, past sys.stderr. The terminal's stderr is
        # then a copy of the old fd 2 when sys.stderr wrote to it (else, under pytest, sys.stderr itself)
        fd2 = os.dup(2)
        undo.callback(os.close, fd2)
        term_err = saved[1]
        if _writes_to_fd(saved[1], 2):
            term_err = os.fdopen(os.dup(fd2), "w", buffering=1, encoding="utf-8", errors="replace")
            undo.callback(term_err.close)
        os.dup2(log.fileno(), 2)
        undo.callback(os.dup2, fd2, 2)  # (callbacks run last-first: fd 2 comes back before anything closes)
        sys.stdout, sys.stderr = _Redirected(log, saved[0], None), _Redirected(log, saved[1], 2)
        _TERMINAL, _TERMINAL_ERR = saved[0], term_err
        _HEADER[:] = [f"logs: {path} (Ray, Tune, MLflow and library output; --verbose shows it here)"]

        def restore() -> None:
            global _TERMINAL, _TERMINAL_ERR
            sys.stdout, sys.stderr = saved
            _TERMINAL = _TERMINAL_ERR = None
            _HEADER.clear()
            _LIVE[0] = None

        undo.callback(restore)
        try:
            yield path
        except BaseException:
            if _HEADER:  # failed before its first line: where to look
                warn(_HEADER.pop())
            raise
        finally:
            with contextlib.suppress(OSError, ValueError):
                log.flush()


def _writes_to_fd(stream, fd: int) -> bool:
    try:
        return stream.fileno() == fd
    except (AttributeError, OSError, ValueError):
        return False


def ray_logs() -> str | None:
    """The local Ray session's log folder, when this process started or joined one."""
    try:
        from ray._private.worker import _global_node

        return _global_node.get_logs_dir_path() if _global_node is not None else None
    except Exception:  # noqa: BLE001 - a Ray without this internal: no path to show
        return None


class Live:
    """A block of lines redrawn in place on a terminal (ANSI), cut to the terminal's width and height; a line
    printed below it (say, warn) ends it: the next draw starts a new block. Elsewhere nothing is redrawn
    (callers print one line per event instead)."""

    def __init__(self):
        self._shown = 0

    def draw(self, lines: list[str]) -> None:
        import shutil

        size = shutil.get_terminal_size()
        if len(lines) > size.lines - 1:
            lines = lines[:1] + lines[len(lines) - (size.lines - 2):] if size.lines > 2 else lines[:1]
        lines = [line[: size.columns - 1] for line in lines]
        out = terminal()
        while _HEADER:
            out.write(_HEADER.pop() + "\n")
        if _LIVE[0] is self and self._shown:
            out.write(f"\x1b[{self._shown}F\x1b[J")  # up to the block's first line, clear to the end
        out.write("\n".join(lines) + "\n")
        out.flush()
        self._shown, _LIVE[0] = len(lines), self


class Poller:
    """Calls ``show(seconds since start)`` every ``every_s`` seconds from a daemon thread while the console is
    quiet (a progress display); ``show`` must not raise."""

    def __init__(self, show, every_s: float = 5.0):
        self._show, self.every_s = show, every_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="moss-progress", daemon=True)

    def __enter__(self):
        if quiet_now():
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        if self._thread.is_alive():
            self._stop.set()
            self._thread.join(timeout=5)  # a daemon: one stuck on an MLflow read is left behind

    def _run(self) -> None:
        t0 = time.monotonic()
        while not self._stop.wait(self.every_s):
            try:
                self._show(time.monotonic() - t0)
            except Exception:  # noqa: BLE001 - a display never stops the work it watches
                pass


class RecordsProgress(Poller):
    """Records written so far (``count()``) out of ``total``: one line redrawn on a terminal, else a line
    per tenth."""

    def __init__(self, label: str, count, total: int, every_s: float = 5.0):
        super().__init__(self.show, every_s)
        self.label, self.count, self.total = label, count, total
        self._live, self._tenth = Live(), 0

    def show(self, seconds: float) -> None:
        n = self.count()
        line = f"{self.label}: {n:,} / {self.total:,} records written  {seconds:.0f} s"
        if interactive():
            self._live.draw([line])
        elif n * 10 // max(1, self.total) > self._tenth:
            self._tenth = n * 10 // max(1, self.total)
            say(line)


class TrainProgress(Poller):
    """Steps and losses of a training run, read from its MLflow run (the workers' own step lines are in Ray's
    logs): one line redrawn on a terminal, else a line per tenth of the run and per validation."""

    def __init__(self, uri: str, run_id: str, total: int, every_s: float = 5.0):
        super().__init__(self.poll, every_s)
        self.uri, self.run_id, self.total = uri, run_id, total
        self._live, self._printed_tenth, self._val_step = Live(), -1, None

    def poll(self, seconds: float) -> None:
        from .tracking.mlflow import client

        self.show({m.key: m for m in client(self.uri).get_run(self.run_id).data._metric_objs}, seconds)

    def show(self, metrics: dict, seconds: float) -> None:
        loss = metrics.get("train/loss")
        if loss is None:
            return
        step = loss.step
        val = metrics.get("val/loss")
        line = (f"train: step {step}/{self.total}  loss {loss.value:.4f}"
                + (f"  val/loss {val.value:.4f} (step {val.step})" if val is not None else "") + f"  {seconds:.0f} s")
        if interactive():
            self._live.draw([line])
            return
        tenth = step * 10 // max(1, self.total)
        new_val = val is not None and val.step != self._val_step
        if tenth > self._printed_tenth or new_val:
            self._printed_tenth, self._val_step = tenth, val.step if val is not None else None
            say(line)
