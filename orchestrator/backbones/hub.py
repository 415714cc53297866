"""Published checkpoints: what is known of one without downloading it, and loading one submodule's weights."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class HubCheckpoint:
    """What is known of a published checkpoint without downloading it: its size in ``real_sizes``, and
    either why it cannot load (``error``: a format that is not a transformers checkpoint) or a caveat."""

    size: str
    error: str | None = None
    warning: str | None = None


def language_config(config):
    """The language model's part of a config (``text_config`` of composite configs, else the config)."""
    return getattr(config, "text_config", None) or config


def load_submodule(checkpoint: str, model_class, get_sub, prefixes: tuple[str, ...], revision: str | None = None) -> nn.Module:
    """Load one submodule (e.g. the VQ) of a checkpoint without loading the language model weights.

    Saved key layouts differ from module names (transformers 5 converts some on save, e.g. Emu3 writes
    ``vqmodel.*`` for ``model.vqmodel.*``), so the first prefix present in the checkpoint is used.
    """
    from safetensors import safe_open
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(checkpoint, revision=revision)
    with torch.device("meta"):
        shell = model_class(config)
    sub = get_sub(shell)
    keys = _weight_index(checkpoint, revision)
    prefix = next((p for p in prefixes if any(k.startswith(p) for k in keys)), None)
    if prefix is None:
        raise KeyError(f"no weights under any of {prefixes} in {checkpoint}")
    state = {}
    for name in sorted({f for k, f in keys.items() if k.startswith(prefix)}):
        with safe_open(checkpoint_file(checkpoint, name, revision), framework="pt") as f:
            state.update({k[len(prefix) :]: f.get_tensor(k) for k in f.keys() if k.startswith(prefix)})
    sub.load_state_dict(state, strict=True, assign=True)
    return sub


def checkpoint_file(checkpoint: str, name: str, revision: str | None = None) -> str | None:
    if os.path.isdir(checkpoint):
        p = os.path.join(checkpoint, name)
        return p if os.path.exists(p) else None
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError

    try:
        return hf_hub_download(checkpoint, name, revision=revision)
    except EntryNotFoundError:
        return None


def _weight_index(checkpoint: str, revision: str | None = None) -> dict[str, str]:
    """Tensor name -> safetensors file name, for a single-file or sharded checkpoint."""
    index = checkpoint_file(checkpoint, "model.safetensors.index.json", revision)
    if index is not None:
        return json.loads(open(index).read())["weight_map"]
    single = checkpoint_file(checkpoint, "model.safetensors", revision)
    if single is None:
        raise FileNotFoundError(f"{checkpoint}: no model.safetensors(.index.json)")
    from safetensors import safe_open

    with safe_open(single, framework="pt") as f:
        return {k: "model.safetensors" for k in f.keys()}
