"""Registry of VLG backbones: ``get_backbone(name, checkpoint="tiny") -> BackboneSpec``."""

from __future__ import annotations

from .base import IGNORE_INDEX, TINY, BackboneSpec, LossOutput, unwrap
from .chameleon import ChameleonSpec
from .emu3 import Emu3Spec
from .janus import JanusSpec

BACKBONES: dict[str, type[BackboneSpec]] = {
    "chameleon": ChameleonSpec,
    "anole": ChameleonSpec,  # Anole is Chameleon's class with image-generation weights
    "emu3": Emu3Spec,
    "janus": JanusSpec,
}


def get_backbone(name: str, checkpoint: str = TINY) -> BackboneSpec:
    try:
        cls = BACKBONES[name]
    except KeyError:
        raise ValueError(f"unknown backbone {name!r}; known: {sorted(BACKBONES)}") from None
    return cls(checkpoint)


__all__ = ["BACKBONES", "IGNORE_INDEX", "BackboneSpec", "LossOutput", "get_backbone", "unwrap"]
