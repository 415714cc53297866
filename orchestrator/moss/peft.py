"""apply_moss / save_adapter / load_adapter, and how each forward's image layout reaches the layers.

``lora`` (a shared-branch variant) is PEFT's own LoRA. The others register MossLinear for nn.Linear through
PEFT's custom-module dispatch (``LoraConfig._register_custom_module``). PEFT keeps no record of that
class in ``adapter_config.json`` and silently drops unknown tensors on load, so the MoSS settings
go to ``moss_config.json`` and ``load_adapter`` re-registers the class and checks every tensor.
"""

from __future__ import annotations

import contextlib
import functools
import re
from pathlib import Path

import torch
from peft import LoraConfig, PeftModel, get_peft_model, set_peft_model_state_dict
from peft.tuners.lora import LoraLayer
from safetensors.torch import load_file
from torch import nn

from ..wrappers import unwrap
from .cache import Route
from .config import MossConfig, match_parameters, trainable_params_per_layer
from .layers import MossContext, MossLinear
from .layout import ImageLayout, build_routing_plan
from .variants import get_variant

ADAPTER_WEIGHTS = "adapter_model.safetensors"
FORMAT_VERSION = 1


class AdapterLoadError(RuntimeError):
    """An adapter directory does not match the adapter it is loaded into."""


def moss_context(model: nn.Module) -> MossContext | None:
    return getattr(unwrap(model), "moss_context", None)


def set_layout(model: nn.Module, layout: ImageLayout) -> None:
    """Give the next forward of ``model`` its image layout explicitly (no-op for plain LoRA).

    Needed when the decoder is called with ``inputs_embeds`` (Janus image codes); with ``input_ids``
    the layout is derived from the ids by a pre-forward hook. The routing plan then stays in place
    until the next forward, so activation-checkpoint recomputation during backward sees it too.
    """
    ctx = moss_context(model)
    if ctx is not None:
        ctx.pending_layout = layout


@contextlib.contextmanager
def routed_step(model: nn.Module, routes: list[Route]):
    """Route the one forward inside this block, one new token per sequence (batch row), by ``routes`` (the
    text branch, or a cell of an image, through the conv cache) instead of deriving a layout from ids.
    No-op for plain LoRA."""
    from .step import StepPlan

    ctx = moss_context(model)
    if ctx is None:
        yield None
        return
    ctx.step = StepPlan(list(routes), ctx.conv_cache, next(unwrap(model).parameters()).device)
    try:
        yield ctx
    finally:
        ctx.step = None


@contextlib.contextmanager
def recording_groups(model: nn.Module):
    """Record, over the forward inside this block, which MoSS layers read one input (moss/step.py), unless
    known already. No-op for plain LoRA."""
    ctx = moss_context(model)
    if ctx is None or ctx.groups.of:
        yield
        return
    ctx.groups.recording = True
    try:
        yield
    finally:
        ctx.groups.stop()


def _cache_is_warm(kwargs) -> bool:
    cache = kwargs.get("cache", kwargs.get("past_key_values"))
    return cache is not None and hasattr(cache, "get_seq_length") and cache.get_seq_length() > 0


def _ids_of(args, kwargs):
    return kwargs.get("input_ids", args[0] if args and isinstance(args[0], torch.Tensor) else None)


