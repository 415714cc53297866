"""Adapter variants as small strategy objects, and their registry: the one list of variants.

A variant decides what MossLinear adds at image positions (text positions always get PEFT's linear LoRA,
``lora_A`` / ``lora_B``). It builds its image branch into up to three slots of the layer, ``lora_img_A``,
``lora_img_conv`` and ``lora_img_B`` (B, r -> d_out, is created and zero-initialised by the layer); turns
the layer's input into rank-space activations, for a whole batch (``image_rank_space``) and for the one
tokens of cached decoding (``step_weights`` / ``step_image``); and gives its closed-form counts: trainable parameters,
multiply-adds per token, activation bytes (for ``moss plan``). Config validation, reports, benchmarks and
tests read the registry, so a new variant is one subclass + ``register_variant`` (docs/extending.md).

This module imports no torch at import time: configs are validated in data workers that never load it.
"""

from __future__ import annotations

import math
from typing import Any


class Variant:
    """One adapter variant; subclass and override what differs."""

    name: str = ""
    description: str = ""
    #: kernel_size / conv_space mean something for this variant (searched, shown in reports)
    uses_conv: bool = False
    #: one PEFT LoRA for both modalities: no image branch, no routing, mergeable into the base weights
    shared_branch: bool = False

    def forms(self) -> dict[str, dict[str, Any]]:
        """Structurally different settings, each worth testing and benchmarking: {slug: MossConfig fields}."""
        return {self.name: {"variant": self.name}}

    def label(self, conv_space: str | None = None) -> str:
        """How reports name a run of this variant (forms that count as different methods differ here)."""
        return self.name

    def text_params(self, r: int, d_in: int, d_out: int) -> int:
        return r * (d_in + d_out)

    def params_per_layer(self, cfg, d_in: int, d_out: int) -> int:
        """Trainable parameters this adapter adds to one wrapped d_in -> d_out linear layer."""
        raise NotImplementedError

    def image_macs_per_token(self, cfg, d_in: int, d_out: int) -> float:
        """Multiply-adds of the adapter at one image position of one layer (text positions: r (d_in + d_out))."""
        raise NotImplementedError

    def activation_bytes(self, cfg, tokens: float, image_tokens: float, projs: float, d_in_sum: float,
                         per: int) -> float:
        """Adapter activations one decoder layer keeps for the backward pass: ``projs`` adapted linears whose
        input widths sum to ``d_in_sum``, ``per`` bytes per element."""
        raise NotImplementedError

    def build(self, layer, name: str, cfg, r: int) -> None:
        """Create the image branch's modules (except lora_img_B) in ``layer``'s slots."""

    def image_rank_space(self, layer, name: str, flat, plan):
        """(N, d_in) inputs -> (N, r) image-branch activations before lora_img_B; zero at text positions."""
        raise NotImplementedError

    def step_rank_space(self, layer, name: str, x):
        """Cached decoding, the simple form: (n, d_in) inputs of image cells -> (n, r) image-branch activations of
        one layer, for a branch that reads only the current token (no conv). Used by the default step_image."""
        raise NotImplementedError(f"adapter variant {self.name!r} has no cached decoding step: define "
                                  "step_rank_space, or step_weights and step_image")

    def step_weights(self, layers: list, name: str) -> dict:
        """Cached decoding: what ``step_image`` needs of ``layers`` (the layers that read one input, moss/step.py),
        e.g. their weights concatenated so that one matmul serves all of them. Built once per decoding session."""
        return {"layers": layers, "name": name}

    def step_image(self, weights: dict, x, conv):
        """(n_img, d_in) inputs of this step's image cells -> (n_img, sum of the layers' r) image-branch
        activations, in layer order. ``conv(inp, taps)`` writes ``inp`` to the conv cache and returns the causal
        conv at the cells (taps: moss/cache.conv_taps, side by side). Default: step_rank_space per layer."""
        import torch

        return torch.cat([self.step_rank_space(layer, weights["name"], x) for layer in weights["layers"]], dim=1)


def init_linear(d_in: int, d_out: int):
    """A bias-free d_in -> d_out linear initialised as PEFT initialises lora_A (kaiming uniform, a = sqrt 5)."""
    from torch import nn

    lin = nn.Linear(d_in, d_out, bias=False)
    nn.init.kaiming_uniform_(lin.weight, a=math.sqrt(5))
    return lin


