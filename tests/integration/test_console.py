"""`moss demo` as a user runs it (a subprocess, stdout not a terminal) on a two-trial space: a short console
(the issue's bound: at most 80 lines) that still shows each trial's events, the ranked table, the best run,
the report path and the MLflow command, while Ray's, Tune's and the libraries' output goes to the log file."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
SPACE = f"""name: tiny
description: the demo's shape in two short trials
base: {REPO / 'jobs' / 'configs' / 'sample.yaml'}
set:
  adapter.rank: 4
  train.max_steps: 4
  train.micro_batch: 2
  train.warmup_steps: 1
  train.eval_every: 2
  train.ckpt_every: 2
params:
  adapter.variant: {{grid: [lora, moss]}}
metric: val/image_loss
mode: min
search: {{algorithm: grid, seed: 0}}
scheduler: {{type: fifo}}
max_concurrent_trials: 2
resources: {{workers: 1, cpus_per_worker: 0.5}}
max_failures: 0
"""


def test_the_demo_console_is_short_and_complete(tmp_path):
    (tmp_path / "tiny.yaml").write_text(SPACE)
    out = tmp_path / "demo"
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    done = subprocess.run([str(BIN / "moss"), "demo", "--out", str(out), "--space", str(tmp_path / "tiny.yaml"),
                           "--per-domain", "6"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    lines = (done.stdout + done.stderr).splitlines()
    assert done.returncode == 0, "\n".join(lines[-40:])
    assert len(lines) <= 80, "\n".join(lines)
    text = "\n".join(lines)
    log = out / "logs" / "moss-demo.log"
    assert lines[0].startswith(f"logs: {log}")
    assert sum("started" in line and line.startswith("sweep: [") for line in lines) == 2
    assert sum(" finished " in line and line.startswith("sweep: [") for line in lines) == 2
    for shown in ("best:", "report:", "mlflow ui --backend-store-uri", "paired:", "evaluation:"):
        assert shown in text, shown
    assert "WARNING" not in text and "FutureWarning" not in text and "(raylet)" not in text
    logged = log.read_text()
    assert "Started a local Ray instance" in logged  # Ray's own console output, kept
