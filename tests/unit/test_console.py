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
    assert lines[0].startswith(f"logs: {tmp_path / 'tmp' / 'moss-logs'}/preprocess-")
    assert any(line.startswith("preprocess: 10 records") for line in lines)
    (log,) = (tmp_path / "tmp" / "moss-logs").iterdir()
    assert log.name.startswith("preprocess-") and log.suffix == ".log"


def test_live_block_redraws_in_place(capsys):
    live = console.Live()
    live.draw(["trial  status", "t0     started"])
    live.draw(["trial  status", "t0     finished", "t1     started"])
    out = capsys.readouterr().out
    first, second = out.split("\x1b[2F\x1b[J")  # back up the two lines drawn, clear them, draw three
    assert first == "trial  status\nt0     started\n"
    assert second == "trial  status\nt0     finished\nt1     started\n"


def test_a_bad_config_shows_only_the_error(tmp_path, capsys):
    assert main(["train", "--set", "train.micro_batch=0"]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.startswith("moss train: invalid config")
