"""MossLinear: a PEFT LoRA layer with a text branch and an image branch.

MoSS (Xu et al., "Modality-Specialized Synergizers for Interleaved Vision-Language Generalists",
ICLR 2025): text positions get a linear LoRA (PEFT's own ``lora_A``/``lora_B``); image positions get the
branch the adapter's variant builds (variants.py): a second linear LoRA (``moe_lora``) or a causal
convolutional LoRA over the image's 2D token grid (``moss``, conv.py). The layer only routes: it asks the
variant for the image branch's rank-space activations and adds ``[B_text | B_image]`` in one fused op.
"""

from __future__ import annotations

from typing import Any

import torch
from peft.tuners.lora.layer import LoraLayer
from torch import nn

from .cache import ConvCache
from .config import MossConfig
from .layout import RoutingPlan
from .step import StepGroups, StepPlan, group_step
from .variants import Variant, get_variant


class MossContext:
    """Per-model state every MossLinear reads: the routing plan of the current forward.

    It is set before the decoder runs and kept until the next forward, so activation checkpointing
    (which recomputes layers during backward) sees the same plan. Incremental (KV-cache) decoding
    sets ``step`` instead: the route of each sequence's one new token (step.py), with ``conv_cache``
    holding what the image branch needs of the images being decoded (cache.py) and ``groups`` the
    layers that share an input.
    """

    def __init__(self, config: MossConfig):
        self.config = config
        self.plan: RoutingPlan | None = None
        self.pending_layout = None  # an explicit layout for the next forward (set_layout)
        self.text_step = False  # a KV-cache step whose new ids were checked to be text
        self.step: StepPlan | None = None  # the routes of a one-token-per-sequence incremental forward
        self.conv_cache = ConvCache(config.kernel_size if get_variant(config.variant).uses_conv else 1)
        self.groups = StepGroups()

    def new_session(self) -> None:
        """A new decoding session: empty conv cache, the adapter's current weights, no layout left pending."""
        self.conv_cache.clear()
        self.groups.clear_state()
        self.pending_layout, self.step = None, None