class Lora(Variant):
    name = "lora"
    description = "PEFT's LoRA, one set for both modalities"
    shared_branch = True

    def params_per_layer(self, cfg, d_in, d_out):
        return self.text_params(cfg.rank, d_in, d_out)

    def image_macs_per_token(self, cfg, d_in, d_out):
        return self.text_params(cfg.rank, d_in, d_out)

    def activation_bytes(self, cfg, tokens, image_tokens, projs, d_in_sum, per):
        return tokens * projs * cfg.rank * per


class MoeLora(Variant):
    name = "moe_lora"
    description = "a separate linear LoRA per modality, hard-routed"

    def params_per_layer(self, cfg, d_in, d_out):
        return self.text_params(cfg.rank, d_in, d_out) + self.text_params(cfg.image_r, d_in, d_out)

    def image_macs_per_token(self, cfg, d_in, d_out):
        return self.text_params(cfg.image_r, d_in, d_out)  # one branch runs per token

    def activation_bytes(self, cfg, tokens, image_tokens, projs, d_in_sum, per):
        return tokens * projs * (cfg.rank + cfg.image_r) * per

    def build(self, layer, name, cfg, r):
        layer.lora_img_A[name] = init_linear(layer.in_features, r)

    def image_rank_space(self, layer, name, flat, plan):
        z = layer.lora_img_A[name](flat)
        return z * plan.image_weight(z.dtype)

    def step_weights(self, layers, name):
        import torch

        return {"a": torch.cat([layer.lora_img_A[name].weight.detach() for layer in layers]).t()}

    def step_image(self, weights, x, conv):
        return x @ weights["a"].to(x.dtype)


class Moss(Variant):
    name = "moss"
    description = "linear LoRA on text + causal k x k convolutional LoRA over each image's token grid"
    uses_conv = True

    def forms(self):
        forms = {f"moss-{space}": {"variant": "moss", "conv_space": space} for space in ("full", "lowrank")}
        return {**forms, "moss-lowrank-gelu": {"variant": "moss", "conv_space": "lowrank", "conv_activation": "gelu"}}

    def label(self, conv_space=None):
        return f"moss/{conv_space or 'full'}"

    def params_per_layer(self, cfg, d_in, d_out):
        r, ri, k = cfg.rank, cfg.image_r, cfg.kernel_size
        if cfg.conv_space == "full":  # k x k conv d_in -> r_img, then B
            return self.text_params(r, d_in, d_out) + k * k * d_in * ri + ri * d_out
        return self.text_params(r, d_in, d_out) + ri * d_in + k * k * ri * ri + ri * d_out  # A, conv, B

    def image_macs_per_token(self, cfg, d_in, d_out):
        r, k = cfg.image_r, cfg.kernel_size
        if cfg.conv_space == "full":
            return k * k * d_in * r + r * d_out
        return r * d_in + k * k * r * r + r * d_out

    def activation_bytes(self, cfg, tokens, image_tokens, projs, d_in_sum, per):
        """MoSS full also keeps the image rows it gathers (d_in each) and the conv taps (k^2 r, twice); the
        low-rank conv its rank-space canvas."""
        r, k = cfg.image_r, cfg.kernel_size
        text = tokens * projs * (cfg.rank + r) * per
        if cfg.conv_space == "full":
            return text + image_tokens * (d_in_sum + 2 * projs * k * k * r) * per
        gelu = 1 if cfg.conv_activation == "gelu" else 0  # GELU keeps its input (the conv output) for backward
        return text + image_tokens * projs * (k * k / 2 + 3 + gelu) * r * per

    def build(self, layer, name, cfg, r):
        from torch import nn

        if cfg.conv_space == "lowrank":
            layer.lora_img_A[name] = init_linear(layer.in_features, r)
        c_in = layer.in_features if cfg.conv_space == "full" else r
        conv = nn.Conv2d(c_in, r, cfg.kernel_size, bias=False)  # causal padding is applied in forward
        nn.init.kaiming_uniform_(conv.weight, a=math.sqrt(5))
        layer.lora_img_conv[name] = conv

    def image_rank_space(self, layer, name, flat, plan):
        from .conv import causal_conv2d

        conv = layer.lora_img_conv[name].weight
        if layer.moss.conv_space == "full":  # gather the d_in-wide image rows once: the conv's input
            c = causal_conv2d(flat.index_select(0, plan.image_pos), conv, plan)  # (n_img, r)
            return c.new_zeros(flat.shape[0], c.shape[1]).index_add(0, plan.image_pos, c)
        z = layer.lora_img_A[name](flat)  # (N, r)
        z = z * plan.image_weight(z.dtype)
        c = causal_conv2d(z.index_select(0, plan.image_pos), conv, plan)  # (n_img, r)
        return z.index_add(0, plan.image_pos, self.activate(layer, c).to(z.dtype))

    def step_weights(self, layers, name):
        """full: the layers' taps side by side (they read one x); lowrank: their A stacked, and their taps as
        one block-diagonal matrix over the stacked z (each layer's conv reads only its own z)."""
        import torch

        from .cache import conv_taps

        cfg = layers[0].moss
        taps = [conv_taps(layer.lora_img_conv[name].weight) for layer in layers]
        if cfg.conv_space == "full":
            return {"taps": torch.cat(taps, dim=1), "gelu": False, "a": None}
        k2, sizes = cfg.kernel_size ** 2, [t.shape[1] for t in taps]
        block = taps[0].new_zeros(k2, sum(sizes), sum(sizes))
        o = 0
        for t, r in zip(taps, sizes):
            block[:, o : o + r, o : o + r] = t.view(k2, r, r)
            o += r
        return {"taps": block.view(k2 * sum(sizes), sum(sizes)), "gelu": cfg.conv_activation == "gelu",
                "a": torch.cat([layer.lora_img_A[name].weight.detach() for layer in layers]).t()}

    def step_image(self, weights, x, conv):
        if weights["a"] is None:  # full: the conv reads x itself
            return conv(x, weights["taps"])
        z = x @ weights["a"].to(x.dtype)
        c = conv(z, weights["taps"])
        if weights["gelu"]:
            from torch.nn.functional import gelu

            c = gelu(c)
        return z + c

    @staticmethod
    def activate(layer, c):
        """The low-rank conv's output through conv_activation (Conv-LoRA: GELU)."""
        if layer.moss.conv_activation == "gelu":
            from torch.nn.functional import gelu

            return gelu(c)
        return c


