"""Training checkpoints: the adapter, optimizer and scheduler state, step and data position.

Only tensors and JSON, no pickle: ``adapter/`` is what ``save_adapter`` writes (loadable with
``load_adapter``), ``optimizer.safetensors`` holds AdamW's per-parameter tensors keyed by parameter
name, ``trainer_state.json`` the rest (step, epoch, position, scheduler, param groups, metrics).
``checksums.json``, written last, holds the SHA-256 of every other file: a resume verifies it and falls
back to the previous kept checkpoint when the latest is incomplete or damaged.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

ADAPTER_DIR = "adapter"
FINAL_ADAPTER = "adapter"  # MLflow artifact path of a training run's final adapter
OPTIMIZER_FILE = "optimizer.safetensors"
STATE_FILE = "trainer_state.json"
CHECKSUMS = "checksums.json"
SEP = "::"


@dataclass
class TrainState:
    step: int = 0  # optimizer steps done
    epoch: int = 0  # epoch of the next micro-batch
    batch_in_epoch: int = 0  # micro-batches of that epoch already consumed by each worker
    config_hash: str = ""
    metrics: dict = field(default_factory=dict)  # the latest reported metrics


def flatten_optimizer_state(osd: dict) -> tuple[dict[str, torch.Tensor], dict]:
    """A name-keyed optimizer state dict -> (tensors for safetensors, JSON-able rest)."""
    tensors, scalars = {}, {}
    for name, state in osd["state"].items():
        for k, v in state.items():
            if isinstance(v, torch.Tensor):
                tensors[f"{name}{SEP}{k}"] = v.detach().cpu().contiguous()
            else:
                scalars.setdefault(name, {})[k] = v
    return tensors, {"param_groups": osd["param_groups"], "scalars": scalars}


def unflatten_optimizer_state(tensors: dict[str, torch.Tensor], meta: dict) -> dict:
    state: dict[str, dict] = {}
    for key, v in tensors.items():
        name, _, k = key.rpartition(SEP)
        state.setdefault(name, {})[k] = v
    for name, extra in meta["scalars"].items():
        state.setdefault(name, {}).update(extra)
    return {"state": state, "param_groups": meta["param_groups"]}


def save_train_state(directory: Path, optimizer_state: dict, scheduler_state: dict, state: TrainState) -> None:
    tensors, meta = flatten_optimizer_state(optimizer_state)
    save_file(tensors, str(directory / OPTIMIZER_FILE))
    sched = {k: v for k, v in scheduler_state.items() if k != "lr_lambdas"}  # lambdas are rebuilt from the config
    payload = {"state": asdict(state), "optimizer": meta, "scheduler": sched}
    (directory / STATE_FILE).write_text(json.dumps(payload, indent=2))


def load_train_state(directory: Path) -> tuple[dict, dict, TrainState]:
    """-> (optimizer state dict keyed by parameter name, scheduler state, TrainState)."""
    payload = json.loads((directory / STATE_FILE).read_text())
    osd = unflatten_optimizer_state(load_file(str(directory / OPTIMIZER_FILE)), payload["optimizer"])
    return osd, payload["scheduler"], TrainState(**payload["state"])


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(2**20):
            h.update(block)
    return h.hexdigest()


def write_checksums(directory: Path) -> None:
    """SHA-256 of every file under ``directory`` (after all of them are written)."""
    files = sorted(p for p in directory.rglob("*") if p.is_file() and p.name != CHECKSUMS)
    sums = {str(p.relative_to(directory)): _sha256(p) for p in files}
    (directory / CHECKSUMS).write_text(json.dumps(sums, indent=1))


class DamagedCheckpoint(RuntimeError):
    pass


def verify_checkpoint(directory: Path) -> None:
    """DamagedCheckpoint naming what is missing or differs; a checkpoint without checksums.json (written
    before they existed) must at least hold its state file."""
    sums_file = directory / CHECKSUMS
    if not sums_file.is_file():
        if not (directory / STATE_FILE).is_file():
            raise DamagedCheckpoint(f"{directory} has neither {CHECKSUMS} nor {STATE_FILE}: incomplete")
        return
    try:
        sums = json.loads(sums_file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DamagedCheckpoint(f"{directory}/{CHECKSUMS} is damaged: {e}") from None
    bad = [name for name, digest in sums.items()
           if not (directory / name).is_file() or _sha256(directory / name) != digest]
    if bad:
        raise DamagedCheckpoint(f"{directory}: {', '.join(bad)} missing or not as written (SHA-256 differs)")
