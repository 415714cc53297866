"""The quiet console (orchestrator/console.py): library output to the log file, the command's own lines to
the terminal, everything restored after; --verbose changes nothing."""

import logging
import os
import sys

from orchestrator import console
from orchestrator.cli import main


def test_quiet_sends_everything_but_say_to_the_log(tmp_path, capfd):
    log = tmp_path / "logs" / "run.log"
    with console.quiet(log) as path:
        assert path == log and console.quiet_now()
        print("a library's print")
        sys.stderr.write("a library's stderr\n")
        handler = logging.StreamHandler()  # a handler made while quiet, as Ray's is (ext://sys.stderr)
        logging.getLogger("some.lib").addHandler(handler)
        logging.getLogger("some.lib").warning("a library's log record")
        logging.getLogger("some.lib").removeHandler(handler)
        os.write(2, b"a C++ core log line on fd 2\n")
        console.say("our progress line")
        console.warn("moss tracking: MLflow is unreachable")
    assert not console.quiet_now()
    out, err = capfd.readouterr()
    assert out.splitlines() == [f"logs: {log} (Ray, Tune, MLflow and library output; --verbose shows it here)",
                                "our progress line"]
    assert err.splitlines() == ["moss tracking: MLflow is unreachable"]
    text = log.read_text()
    for line in ("a library's print", "a library's stderr", "a library's log record",
                 "a C++ core log line on fd 2"):
        assert line in text, line
    assert "our progress line" not in text
    print("after")
    os.write(2, b"fd 2 again\n")
    assert capfd.readouterr() == ("after\n", "fd 2 again\n")  # restored


def test_verbose_changes_nothing(tmp_path, capfd):
    with console.quiet(tmp_path / "run.log", verbose=True) as path:
        assert path is None and not console.quiet_now()
        print("shown")
        console.say("also shown")
    assert capfd.readouterr().out == "shown\nalso shown\n"
    assert not (tmp_path / "run.log").exists()


def test_preprocess_prints_its_summary_and_logs_the_rest(tmp_path, capsys, monkeypatch):
    (tmp_path / "tmp").mkdir()
    monkeypatch.setenv("TMPDIR", str(tmp_path / "tmp"))
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", None)  # re-read TMPDIR
    assert main(["sample", str(tmp_path / "sample"), "--per-domain", "2"]) == 0
    capsys.readouterr()
    assert main(["preprocess", "--local", "--set", f"data.source={tmp_path / 'sample'}",
                 "--set", f"data.output={tmp_path / 'shards'}"]) == 0
    lines = capsys.readouterr().out.splitlines()
    logs = tmp_path / "tmp" / f"moss-logs-{os.getuid()}"
    assert lines[0].startswith(f"logs: {logs}/preprocess-")
    assert any(line.startswith("preprocess: 10 records") for line in lines)
    (log,) = logs.iterdir()
    assert log.name.startswith("preprocess-") and log.suffix == ".log"


def test_live_block_redraws_in_place(capsys):
    live = console.Live()
    live.draw(["trial  status", "t0     started"])
    live.draw(["trial  status", "t0     finished", "t1     started"])
    out = capsys.readouterr().out
    first, second = out.split("\x1b[2F\x1b[J")  # back up the two lines drawn, clear them, draw three
    assert first == "trial  status\nt0     started\n"
    assert second == "trial  status\nt0     finished\nt1     started\n"
    console.say("moss tracking: a line printed below the block")
    live.draw(["trial  status"])  # not drawn over that line: a new block below it
    assert capsys.readouterr().out == "moss tracking: a line printed below the block\ntrial  status\n"


def test_a_bad_config_shows_only_the_error(tmp_path, capsys):
    assert main(["train", "--set", "train.micro_batch=0"]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.startswith("moss train: invalid config")


def test_progress_lines_per_tenth_when_not_a_terminal(tmp_path, capsys):
    from mlflow.entities import Metric

    import pyarrow as pa
    import pyarrow.parquet as pq

    from orchestrator.data.pipeline import rows_written

    (tmp_path / "out" / "split=train").mkdir(parents=True)
    pq.write_table(pa.table({"a": list(range(30))}), tmp_path / "out" / "split=train" / "0.parquet")
    pq.write_table(pa.table({"a": list(range(12))}), tmp_path / "out" / "split=train" / "1.parquet")
    (tmp_path / "out" / "split=train" / "2.parquet").write_bytes(b"PAR1 half written")
    assert rows_written(str(tmp_path / "out")) == 42
    with console.quiet(tmp_path / "log"):
        records = console.RecordsProgress("preprocess", lambda: rows_written(str(tmp_path / "out")), 100)
        records.show(5.0)  # 42 of 100: the 4th tenth
        records.show(10.0)  # nothing new
        train = console.TrainProgress("unused", "unused", total=100)
        train.show({"train/loss": Metric("train/loss", 2.5, 0, 7)}, 3.0)
        train.show({"train/loss": Metric("train/loss", 2.4, 0, 8)}, 4.0)  # same tenth: nothing
        train.show({"train/loss": Metric("train/loss", 2.3, 0, 9), "val/loss": Metric("val/loss", 2.6, 0, 9)}, 5.0)
    out = capsys.readouterr().out.splitlines()[1:]  # after the log's path
    assert out == ["preprocess: 42 / 100 records written  5 s", "train: step 7/100  loss 2.5000  3 s",
                   "train: step 9/100  loss 2.3000  val/loss 2.6000 (step 9)  5 s"]
