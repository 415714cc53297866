"""Checkpoints verified by SHA-256 and the fallback to the previous kept one; the data-stall watchdog."""

import time
from pathlib import Path

import pytest
import ray.train

from orchestrator.training.checkpoint import (CHECKSUMS, STATE_FILE, DamagedCheckpoint, verify_checkpoint,
                                              write_checksums)
from orchestrator.training.data import DataStall, watched
from orchestrator.training.resume import intact_checkpoint


def checkpoint(run_dir: Path, stamp: str, step: int) -> Path:
    d = run_dir / f"checkpoint_2026-12-02_10-00-{stamp}.000000"
    (d / "adapter").mkdir(parents=True)
    (d / "adapter" / "adapter_model.safetensors").write_bytes(bytes(range(256)) * 64)
    (d / STATE_FILE).write_text(f'{{"state": {{"step": {step}}}}}')
    write_checksums(d)
    return d


def test_a_truncated_or_missing_file_fails_verification(tmp_path):
    d = checkpoint(tmp_path, "01", 10)
    verify_checkpoint(d)
    weights = d / "adapter" / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])  # a write cut short
    with pytest.raises(DamagedCheckpoint, match="adapter/adapter_model.safetensors"):
        verify_checkpoint(d)
    weights.unlink()
    with pytest.raises(DamagedCheckpoint, match="missing"):
        verify_checkpoint(d)
    (d / CHECKSUMS).unlink()  # written last: without it the checkpoint was never complete...
    (d / STATE_FILE).unlink()
    with pytest.raises(DamagedCheckpoint, match="incomplete"):
        verify_checkpoint(d)


def test_resume_falls_back_to_the_previous_kept_checkpoint(tmp_path, capsys):
    checkpoint(tmp_path, "01", 10)
    middle = checkpoint(tmp_path, "02", 20)
    latest = checkpoint(tmp_path, "03", 30)
    (latest / STATE_FILE).write_text("{")  # the latest was being written when the node died
    with intact_checkpoint(ray.train.Checkpoint(str(latest))) as d:
        assert Path(d).name == middle.name
    err = capsys.readouterr().err
    assert f"checkpoint {latest} is damaged" in err and f"resuming from {middle}" in err
    with intact_checkpoint(None) as d:
        assert d is None


def test_no_intact_checkpoint_fails_the_attempt_rather_than_restarting_at_step_0(tmp_path):
    only = checkpoint(tmp_path, "01", 10)
    (only / STATE_FILE).write_text("{")
    with pytest.raises(DamagedCheckpoint, match="no intact checkpoint"):
        with intact_checkpoint(ray.train.Checkpoint(str(only))):
            pass


def test_a_stalled_data_stream_fails_with_what_starves_it():
    def stream():
        yield 1
        time.sleep(30)  # Ray Data waiting for a CPU that never frees
        yield 2

    batches = watched(stream(), 0.5, "train")
    assert next(batches) == 1
    t = time.time()
    with pytest.raises(DataStall, match=r"train data stream yielded no batch for 0.5 s \(train.stall_timeout_s\)"):
        next(batches)
    assert time.time() - t < 5


def test_the_watchdog_passes_items_and_errors_through():
    assert list(watched(iter(range(5)), 5, "val")) == [0, 1, 2, 3, 4]

    def broken():
        yield 1
        raise ValueError("bad shard")

    with pytest.raises(ValueError, match="bad shard"):
        list(watched(broken(), 5, "val"))