_REGISTRY: dict[str, Variant] = {}


def register_variant(variant: Variant) -> Variant:
    """Make ``variant`` known to MossConfig, apply_moss, the run config, reports and benchmarks."""
    if not variant.name or not variant.name.replace("_", "").isalnum():
        raise ValueError(f"a variant needs a name of letters, digits and _, got {variant.name!r}")
    if variant.name in _REGISTRY and type(_REGISTRY[variant.name]) is not type(variant):
        raise ValueError(f"variant {variant.name!r} is already registered ({type(_REGISTRY[variant.name]).__name__})")
    _REGISTRY[variant.name] = variant
    return variant


def unregister_variant(name: str) -> None:
    """Forget a variant registered at run time (tests and notebooks); the built-in three stay."""
    if name in BUILT_IN:
        raise ValueError(f"{name!r} is built in")
    _REGISTRY.pop(name, None)


def get_variant(name: str) -> Variant:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown adapter variant {name!r}; known: {variant_names()}") from None


def find_variant(name: str) -> Variant | None:
    """The registered variant, or None (e.g. a run of an older store, or of a variant not imported here)."""
    return _REGISTRY.get(name)


def variant_names() -> tuple[str, ...]:
    return tuple(_REGISTRY)


def all_forms() -> dict[str, dict[str, Any]]:
    """{slug: MossConfig fields} of every registered variant's forms (lora, moe_lora, moss-full, moss-lowrank)."""
    return {slug: kw for v in _REGISTRY.values() for slug, kw in v.forms().items()}


def label_of(variant: str, conv_space: str | None = None) -> str:
    """A report's name for a run (an unknown variant, e.g. from an older store, keeps its own name)."""
    return _REGISTRY[variant].label(conv_space) if variant in _REGISTRY else variant


#: the baseline every report measures gaps against (same backbone, rank and step)
REFERENCE = "lora"
BUILT_IN = ("lora", "moe_lora", "moss")
for _v in (Lora(), MoeLora(), Moss()):
    register_variant(_v)
