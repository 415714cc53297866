"""What a checkpoint weighs, from a meta-device build of its config (exact counts, no weights loaded).

The config comes from the spec's random preset, from ``hub_checkpoints`` (published sizes, no network),
from a local folder's config.json, or from the hub's config.json alone. Trainable parameters follow the
closed form of ``trainable_params_per_layer`` over the adapted linears (tests check it equals PEFT's count).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from functools import lru_cache

import torch
from torch import nn

from ..backbones import get_backbone
from ..backbones import BackboneSpec, ImageBudget


@dataclass(frozen=True)
class ModelShape:
    """The numbers the memory estimate needs, read off one meta-device build."""

    params: int  # every parameter of the base model
    layer_params: int  # in the decoder layers (FSDP's sharded units)
    max_layer_params: int  # the largest decoder layer (FSDP gathers one or two at a time)
    layers: int
    hidden: int
    intermediate: int
    head_vocab: int  # the widest output head the loss computes logits over
    positions: int | None  # the language model's position limit
    targets: tuple[tuple[int, int], ...]  # (d_in, d_out) of each adapted linear, every layer
    image: ImageBudget
    image_head_rows: int  # image-code rows an adapter can train in the output head (0: none)
    source: str  # where the config came from, in words

    @property
    def root_params(self) -> int:
        """Everything outside the decoder layers: embeddings, heads, vision tower, VQ, norms."""
        return self.params - self.layer_params


def trainable_parameters(shape: ModelShape, moss_cfg) -> int:
    """Adapter parameters of a MossConfig on this model (closed form; + trained head rows)."""
    from ..moss.config import match_parameters, trainable_params_per_layer

    moss_cfg = match_parameters(moss_cfg, shape.targets)  # ValueError: match_params out of reach (a config problem)
    n = sum(trainable_params_per_layer(moss_cfg, d_in, d_out) for d_in, d_out in shape.targets)
    if moss_cfg.train_image_head:
        n += shape.image_head_rows * shape.hidden
    return n


class SizingError(ValueError):
    """The checkpoint's config could not be read (offline, or not a checkpoint of this family)."""


def model_shape(backbone: str, checkpoint: str, options: tuple = (), target_modules: str | None = None) -> ModelShape:
    """The shape of ``checkpoint`` with adapters on ``target_modules`` (default: the backbone's projections);
    cached per arguments, failures too (per hub endpoint: an unreachable hub is asked once)."""
    key = (backbone, checkpoint, tuple(sorted(options)), target_modules,
           os.environ.get("HF_ENDPOINT"), os.environ.get("HF_HUB_OFFLINE"))
    if key in _FAILED:
        raise _FAILED[key]
    try:
        return _shape(*key[:4])
    except SizingError as e:
        _FAILED[key] = e
        raise


_FAILED: dict[tuple, SizingError] = {}


@lru_cache(maxsize=64)
def _shape(backbone: str, checkpoint: str, options: tuple, target_modules: str | None) -> ModelShape:
    spec = get_backbone(backbone, checkpoint, **dict(options))
    config, source = model_config(spec)
    with torch.device("meta"):
        model = spec.model_class(config)
    return read_shape(spec, model, config, source, target_modules)


def model_config(spec: BackboneSpec):
    """(config, where it came from) without weights: preset, published size, local folder or hub."""
    if spec.is_random:
        return spec.random_config(), f"random preset {spec.checkpoint!r}"
    known = spec.hub_checkpoints.get(spec.checkpoint)
    if known is not None:
        return spec.real_size_config(known.size), f"published size {known.size}"
    try:
        own = spec.size_config()  # a family whose published configs need code not run here
    except ValueError as e:
        raise SizingError(str(e)) from None
    if own is not None:
        return own
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(spec.checkpoint, **spec.hub)
    except Exception as e:  # offline, gated, missing, not a config
        raise SizingError(f"cannot read the config of {spec.checkpoint}: {type(e).__name__}: {str(e)[:200]}") from None
    where = "local config.json" if os.path.isdir(spec.checkpoint) else "the hub's config.json"
    return config, where


def read_shape(spec: BackboneSpec, model: nn.Module, config, source: str, target_modules: str | None = None) -> ModelShape:
    layers = spec.decoder_layers(model)
    per_layer = [sum(p.numel() for p in layer.parameters()) for layer in layers]
    targets, hidden, intermediate = [], 0, 0
    pattern = target_modules or spec.target_modules
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear) and re.fullmatch(pattern, name):
            targets.append((module.in_features, module.out_features))
        if re.fullmatch(spec.target_modules, name):  # the decoder's own widths, whatever is adapted
            if name.endswith("q_proj"):
                hidden = module.in_features
            if name.endswith("up_proj"):
                intermediate = module.out_features
    in_layers = {id(m) for m in layers.modules()}
    heads = [m.out_features for m in model.modules() if isinstance(m, nn.Linear) and id(m) not in in_layers]
    rows = _image_rows(spec, config) if spec.image_head_module is not None else 0
    return ModelShape(
        params=sum(p.numel() for p in model.parameters()), layer_params=sum(per_layer), max_layer_params=max(per_layer),
        layers=len(layers), hidden=hidden, intermediate=intermediate, head_vocab=max(heads, default=0),
        positions=spec.position_limit(config), targets=tuple(targets), image=spec.image_budget(config),
        image_head_rows=rows, source=source)


def _image_rows(spec, config) -> int:
    """Image-code rows of the head, from the config's code -> id map (the spec's own would fetch a config)."""
    vmap = getattr(config, "vocabulary_map", None)
    return len(spec.vocab_mapping_class(vmap).image_tokens) if vmap else 0
