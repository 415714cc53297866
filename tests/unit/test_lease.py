"""One writer per run / sweep (orchestrator/lease.py) and crash-consistent state files (orchestrator/files.py),
with real processes and real files."""

import json
import subprocess
import sys
import time

import pytest

from orchestrator import lease
from orchestrator.config import ConfigError
from orchestrator.files import DamagedFile, read_json, write_json
from orchestrator.lease import LOCK, Lease

HOLD = """
import sys, time
from orchestrator.lease import Lease
with Lease(sys.argv[1], "run 'x'"):
    print("held", flush=True)
    time.sleep(120)
"""


def test_a_live_owner_refuses_a_second_launch_and_a_dead_ones_lease_is_taken_over(tmp_path, capsys):
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(ConfigError, match=rf"run 'x' is live elsewhere: .* pid {holder.pid}"):
            Lease(str(tmp_path), "run 'x'").acquire()
    finally:
        holder.kill()  # SIGKILL: the lease file stays behind, its owner gone
        holder.wait()
    assert read_json(str(tmp_path / LOCK))["pid"] == holder.pid
    with Lease(str(tmp_path), "run 'x'") as mine:
        assert "process" in mine.took_over and "is gone" in mine.took_over
        assert read_json(str(tmp_path / LOCK))["owner"] == mine.owner
    assert "took over the lease of run 'x'" in capsys.readouterr().err
    assert not (tmp_path / LOCK).exists()  # released on exit


def test_a_lease_of_another_host_is_stale_only_after_its_heartbeat_stops(tmp_path, monkeypatch):
    record = {"owner": "other", "host": "node-7", "pid": 1, "started": "then", "heartbeat": time.time()}
    write_json(str(tmp_path / LOCK), record)
    with pytest.raises(ConfigError, match="host node-7"):
        Lease(str(tmp_path), "sweep 's'").acquire()
    write_json(str(tmp_path / LOCK), {**record, "heartbeat": time.time() - lease.STALE_S - 5})
    with Lease(str(tmp_path), "sweep 's'") as mine:
        assert "no heartbeat for" in mine.took_over


def test_heartbeats_refresh_the_lease(tmp_path, monkeypatch):
    monkeypatch.setattr(lease, "HEARTBEAT_S", 0.2)
    with Lease(str(tmp_path), "run 'x'"):
        first = read_json(str(tmp_path / LOCK))["heartbeat"]
        time.sleep(0.8)
        assert read_json(str(tmp_path / LOCK))["heartbeat"] > first


def test_a_torn_lease_is_replaced(tmp_path):
    (tmp_path / LOCK).write_text('{"owner": "x", "pi')
    with Lease(str(tmp_path), "run 'x'") as mine:
        assert "damaged" in mine.took_over


def test_state_files_are_replaced_whole_and_a_damaged_one_says_what_to_do(tmp_path):
    path = str(tmp_path / "sub" / "moss_run.json")
    write_json(path, {"a": 1})
    write_json(path, {"a": 2})
    assert read_json(path) == {"a": 2}
    assert [p.name for p in (tmp_path / "sub").iterdir()] == ["moss_run.json"]  # no temp file left
    (tmp_path / "sub" / "moss_run.json").write_bytes(json.dumps({"a": 3}).encode()[:5])  # a truncated write
    with pytest.raises(DamagedFile, match="is damaged .* restore it"):
        read_json(path, hint="restore it")
    assert read_json(str(tmp_path / "missing.json")) is None
