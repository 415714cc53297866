"""The tracker, its journal and `moss tracking replay`, against a real sqlite store and a real closed port
(every request refused): order, never raising, nothing sent twice, replay idempotence."""

import json
import time
from pathlib import Path

import pytest
from mlflow.entities import Metric
from mlflow.tracking import MlflowClient

from orchestrator.cli import main
from orchestrator.config import ConfigError
from orchestrator.tracking.journal import Journal
from orchestrator.tracking.outage import Unreachable, wait_for
from orchestrator.tracking.replay import replay
from orchestrator.tracking.resilient import Tracker


def offline_writes(uri: str, run_dir: Path, run_id: str, src: Path) -> Tracker:
    """Twenty steps, params, a tag set twice, a text, a folder, the end: all while ``uri`` is unreachable."""
    tracker = Tracker(uri, Journal(str(run_dir)), retry_every_s=60, flush_timeout_s=0)
    t0 = time.monotonic()
    for step in range(1, 21):
        tracker.log_metrics(run_id, {"train/loss": 1.0 / step, "train/lr": 0.1}, step)
    tracker.log_params(run_id, {"rank": "4"})
    tracker.set_tags(run_id, {"phase": "first"})
    tracker.log_text(run_id, "a: 1\n", "config.yaml")
    tracker.set_tags(run_id, {"phase": "second"})  # order matters: the last one wins
    (src / "adapter.bin").write_bytes(b"weights")
    tracker.log_dir(run_id, src, "adapter")
    (src / "adapter.bin").unlink()  # the caller may delete it at once (a TemporaryDirectory)
    tracker.terminate(run_id, "FINISHED")
    assert time.monotonic() - t0 < 1.0  # never waits on MLflow
    return tracker


def test_an_identical_metric_row_is_stored_once(store):
    """What "nothing twice" leans on when an answer is lost and a write is sent again: MLflow's SQL store
    keeps one row per (key, value, timestamp, step)."""
    _, mlc, exp = store
    run_id = mlc.create_run(exp).info.run_id
    metric = Metric("train/loss", 0.5, 1700000000000, 3)
    mlc.log_batch(run_id, metrics=[metric])
    mlc.log_batch(run_id, metrics=[metric])
    assert len(mlc.get_metric_history(run_id, "train/loss")) == 1
    mlc.log_batch(run_id, metrics=[Metric("train/loss", 0.5, 1700000000001, 3)])  # another time: another row
    assert len(mlc.get_metric_history(run_id, "train/loss")) == 2


def test_unreachable_server_journals_everything_in_order_and_warns_once(dead_uri, store, tmp_path, capfd):
    _, mlc, exp = store
    run_id = mlc.create_run(exp).info.run_id
    (tmp_path / "src").mkdir()
    tracker = offline_writes(dead_uri, tmp_path / "run", run_id, tmp_path / "src")
    assert not tracker.flush(0.5)  # tried, refused, retried
    assert tracker.close() == 26
    journal = Journal(str(tmp_path / "run"))
    entries = [journal.read(n) for n in journal.names()]
    kinds = [e["op"]["kind"] for e in entries]
    assert kinds == ["metrics"] * 20 + ["params", "tags", "text", "tags", "artifacts", "terminate"]
    assert [e["op"]["metrics"][0][3] for e in entries[:20]] == list(range(1, 21))
    assert {e["uri"] for e in entries} == {dead_uri}
    assert (Path(journal.path) / f"{journal.names()[24]}.files" / "adapter.bin").read_bytes() == b"weights"
    err = capfd.readouterr().err
    assert err.count("is unreachable") == 1 and f"{tmp_path / 'run'}/journal" in err
    assert f"run `moss tracking replay {tmp_path / 'run'}`" in err
    assert mlc.get_metric_history(run_id, "train/loss") == []


def test_settle_leaves_nothing_only_in_memory(dead_uri, store, tmp_path):
    """Before a report lets Tune kill the trial: every write so far is sent (server up) or journaled (down)."""
    uri, mlc, exp = store
    run_id = mlc.create_run(exp).info.run_id
    up = Tracker(uri, Journal(str(tmp_path / "up")), retry_every_s=60, flush_timeout_s=0)
    for step in range(1, 4):
        up.log_metrics(run_id, {"train/loss": 1.0 / step}, step)
    assert up.settle(30)
    assert [m.step for m in mlc.get_metric_history(run_id, "train/loss")] == [1, 2, 3]
    down = Tracker(dead_uri, Journal(str(tmp_path / "down")), retry_every_s=60, flush_timeout_s=0)
    for step in range(1, 4):
        down.log_metrics(run_id, {"train/loss": 1.0 / step}, step)
    assert down.settle(30)
    assert len(Journal(str(tmp_path / "down")).names()) == 3  # on disk before close: a SIGKILL now loses none
    down.close(0)


