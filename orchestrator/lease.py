"""One writer per run and per sweep: a lease file in the run's (or sweep's) folder.

The owner writes ``moss.lock`` (host, pid, when) and refreshes its heartbeat every HEARTBEAT_S from a
background thread. A second launch of the same run name (or a second ``--resume`` of a sweep) finds a live
owner and stops with exit 2, saying where it runs. An owner is dead when its process is gone (same host)
or its heartbeat is older than STALE_S (any host: storage shared over S3 or NFS); a dead owner's lease is
taken over, and said so. Object stores have no exclusive create: after writing, the lease is read back
after a short settle, and the later of two racing writers sees the other's record and backs off.
"""

from __future__ import annotations

import datetime as dt
import os
import socket
import sys
import threading
import time
import uuid

import psutil

from .config import ConfigError
from .console import warn
from .files import DamagedFile, arrow_fs, create_json, delete, read_json, write_json
from .tracking.redact import redact_text

LOCK = "moss.lock"
HEARTBEAT_S = 10.0
STALE_S = 60.0
SETTLE_S = 1.0  # object stores: wait before reading the lease back


def _me(what: str, owner: str) -> dict:
    p = psutil.Process()
    return {"owner": owner, "what": what, "host": socket.gethostname(), "pid": os.getpid(),
            "pid_started": p.create_time(), "command": redact_text(" ".join(sys.argv))[:500],
            "started": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "heartbeat": time.time()}


def _dead(record: dict, now: float) -> str | None:
    """Why the lease's owner is dead, or None while it lives."""
    if record.get("host") == socket.gethostname():
        try:
            alive = abs(psutil.Process(record["pid"]).create_time() - record.get("pid_started", 0)) < 1
        except (psutil.NoSuchProcess, KeyError, TypeError):
            alive = False
        if not alive:
            return f"process {record.get('pid')} on this host is gone"
        return None  # alive here: a slow heartbeat (a storage stall) is not death
    age = now - float(record.get("heartbeat", 0))
    if age > STALE_S:
        return f"no heartbeat for {age:.0f} s"
    return None


def _set_aside(path: str, owner: str) -> None:
    """Rename a stale lease away (locally a rename is atomic: one of two racing launches moves it)."""
    fs, p = arrow_fs(path)
    try:
        fs.move(p, f"{p}.stale-{owner}")
    except (FileNotFoundError, OSError):
        pass  # another launch moved it first; the exclusive create decides


class Lease:
    """Held while the run or sweep is live: ``with Lease(folder, "run 'x'"):``."""

    def __init__(self, folder: str, what: str):
        self.path, self.what = f"{folder.rstrip('/')}/{LOCK}", what
        self.owner = uuid.uuid4().hex
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.took_over: str | None = None  # the note printed when a dead owner's lease was taken over

    def acquire(self, attempts: int = 5) -> Lease:
        try:
            held = read_json(self.path)
        except DamagedFile as e:  # a torn lease names no live owner: take it over
            held, self.took_over = None, f"replaced a damaged lease ({e})"
        if held is not None and held.get("owner") != self.owner:
            why = _dead(held, time.time())
            if why is None:
                age = time.time() - float(held.get("heartbeat", 0))
                raise ConfigError(
                    f"{self.what} is live elsewhere: {held.get('command') or 'moss'} on host {held.get('host')}, pid "
                    f"{held.get('pid')}, since {held.get('started')} (heartbeat {age:.0f} s ago; {self.path}). Wait "
                    f"for it or stop it; a lease whose owner died is taken over after {STALE_S:.0f} s without heartbeat")
            self.took_over = (f"took over the lease of {self.what} from pid {held.get('pid')} on {held.get('host')} "
                              f"(started {held.get('started')}): {why}")
        if held is not None or self.took_over is not None:
            # a dead owner's (or a torn) lease: move it aside under a unique name, so that of two launches
            # taking it over at once only one gets past the exclusive create below
            _set_aside(self.path, self.owner)
        if not create_json(self.path, _me(self.what, self.owner)):
            if attempts <= 1:
                raise ConfigError(f"cannot take {self.path}: another launch of {self.what} keeps creating it")
            self.took_over = None
            return self.acquire(attempts - 1)  # another launch created it between our read and our create
        if "://" in self.path:
            time.sleep(SETTLE_S)
        back = read_json(self.path) or {}
        if back.get("owner") != self.owner:
            raise ConfigError(f"{self.what} was launched twice at the same moment: the other launch (host "
                              f"{back.get('host')}, pid {back.get('pid')}) holds {self.path}")
        if self.took_over:
            warn(f"warning: {self.took_over}")
        self._thread = threading.Thread(target=self._beat, name="moss-lease", daemon=True)
        self._thread.start()
        return self

    def _beat(self) -> None:
        record = _me(self.what, self.owner)
        while not self._stop.wait(HEARTBEAT_S):
            try:
                held = read_json(self.path)
                if held is not None and held.get("owner") != self.owner:
                    warn(f"warning: the lease of {self.what} was taken over by pid {held.get('pid')} on "
                          f"{held.get('host')}: two writers now")
                    return
                record["heartbeat"] = time.time()
                write_json(self.path, record)
            except Exception as e:  # storage hiccup: the next beat retries; STALE_S leaves room for several
                warn(f"warning: cannot refresh {self.path}: {type(e).__name__}: {e}")

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        try:
            held = read_json(self.path)
            if held is not None and held.get("owner") == self.owner:
                delete(self.path)
        except Exception:
            pass  # a lease left behind is taken over by the next launch once its owner is seen dead

    def __enter__(self) -> Lease:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
