"""The transformers model under the wrappers training puts around it (PEFT, DDP), found without importing PEFT."""

from __future__ import annotations

from torch import nn


def unwrap(model: nn.Module) -> nn.Module:
    """The innermost model: DDP's ``.module`` and PEFT's ``get_base_model()`` peeled off, in any order."""
    while True:
        if isinstance(model, nn.parallel.DistributedDataParallel):
            model = model.module
        elif callable(getattr(model, "get_base_model", None)):
            model = model.get_base_model()
        else:
            return model
