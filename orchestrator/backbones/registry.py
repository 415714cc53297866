"""The one list of backbones: name -> the spec class, imported on first use.

Torch-free, so run configs (validated in data workers too) can check ``backbone.name`` against it. A new
backbone is its module plus one entry in ``_REGISTRY`` below, or a ``register_backbone`` call from your own
code (docs/extending.md).
"""

from __future__ import annotations

from importlib import import_module

#: name -> "module:Class" (a module of this package) or the class itself (registered at run time)
_REGISTRY: dict[str, object] = {
    "chameleon": "chameleon:ChameleonSpec",
    "anole": "chameleon:ChameleonSpec",  # Anole is Chameleon's class with image-generation weights
    "emu2": "emu2:Emu2Spec",
    "emu3": "emu3:Emu3Spec",
    "janus": "janus:JanusSpec",
}
BUILT_IN = tuple(_REGISTRY)


def register_backbone(name: str, spec_class) -> None:
    """Make ``spec_class`` (a BackboneSpec subclass) known as ``name`` to get_backbone and the run config."""
    if name in BUILT_IN:
        raise ValueError(f"backbone {name!r} is built in")
    own = getattr(spec_class, "name", None)
    if own != name:
        raise ValueError(f"{spec_class.__name__}.name is {own!r}: register it under that name")
    _REGISTRY[name] = spec_class


def unregister_backbone(name: str) -> None:
    if name in BUILT_IN:
        raise ValueError(f"backbone {name!r} is built in")
    _REGISTRY.pop(name, None)


def backbone_names() -> tuple[str, ...]:
    return tuple(_REGISTRY)


def families() -> tuple[str, ...]:
    """One name per spec class (chameleon, not also its alias anole): what tests and benchmarks cover."""
    seen, out = set(), []
    for name, ref in _REGISTRY.items():
        if ref not in seen:
            seen.add(ref)
            out.append(name)
    return tuple(out)


def spec_class(name: str):
    """The spec class registered as ``name`` (imports its module)."""
    try:
        ref = _REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown backbone {name!r}; known: {sorted(_REGISTRY)}") from None
    if isinstance(ref, str):
        module, cls = ref.split(":")
        return getattr(import_module(f"{__package__}.{module}"), cls)
    return ref


def get_backbone(name: str, checkpoint: str = "tiny", **options):
    """The BackboneSpec ``name`` bound to ``checkpoint``. ``options``: backbone-specific settings (emu2:
    ``regression="mse" | "cosine"``; emu3: ``min_pixels``, ``max_pixels``) and, for every family, ``revision``
    (the hub commit every load asks for) and ``trust_remote_code``."""
    return spec_class(name)(checkpoint, **options)


def backbone_from_config(cfg):
    """The spec a run config describes (its ``backbone`` section)."""
    b = cfg.backbone
    return get_backbone(b.name, b.checkpoint, **b.options())