class _LayoutHooks:
    """Derive each forward's layout from input_ids unless set_layout gave one; check it fits."""

    def __init__(self, spec, ctx: MossContext):
        self.spec, self.ctx = spec, ctx

    def install(self, base: nn.Module) -> None:
        ids_module, decoder = self.spec.layout_modules(base)
        ids_module.register_forward_pre_hook(self.stash, with_kwargs=True)
        decoder.register_forward_pre_hook(self.consume, with_kwargs=True)

    def derive(self, ids: torch.Tensor) -> ImageLayout:
        if not self.ctx.config.image_inputs:
            raise RuntimeError(
                "image_inputs=False needs to know which images are prompt images: pass the layout "
                "explicitly with orchestrator.moss.set_layout (orchestrator.training.objective.adapter_loss does)"
            )
        return self.spec.image_layout(ids)

    def check_text_step(self, ids: torch.Tensor) -> None:
        if bool(self.spec.is_image_target(ids).any()):
            raise RuntimeError(
                "incremental (KV-cache) decoding of image tokens needs the conv cache, which only a routed "
                "step has: decode with orchestrator.evaluation.decoding.IncrementalDecoder (moss generate), "
                "or generate with use_cache=False"
            )
        self.ctx.text_step = True

    def stash(self, module, args, kwargs):  # sees input_ids: derive the layout unless one was set explicitly
        ctx, ids = self.ctx, _ids_of(args, kwargs)
        if ids is None or ctx.pending_layout is not None or ctx.step is not None:
            return
        if _cache_is_warm(kwargs):
            self.check_text_step(ids)
        else:
            ctx.pending_layout = self.derive(ids)

    def consume(self, module, args, kwargs):  # right before the decoder layers run
        ctx = self.ctx
        layout, ctx.pending_layout = ctx.pending_layout, None
        text_step, ctx.text_step = ctx.text_step, False
        ids = _ids_of(args, kwargs)
        ref = ids if ids is not None else kwargs.get("inputs_embeds")
        if ctx.step is not None:  # a routed incremental step (routed_step): the layers use the conv cache
            self.routed_step(layout, ref)
        elif layout is None and _cache_is_warm(kwargs):
            self.cached_text_step(ids, text_step)
        else:
            ctx.plan = self.plan(layout, ids, ref)

    def routed_step(self, layout, ref) -> None:
        if layout is not None:
            raise RuntimeError("set_layout and routed_step were both given for one forward")
        n = self.ctx.step.batch_size
        if ref is not None and tuple(ref.shape[:2]) != (n, 1):
            raise RuntimeError(f"a routed MoSS step takes one token of each of its {n} sequence(s), "
                               f"got {tuple(ref.shape[:2])}")
        self.ctx.plan = None

    def cached_text_step(self, ids, text_step: bool) -> None:
        if ids is not None:
            self.check_text_step(ids)
        elif not text_step:
            raise RuntimeError(
                "a KV-cache step fed by inputs_embeds may be an image token, which needs the conv cache "
                "this version does not have: generate with use_cache=False"
            )
        self.ctx.plan = None  # new text tokens after the prompt: the text branch alone is exact

    def plan(self, layout, ids, ref):
        if layout is None:
            if ids is None:
                raise RuntimeError(
                    "MoSS cannot tell image positions from inputs_embeds: call "
                    "orchestrator.moss.set_layout(model, layout) before this forward"
                )
            layout = self.derive(ids)
        if ref is not None and (layout.batch_size, layout.seq_len) != tuple(ref.shape[:2]):
            raise RuntimeError(
                f"the MoSS layout is for {layout.batch_size}x{layout.seq_len} tokens but this forward has "
                f"{tuple(ref.shape[:2])}: set_layout must describe the very next forward"
            )
        return build_routing_plan(layout, self.ctx.config.image_inputs, device=ref.device if ref is not None else None)


def lora_config_for(config: MossConfig, spec) -> LoraConfig:
    return LoraConfig(
        r=config.rank,
        lora_alpha=config.alpha,
        lora_dropout=config.dropout,
        target_modules=config.target_modules or spec.target_modules,
        bias="none",
        trainable_token_indices=image_head_rows(config, spec),
    )


#: the name PEFT gives the trainable rows of a head (TrainableTokensLayer)
HEAD_ROWS = "trainable_tokens_delta"


def image_head_rows(config: MossConfig, spec) -> dict[str, list[int]] | None:
    """{head module: the image-code row ids} when ``train_image_head`` is on (PEFT trainable tokens)."""
    if not config.train_image_head:
        return None
    if spec.image_head_module is None:
        raise ValueError(f"train_image_head: {spec.name} predicts images with a head of its own (no image-code rows "
                         "in lm_head to train)")
    return {spec.image_head_module: spec.image_token_ids.tolist()}


def is_adapter_tensor(name: str) -> bool:
    """A tensor an adapter trains and saves: the LoRA / MoSS branches, and trainable head rows."""
    return ".lora_" in name or HEAD_ROWS in name


def target_dims(model: nn.Module, config: MossConfig, spec) -> list[tuple[int, int]]:
    """(d_in, d_out) of every linear layer the adapter wraps."""
    pattern = config.target_modules or spec.target_modules
    return [(m.in_features, m.out_features) for name, m in unwrap(model).named_modules()
            if re.fullmatch(pattern, name) and hasattr(m, "in_features")]