def test_replay_sends_in_order_once_and_again_sends_nothing(dead_uri, store, tmp_path, capsys):
    uri, mlc, exp = store
    run_id = mlc.create_run(exp).info.run_id
    (tmp_path / "src").mkdir()
    offline_writes(dead_uri, tmp_path / "run", run_id, tmp_path / "src").close()
    journal = Journal(str(tmp_path / "run"))
    logged_at = [journal.read(n)["op"]["metrics"][0][2] for n in journal.names()[:20]]
    ended_at = journal.read(journal.names()[-1])["op"]["end_time"]

    assert main(["tracking", "replay", str(tmp_path / "run")]) == 1  # the recorded URI: still unreachable
    assert "unreachable" in capsys.readouterr().err and len(journal.names()) == 26
    assert main(["tracking", "replay", str(tmp_path / "run"), "--tracking-uri", uri]) == 0
    assert "sent 26 write(s)" in capsys.readouterr().out
    history = sorted(mlc.get_metric_history(run_id, "train/loss"), key=lambda m: m.step)
    assert [m.step for m in history] == list(range(1, 21))
    assert [m.timestamp for m in history] == logged_at  # when they were logged, not when replayed
    run = mlc.get_run(run_id)
    assert run.info.status == "FINISHED" and run.info.end_time == ended_at
    assert run.data.params == {"rank": "4"} and run.data.tags["phase"] == "second"
    assert {f.path for f in mlc.list_artifacts(run_id)} == {"config.yaml", "adapter"}
    assert journal.names() == [] and list(Path(journal.path).iterdir()) == []

    assert replay(str(tmp_path / "run"), uri).sent == 0
    assert len(mlc.get_metric_history(run_id, "train/loss")) == 20


def test_a_uri_with_a_password_is_not_written_down(monkeypatch, store, tmp_path):
    uri, mlc, exp = store
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    run_id = mlc.create_run(exp).info.run_id
    tracker = Tracker("http://moss:s3cret-pw@127.0.0.1:9", Journal(str(tmp_path / "run")), flush_timeout_s=0)
    tracker.log_metrics(run_id, {"loss": 1.0}, 1)
    assert tracker.close() == 1
    text = next(Path(tmp_path / "run" / "journal").glob("*.json")).read_text()
    assert "s3cret" not in text and json.loads(text)["uri"] is None
    with pytest.raises(ConfigError, match="--tracking-uri"):
        replay(str(tmp_path / "run"))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    assert replay(str(tmp_path / "run")).sent == 1


def test_a_refused_write_is_set_aside_and_the_rest_sent(dead_uri, store, tmp_path):
    uri, mlc, exp = store
    run_id = mlc.create_run(exp).info.run_id
    tracker = Tracker(dead_uri, Journal(str(tmp_path / "run")), flush_timeout_s=0)
    tracker.log_metrics("0" * 32, {"loss": 1.0}, 1)  # no such run
    tracker.log_metrics(run_id, {"loss": 2.0}, 2)
    tracker.close()
    done = replay(str(tmp_path / "run"), uri)
    assert done.sent == 1 and len(done.rejected) == 1
    assert [m.step for m in mlc.get_metric_history(run_id, "loss")] == [2]
    assert len(list((tmp_path / "run" / "journal").glob("*.rejected"))) == 1
    assert replay(str(tmp_path / "run"), uri).sent == 0


def test_a_tracker_sends_what_an_earlier_writer_left_first(dead_uri, store, tmp_path):
    """adopt(): a dead writer's entries (a worker that ended mid-outage) go before the adopter's own writes;
    a named run (a sweep's child) is created when first sent, then found."""
    uri, mlc, exp = store
    run_id = mlc.create_run(exp).info.run_id
    earlier = Tracker(dead_uri, Journal(str(tmp_path / "run")), flush_timeout_s=0)
    for step in (1, 2):
        earlier.log_metrics(run_id, {"loss": float(step)}, step)
    earlier.set_tags(run_id, {"who": "earlier"})
    child = {"experiment": "moss", "name": "adopt-t1", "tags": {"moss.run_name": "adopt-t1"}}
    earlier.set_tags(child, {"moss.status": "early_stopped"})
    earlier.close()
    tracker = Tracker(uri, Journal(str(tmp_path / "run")), flush_timeout_s=30)
    tracker.adopt()
    tracker.set_tags(run_id, {"who": "adopter"})
    tracker.terminate(child, "KILLED")
    assert tracker.close() == 0
    assert [m.step for m in mlc.get_metric_history(run_id, "loss")] == [1, 2]
    assert mlc.get_run(run_id).data.tags["who"] == "adopter"
    (found,) = mlc.search_runs([exp], "tags.`moss.run_name` = 'adopt-t1'")
    assert found.data.tags["moss.status"] == "early_stopped" and found.info.status == "KILLED"
    assert Journal(str(tmp_path / "run")).names() == []


def test_start_of_run_reads_wait_then_fail_clearly(dead_uri, capfd):
    calls = []

    def read():
        calls.append(1)
        return MlflowClient(dead_uri).search_experiments()

    with pytest.raises(Unreachable, match="stayed unreachable for 1.5 s .tracking.startup_wait_s"):
        wait_for(read, "find the run", dead_uri, 1.5)
    assert len(calls) >= 2 and capfd.readouterr().err.count("waiting up to 1.5 s") == 1
    with pytest.raises(ZeroDivisionError):  # anything else is not waited for
        wait_for(lambda: 1 / 0, "divide", dead_uri, 60)


def test_the_dataset_op_is_an_mlflow_dataset_input_and_sending_it_twice_records_it_once(tmp_path):
    from mlflow.tracking import MlflowClient

    from orchestrator.tracking import ops

    uri = f"sqlite:///{tmp_path / 'm.db'}"
    mlc = MlflowClient(uri)
    run_id = mlc.create_run(mlc.create_experiment("e", artifact_location=(tmp_path / "a").as_uri())).info.run_id
    op = ops.dataset(run_id, name="shards/chameleon", digest="0123456789abcdef", source_type="local",
                     source='{"uri": "/data/shards/chameleon"}', schema="{}", profile='{"train": {"records": 3}}',
                     context="training")
    for _ in range(2):  # a retry after a lost answer
        ops.apply(mlc, uri, json.loads(json.dumps(op)), {})  # as replayed from the journal
    (data,) = mlc.get_run(run_id).inputs.dataset_inputs
    assert (data.dataset.name, data.dataset.digest) == ("shards/chameleon", "0123456789abcdef")