class MossLinear(nn.Module, LoraLayer):
    """LoRA on nn.Linear with modality routing; see the module docstring."""

    adapter_layer_names = LoraLayer.adapter_layer_names + ("lora_img_A", "lora_img_conv", "lora_img_B")

    def __init__(
        self,
        base_layer: nn.Module,
        adapter_name: str,
        config,
        r: int = 0,
        lora_alpha: float = 1,
        *,
        moss_context: MossContext,
        **kwargs: Any,
    ) -> None:
        super().__init__()
        LoraLayer.__init__(self, base_layer, **kwargs)
        self.moss_context = moss_context
        self.lora_img_A = nn.ModuleDict({})
        self.lora_img_conv = nn.ModuleDict({})
        self.lora_img_B = nn.ModuleDict({})
        self.fan_in_fan_out = False
        self._active_adapter = adapter_name
        self.update_layer(adapter_name, r, lora_alpha=lora_alpha, config=config, **kwargs)

    @property
    def moss(self) -> MossConfig:
        return self.moss_context.config

    @property
    def variant(self) -> Variant:
        return get_variant(self.moss.variant)

    def update_layer(self, adapter_name: str, r: int, lora_alpha: float, config, **kwargs: Any) -> None:
        super().update_layer(adapter_name, r, lora_alpha=lora_alpha, config=config, **kwargs)  # text branch
        ri = self.moss.image_r  # the image branch's rank (image_rank; by default the text rank r)
        self.variant.build(self, adapter_name, self.moss, ri)  # the image branch's A / conv, as the variant needs
        self.lora_img_B[adapter_name] = nn.Linear(ri, self.out_features, bias=False)
        nn.init.zeros_(self.lora_img_B[adapter_name].weight)  # fresh adapter == base model
        self._move_adapter_to_device_of_base_layer(adapter_name)
        self.set_adapter(self.active_adapters, inference_mode=config.inference_mode)

    def merge(self, safe_merge: bool = False, adapter_names=None) -> None:
        raise RuntimeError(
            f"a {self.moss.variant} adapter cannot be merged into the base weights: its image branch applies "
            "only at image-token positions (and may mix neighbouring tokens, as moss's conv does), which no single "
            "weight matrix can express. Keep the adapter unmerged, or use unload() to get the base model back."
        )

    def _rank_space(self, name: str, x: torch.Tensor, plan: RoutingPlan | None) -> tuple[torch.Tensor, torch.Tensor]:
        """(z, W) with adapter output = z @ W.T: z (N, r | r + r_img) per token, W (d_out, r | r + r_img).

        With images, z = [text-branch z masked to text positions | image-branch z masked to image
        cells] and W = [B_text | B_image], so no d_out-wide tensor is gathered, scattered or masked;
        the only d_in-wide gather is moss-full's conv input.
        """
        flat = self.lora_dropout[name](x).reshape(-1, x.shape[-1])  # (N = B*T, d_in)
        if plan is None or plan.num_image_positions == 0:
            return self.lora_A[name](flat), self.lora_B[name].weight
        if tuple(x.shape[:-1]) != (plan.batch_size, plan.seq_len):
            raise RuntimeError(
                f"MoSS routing plan is for {plan.batch_size}x{plan.seq_len} tokens but the layer got "
                f"{tuple(x.shape[:-1])}: the layout was not refreshed for this forward (see orchestrator.moss.set_layout)"
            )
        z_text = self.lora_A[name](flat)
        z_text = z_text * plan.text_weight(z_text.dtype)  # (N, r), zero at image cells
        z_img = self.variant.image_rank_space(self, name, flat, plan).to(z_text.dtype)  # (N, r), zero at text positions
        w = torch.cat([self.lora_B[name].weight, self.lora_img_B[name].weight], dim=1)  # (d_out, 2r)
        return torch.cat([z_text, z_img], dim=1), w

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        self._check_forward_args(x, *args, **kwargs)
        result = self.base_layer(x, *args, **kwargs)
        if self.disable_adapters:
            return result
        ctx = self.moss_context
        if ctx.step is not None:
            return self._step_forward(x, result, ctx)
        if ctx.groups.recording:
            ctx.groups.record(self, x)
        plan = ctx.plan
        for name in self.active_adapters:
            if name not in self.lora_A:
                continue
            # under autocast the adapter's matmuls run in the autocast dtype whatever x is: casting x up to the
            # (fp32) adapter weights first would only keep one more copy of it alive for the backward pass
            autocast = torch.is_autocast_enabled(x.device.type)
            xa = x if autocast else self._cast_input_dtype(x, self.lora_A[name].weight.dtype)
            z, w = self._rank_space(name, xa, plan)
            result = _add(result.reshape(-1, result.shape[-1]), z, w, self.scaling[name]).view(result.shape)
        return result

    def _step_forward(self, x: torch.Tensor, result: torch.Tensor, ctx: MossContext) -> torch.Tensor:
        """One token per sequence (ctx.step): the group's first layer computes every layer's activations."""
        if self.training:
            raise RuntimeError("cached MoSS decoding runs in eval mode (no dropout): call model.eval() first")
        plan = ctx.step
        group, index = ctx.groups.group_of(self)
        flat = result.reshape(-1, result.shape[-1])
        for name in self.active_adapters:
            if name not in self.lora_A:
                continue
            if index == 0:
                autocast = torch.is_autocast_enabled(x.device.type)
                group.x = x
                group_step(self.variant, group, name, x if autocast else self._cast_input_dtype(x, self.lora_A[name].weight.dtype), plan)
            elif x is not group.x:
                raise RuntimeError("layers that read one input in the recorded forward got different inputs in a step")
            z_text, z_img = group.out[name][index]
            s = self.scaling[name]
            if z_img is None:
                flat = _add(flat, z_text, self.lora_B[name].weight, s)
            elif z_text is None:
                flat = _add(flat, z_img, self.lora_img_B[name].weight, s)
            else:  # a mixed step: text rows through B_text, image cells through B_image
                flat = _add(flat, z_text * plan.text_weight(z_text.dtype), self.lora_B[name].weight, s)
                delta = (z_img @ self.lora_img_B[name].weight.t()).to(flat.dtype)
                flat = flat.index_add(0, plan.image_rows, delta, alpha=s)
        return flat.view(result.shape)

    def __repr__(self) -> str:
        return f"moss.{self.moss.variant}." + super().__repr__()


def _add(flat: torch.Tensor, z: torch.Tensor, w: torch.Tensor, scaling: float) -> torch.Tensor:
    """flat + scaling * z @ w.T, in one fused op when the dtypes agree."""
    if z.dtype == flat.dtype:
        return torch.addmm(flat, z, w.t(), alpha=scaling)
    return flat + (z @ w.t() * scaling).to(flat.dtype)
