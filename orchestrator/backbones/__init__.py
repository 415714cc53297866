"""Registry of VLG backbones: ``get_backbone(name, checkpoint="tiny") -> BackboneSpec``.

Names load on first use (PEP 562), so ``orchestrator.backbones.registry`` (what run configs validate
``backbone.name`` against) does not import torch.
"""

from __future__ import annotations

from importlib import import_module

_EXPORTS = {
    "IGNORE_INDEX": "loss", "LossOutput": "loss", "TINY": "spec", "BackboneSpec": "spec", "UnencodableError": "errors",
    "VQSpec": "vq", "ImageFrame": "frame", "ImageBudget": "frame", "HubCheckpoint": "hub",
    "backbone_names": "registry", "families": "registry", "register_backbone": "registry", "spec_class": "registry",
    "unregister_backbone": "registry", "get_backbone": "registry", "backbone_from_config": "registry",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(import_module(f".{_EXPORTS[name]}", __name__), name)
    globals()[name] = value
    return value
