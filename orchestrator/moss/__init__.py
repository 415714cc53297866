"""The MoSS method: modality-specialized LoRA layers for interleaved VLGs (no Ray, no MLflow here)."""

from .config import MossConfig, trainable_params_per_layer
from .layers import MossContext, MossLinear, causal_conv2d
from .layout import ImageLayout, ImageSegment, RoutingPlan, build_routing_plan
from .peft import (
    AdapterLoadError,
    apply_moss,
    expected_trainable_parameters,
    load_adapter,
    save_adapter,
    set_layout,
    trainable_parameters,
    unwrap,
)

__all__ = [
    "AdapterLoadError",
    "ImageLayout",
    "ImageSegment",
    "MossConfig",
    "MossContext",
    "MossLinear",
    "RoutingPlan",
    "apply_moss",
    "build_routing_plan",
    "causal_conv2d",
    "expected_trainable_parameters",
    "load_adapter",
    "save_adapter",
    "set_layout",
    "trainable_parameters",
    "trainable_params_per_layer",
    "unwrap",
]
