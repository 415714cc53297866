"""Registry of VLG backbones: ``get_backbone(name, checkpoint="tiny") -> BackboneSpec``."""

from __future__ import annotations

from .base import IGNORE_INDEX, TINY, BackboneSpec, LossOutput, unwrap
from .chameleon import ChameleonSpec
from .emu2 import Emu2Spec
from .emu3 import Emu3Spec
from .janus import JanusSpec

BACKBONES: dict[str, type[BackboneSpec]] = {
    "chameleon": ChameleonSpec,
    "anole": ChameleonSpec,  # Anole is Chameleon's class with image-generation weights
    "emu2": Emu2Spec,
    "emu3": Emu3Spec,
    "janus": JanusSpec,
}


def get_backbone(name: str, checkpoint: str = TINY, **options) -> BackboneSpec:
    """``options``: backbone-specific settings (emu2: ``regression="mse" | "cosine"``; emu3: ``min_pixels``,
    ``max_pixels``) and, for every family, ``revision`` (the hub commit every load asks for) and
    ``trust_remote_code``."""
    try:
        cls = BACKBONES[name]
    except KeyError:
        raise ValueError(f"unknown backbone {name!r}; known: {sorted(BACKBONES)}") from None
    return cls(checkpoint, **options)


def backbone_from_config(cfg) -> BackboneSpec:
    """The spec a run config describes (its ``backbone`` section)."""
    b = cfg.backbone
    return get_backbone(b.name, b.checkpoint, **b.options())


__all__ = ["BACKBONES", "backbone_from_config", "IGNORE_INDEX", "BackboneSpec", "LossOutput", "get_backbone", "unwrap"]
