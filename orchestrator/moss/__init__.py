"""The MoSS method: modality-specialized LoRA layers for interleaved VLGs (no Ray, no MLflow here).

Names load on first use (PEP 562), so ``orchestrator.moss.layout`` / ``.config`` do not import PEFT:
data workers that only tokenize start faster.
"""

from importlib import import_module

_EXPORTS = {
    "MossConfig": "config", "trainable_params_per_layer": "config",
    "MossContext": "layers", "MossLinear": "layers", "causal_conv2d": "conv",
    "Variant": "variants", "register_variant": "variants", "get_variant": "variants", "variant_names": "variants",
    "ImageLayout": "layout", "ImageSegment": "layout", "RoutingPlan": "layout", "build_routing_plan": "layout",
    "AdapterLoadError": "peft", "apply_moss": "peft", "expected_trainable_parameters": "peft",
    "load_adapter": "peft", "save_adapter": "peft", "set_layout": "peft", "trainable_parameters": "peft",
    "unwrap": "peft", "routed_step": "peft", "recording_groups": "peft", "ConvCache": "cache", "Route": "cache",
    "TEXT": "cache",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(import_module(f".{_EXPORTS[name]}", __name__), name)
    globals()[name] = value
    return value