def apply_moss(model: nn.Module, config: MossConfig, spec) -> PeftModel:
    """Wrap the language model's projections of ``model`` with the adapter ``config`` describes (with
    ``match_params``, its image rank solved on this model's layers first: see ``base.moss_config``)."""
    config = match_parameters(config, target_dims(model, config, spec))
    lora_cfg = lora_config_for(config, spec)
    ctx = None
    if not get_variant(config.variant).shared_branch:
        ctx = MossContext(config)
        lora_cfg._register_custom_module({nn.Linear: functools.partial(MossLinear, moss_context=ctx)})
    peft_model = get_peft_model(model, lora_cfg)
    wrapped = [n for n, m in peft_model.get_base_model().named_modules() if isinstance(m, LoraLayer)]
    expected = spec.expected_target_count(model) if config.target_modules is None else None
    if not wrapped or (expected is not None and len(wrapped) != expected):
        raise ValueError(
            f"{spec.name}: target regex {lora_cfg.target_modules!r} wrapped {len(wrapped)} modules, "
            f"expected {expected} (decoder layers x 7)"
        )
    base = peft_model.get_base_model()
    base.moss_config = config
    base.moss_backbone = spec.name
    if ctx is not None:
        base.moss_context = ctx
        _LayoutHooks(spec, ctx).install(base)
    return peft_model


def save_adapter(model: nn.Module, directory: str | Path, state_dict: dict | None = None) -> Path:
    """Write PEFT's adapter files (safetensors) and moss_config.json to ``directory``.

    ``state_dict``: the PeftModel's adapter tensors gathered elsewhere (e.g. unsharded from FSDP);
    by default they are read from ``model``.
    """
    directory = Path(directory)
    peft_model = model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model
    if not isinstance(peft_model, PeftModel):
        raise TypeError("save_adapter expects the PeftModel returned by apply_moss / load_adapter")
    peft_model.save_pretrained(directory, safe_serialization=True, state_dict=state_dict)
    base = peft_model.get_base_model()
    base.moss_config.save(directory, backbone=base.moss_backbone, format_version=FORMAT_VERSION)
    return directory


def load_adapter(base_model: nn.Module, directory: str | Path, spec, *, is_trainable: bool = False) -> PeftModel:
    """Rebuild the adapter saved in ``directory`` on ``base_model``; raise unless every tensor loads.

    PEFT's own loader silently drops tensors of layers it does not know (every ``lora_img_*`` when
    the MoSS class is not registered); here unused or missing tensors are an AdapterLoadError.
    ``base_model`` is wrapped in place, also when the load then fails.
    """
    directory = Path(directory)
    config, extra = MossConfig.load(directory)
    if extra.get("format_version") != FORMAT_VERSION:
        raise AdapterLoadError(f"{directory}: format_version {extra.get('format_version')!r}, expected {FORMAT_VERSION}")
    if extra.get("backbone") != spec.name:
        raise AdapterLoadError(f"{directory} holds a {extra.get('backbone')!r} adapter, not {spec.name!r}")
    weights = directory / ADAPTER_WEIGHTS
    if not weights.is_file():
        raise AdapterLoadError(f"{weights} not found (adapters load only from safetensors)")
    state = load_file(str(weights))
    peft_model = apply_moss(base_model, config, spec)
    try:
        result = set_peft_model_state_dict(peft_model, state)
    except RuntimeError as err:  # size mismatch
        raise AdapterLoadError(f"{directory}: tensors do not fit a {config.variant} adapter: {err}") from err
    missing = [k for k in result.missing_keys if is_adapter_tensor(k)]
    if result.unexpected_keys or missing:
        raise AdapterLoadError(
            f"{directory} does not match a {config.variant} adapter (conv_space={config.conv_space}): "
            f"{len(result.unexpected_keys)} saved tensors would be unused (e.g. {result.unexpected_keys[:3]}), "
            f"{len(missing)} adapter tensors would stay uninitialised (e.g. {missing[:3]})"
        )
    for n, p in peft_model.named_parameters():
        p.requires_grad_(is_trainable and is_adapter_tensor(n))
    if not is_trainable:
        peft_model.eval()
    return peft_model


def trainable_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def expected_trainable_parameters(model: nn.Module, config: MossConfig, spec) -> int:
    """The closed-form count (see trainable_params_per_layer) summed over the targeted linears."""
    dims = target_dims(model, config, spec)
    config = match_parameters(config, dims)
    total = sum(trainable_params_per_layer(config, d_in, d_out) for d_in, d_out in dims)
    rows = image_head_rows(config, spec)
    if rows:  # one row of the head's input width per image code
        head = unwrap(model).get_submodule(spec.image_head_module)
        total += sum(len(ids) for ids in rows.values()) * head.weight.shape[1]
    return total
