"""MossLinear: a PEFT LoRA layer with a text branch and an image branch.

MoSS (Xu et al., "Modality-Specialized Synergizers for Interleaved Vision-Language Generalists",
ICLR 2025): text positions get a linear LoRA (PEFT's own ``lora_A``/``lora_B``); image positions get
either a second linear LoRA (``moe_lora``) or a convolutional LoRA over the image's 2D token grid
(``moss``). Causality rule: the conv at cell (i, j) sees only cells (i', j') with i' <= i and
j' <= j (k - 1 cells of zero padding on top and left), so no output depends on a later token of the
raster order. Every image is convolved on its own grid; special tokens are never part of a grid.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from peft.tuners.lora.layer import LoraLayer
from torch import nn

from .cache import ConvCache, Step
from .config import MossConfig
from .layout import RoutingPlan


class MossContext:
    """Per-model state every MossLinear reads: the routing plan of the current forward.

    It is set before the decoder runs and kept until the next forward, so activation checkpointing
    (which recomputes layers during backward) sees the same plan. Incremental (KV-cache) decoding
    sets ``step`` instead: the one new token's route, with ``conv_cache`` holding what the image
    branch needs of the image being decoded (see cache.py).
    """

    def __init__(self, config: MossConfig):
        self.config = config
        self.plan: RoutingPlan | None = None
        self.pending_layout = None  # an explicit layout for the next forward (set_layout)
        self.text_step = False  # a KV-cache step whose new ids were checked to be text
        self.step: Step | None = None  # the route of a one-token incremental forward
        self.conv_cache = ConvCache()


def causal_conv2d(rows: torch.Tensor, weight: torch.Tensor, plan: RoutingPlan, method: str = "auto") -> torch.Tensor:
    """Causal k x k convolution over each image grid, for the image positions of a batch.

    rows:   (n_img, c_in)        image-position features, in plan order
    weight: (c_out, c_in, k, k)  as nn.Conv2d stores it
    returns (n_img, c_out), equal to F.conv2d(pad(grid, top/left k-1), weight) read back at the cells.

    Two exact methods. ``taps`` (for c_in >> c_out, the full-space conv): transform each cell once,
    c_in -> k*k*c_out (the conv's FLOPs, without an im2col copy of the wide input), then sum the
    k*k shifted narrow maps. ``conv2d``: scatter rows onto a zero canvas and run F.conv2d
    (channels-last, no copy), best when c_in is small (the low-rank conv).
    """
    c_out, c_in, k, _ = weight.shape
    if k == 1:
        return rows @ weight.view(c_out, c_in).t()
    if method == "auto":
        method = "taps" if c_in > k * k * c_out else "conv2d"
    pad = k - 1
    h, w = plan.max_h + pad, plan.max_w + pad
    if method == "conv2d":
        canvas = rows.new_zeros(plan.n_grids * h * w, c_in)
        canvas.index_copy_(0, plan.canvas_index(pad), rows)  # fresh zeros: in-place is autograd-safe
        grid = canvas.view(plan.n_grids, h, w, c_in).permute(0, 3, 1, 2)  # (G, c_in, H+pad, W+pad), channels-last
        out = F.conv2d(grid, weight).permute(0, 2, 3, 1)  # (G, H, W, c_out)
        return out.reshape(-1, c_out).index_select(0, plan.canvas_index(0))
    w_taps = weight.permute(1, 2, 3, 0).reshape(c_in, k * k * c_out)  # (c_in, k*k*c_out), tap (a, b)
    taps = rows @ w_taps  # (n_img, k*k*c_out)
    canvas = taps.new_zeros(plan.n_grids * h * w, k * k * c_out)
    canvas.index_copy_(0, plan.canvas_index(pad), taps)
    canvas = canvas.view(plan.n_grids, h, w, k, k, c_out)  # (G, H+pad, W+pad, k, k, c_out)
    out = None
    for a in range(k):  # out[i, j] = sum_ab W[a, b] x[i - pad + a, j - pad + b]
        for b in range(k):
            term = canvas[:, a : a + plan.max_h, b : b + plan.max_w, a, b]  # (G, H, W, c_out)
            out = term if out is None else out + term
    return out.reshape(-1, c_out).index_select(0, plan.canvas_index(0))


def reference_causal_conv2d(grid: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Plain F.conv2d with top/left padding; grid (G, c_in, H, W). Used by the parity tests."""
    k = weight.shape[-1]
    return F.conv2d(F.pad(grid, (k - 1, 0, k - 1, 0)), weight)


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

    def update_layer(self, adapter_name: str, r: int, lora_alpha: float, config, **kwargs: Any) -> None:
        super().update_layer(adapter_name, r, lora_alpha=lora_alpha, config=config, **kwargs)  # text branch
        m, d_in, d_out = self.moss, self.in_features, self.out_features
        if m.variant == "moe_lora" or (m.variant == "moss" and m.conv_space == "lowrank"):
            self.lora_img_A[adapter_name] = nn.Linear(d_in, r, bias=False)
            nn.init.kaiming_uniform_(self.lora_img_A[adapter_name].weight, a=math.sqrt(5))
        if m.variant == "moss":
            c_in = d_in if m.conv_space == "full" else r
            conv = nn.Conv2d(c_in, r, m.kernel_size, bias=False)  # causal padding is applied in forward
            nn.init.kaiming_uniform_(conv.weight, a=math.sqrt(5))
            self.lora_img_conv[adapter_name] = conv
        self.lora_img_B[adapter_name] = nn.Linear(r, d_out, bias=False)
        nn.init.zeros_(self.lora_img_B[adapter_name].weight)  # fresh adapter == base model
        self._move_adapter_to_device_of_base_layer(adapter_name)
        self.set_adapter(self.active_adapters, inference_mode=config.inference_mode)

    def merge(self, safe_merge: bool = False, adapter_names=None) -> None:
        raise RuntimeError(
            f"a {self.moss.variant} adapter cannot be merged into the base weights: its image branch applies "
            "only at image-token positions (and for moss convolves over neighbouring tokens), which no single "
            "weight matrix can express. Keep the adapter unmerged, or use unload() to get the base model back."
        )

    def _image_rank_space(self, name: str, flat: torch.Tensor, plan: RoutingPlan) -> torch.Tensor:
        """(B*T, d_in) inputs -> (B*T, r) image-branch activations before lora_img_B; zero at text positions."""
        m = self.moss
        if m.variant == "moe_lora":
            z = self.lora_img_A[name](flat)
            return z * plan.image_weight(z.dtype)
        conv = self.lora_img_conv[name].weight
        if m.conv_space == "full":  # gather the d_in-wide image rows once: the conv's input
            c = causal_conv2d(flat.index_select(0, plan.image_pos), conv, plan)  # (n_img, r)
            return c.new_zeros(flat.shape[0], c.shape[1]).index_add(0, plan.image_pos, c)
        z = self.lora_img_A[name](flat)  # (B*T, r)
        z = z * plan.image_weight(z.dtype)
        c = causal_conv2d(z.index_select(0, plan.image_pos), conv, plan)  # (n_img, r)
        return z.index_add(0, plan.image_pos, c.to(z.dtype))

    def _step_rank_space(self, name: str, x: torch.Tensor, step: Step) -> tuple[torch.Tensor, torch.Tensor]:
        """(z, W) for the one token of an incremental forward: one branch, the conv through the conv cache."""
        flat = self.lora_dropout[name](x).reshape(-1, x.shape[-1])
        if flat.shape[0] != 1:
            raise RuntimeError(f"an incremental MoSS step takes one token of one sequence, got {tuple(x.shape[:-1])}")
        if not step.is_image:
            return self.lora_A[name](flat), self.lora_B[name].weight
        m, cache = self.moss, self.moss_context.conv_cache
        if m.variant == "moe_lora":
            z = self.lora_img_A[name](flat)
        elif m.conv_space == "full":
            z = cache.conv((id(self), name), flat[0], self.lora_img_conv[name].weight, *step.cell)[None]
        else:
            z = self.lora_img_A[name](flat)
            z = z + cache.conv((id(self), name), z[0], self.lora_img_conv[name].weight, *step.cell)[None]
        return z, self.lora_img_B[name].weight

    def _rank_space(self, name: str, x: torch.Tensor, plan: RoutingPlan | None) -> tuple[torch.Tensor, torch.Tensor]:
        """(z, W) with adapter output = z @ W.T: z (N, r | 2r) per token, W (d_out, r | 2r).

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
        z_img = self._image_rank_space(name, flat, plan).to(z_text.dtype)  # (N, r), zero at text positions
        w = torch.cat([self.lora_B[name].weight, self.lora_img_B[name].weight], dim=1)  # (d_out, 2r)
        return torch.cat([z_text, z_img], dim=1), w

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        self._check_forward_args(x, *args, **kwargs)
        result = self.base_layer(x, *args, **kwargs)
        if self.disable_adapters:
            return result
        plan, step = self.moss_context.plan, self.moss_context.step
        for name in self.active_adapters:
            if name not in self.lora_A:
                continue
            # under autocast the adapter's matmuls run in the autocast dtype whatever x is: casting x up to the
            # (fp32) adapter weights first would only keep one more copy of it alive for the backward pass
            autocast = torch.is_autocast_enabled(x.device.type)
            xa = x if autocast else self._cast_input_dtype(x, self.lora_A[name].weight.dtype)
            z, w = self._step_rank_space(name, xa, step) if step is not None else self._rank_space(name, xa, plan)
            flat = result.reshape(-1, result.shape[-1])
            if z.dtype == flat.dtype:  # result + scaling * z @ W.T in one fused op
                flat = torch.addmm(flat, z, w.t(), alpha=self.scaling[name])
            else:
                flat = flat + (z @ w.t() * self.scaling[name]).to(flat.dtype)
            result = flat.view(result.shape)
        return result

    def __repr__(self) -> str:
        return f"moss.{self.moss.variant}." + super().__repr__()
