"""`moss tracking replay RUN_DIR`: send the journal a run (or sweep) left behind when it ended while its
tracking server was away, in order, deleting each entry once sent; run again, it sends only what is left.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from ..config import ConfigError
from ..files import exists
from . import ops
from .journal import Journal
from .mlflow import client
from .outage import Unreachable, bound_http, brief, unreachable
from .redact import redact_text


@dataclass
class Replayed:
    sent: int = 0
    rejected: list[str] = field(default_factory=list)  # entries the server refused, set aside


def replay(run_dir: str, tracking_uri: str | None = None) -> Replayed:
    """Send ``<run_dir>/journal`` in order. The URI: ``tracking_uri``, else the one each entry recorded,
    else MLFLOW_TRACKING_URI. Unreachable (the rest kept) when the server cannot be reached."""
    bound_http()
    if not exists(run_dir):
        raise ConfigError(f"no folder {run_dir}: give the run's folder, <storage.path>/<run name> (a sweep's: "
                          "<storage.path>/<sweep name>)")
    journal = Journal(run_dir)
    names = journal.names()
    done, clients, runs = Replayed(), {}, {}
    for i, name in enumerate(names):
        entry = journal.read(name)
        uri = tracking_uri or entry.get("uri") or os.environ.get("MLFLOW_TRACKING_URI")
        if not uri:
            raise ConfigError(f"{journal.uri}/{name}.json does not record its tracking URI (it held a password): "
                              "pass --tracking-uri or set MLFLOW_TRACKING_URI (credentials: MLFLOW_TRACKING_USERNAME"
                              " / MLFLOW_TRACKING_PASSWORD)")
        mlc = clients.setdefault(uri, client(uri))
        op = entry["op"]
        try:
            if op["kind"] in ops.WITH_FILES:
                with journal.files(name) as files:
                    ops.apply(mlc, uri, {**op, "dir": files}, runs)
            else:
                ops.apply(mlc, uri, op, runs)
        except Exception as err:
            if unreachable(err):
                raise Unreachable(f"MLflow at {redact_text(uri)} is unreachable ({brief(err)}): sent {done.sent}, "
                                  f"{len(names) - i} left in {journal.uri}; run this again when the server is back") from err
            done.rejected.append(f"{journal.reject(name)}: {brief(err)}")
            continue
        journal.delete(name)
        done.sent += 1
    journal.sweep()
    return done
