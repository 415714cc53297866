"""Output heads a random-init preset can learn through: their std argued from the logit bound.

A tiny random-init base initialised like a real one (std 0.02) cannot make a confident prediction:
its head reads the final RMSNorm's output, whose norm is sqrt(d), so the largest logit any hidden state
can give one of V tokens is about sigma * d = 1.3 at d = 64, and no adapter under it can push the loss
below ~ln(V) - 1.3 (measured: every adapter stayed above 5.6 nats of image loss on a rule whose floor is
0.85). A frozen head must be able to express the margin that confident predictions need:

    margin(sigma) ~ sigma * (d - sqrt(2 d ln V))   the best logit (hidden state along the row, norm sqrt(d))
                                                   minus the largest of V random competitors
    p = 0.95 on one of V = 768 tokens needs a margin of ln(V) + ln(19) ~ 9.6 nats

so the presets draw their logit heads at ``confident_std(d, V)``: the std whose margin is HEAD_MARGIN
(16 nats, headroom over 9.6), never below the config's own initializer_range (at d = 2048 0.02 already
gives 37). Every other weight keeps the real class's init. README ("A base that can learn") has the
measurement that chose this over a cached pre-training.
"""

from __future__ import annotations

import math
from operator import attrgetter

import torch
from torch import nn

from .hub import language_config

HEAD_MARGIN = 16.0  # nats a frozen random head lets a prediction reach (p = 0.95 of 768 needs 9.6)
HEAD_SEED = 0x4EAD  # offset of the head's generator from the model seed


def confident_std(d: int, vocab: int, margin: float = HEAD_MARGIN) -> float:
    """The std of a (vocab x d) head after an RMSNorm whose logits can reach ``margin`` over the rest."""
    usable = d - math.sqrt(2 * d * math.log(vocab))
    if usable <= 0:
        raise ValueError(f"a head of width {d} cannot single out one of {vocab} tokens at any scale")
    return margin / usable


def config_std(model: nn.Module) -> float:
    """The std the model's config draws weights at (its language model's, for composite configs)."""
    return float(getattr(language_config(model.config), "initializer_range", 0.02))


def init_confident_heads(model: nn.Module, logit_heads: tuple[str, ...], head_inputs: tuple[str, ...],
                         seed: int) -> dict[str, float]:
    """Redraw the logit heads (and the Linear layers feeding them inside a head, variance-preserving), never
    below the config's own std; returns {path: std} of what was drawn."""
    floor = config_std(model)
    g = torch.Generator().manual_seed(seed + HEAD_SEED)
    drawn = {}
    with torch.no_grad():
        for path in head_inputs:
            layer = attrgetter(path)(model)
            drawn[path] = max(floor, 1 / math.sqrt(layer.in_features))
        embeddings = model.get_input_embeddings().weight
        for path in logit_heads:
            layer = attrgetter(path)(model)
            if layer.weight is embeddings:  # redrawing it would also scale every input embedding
                raise ValueError(f"{path} is tied to the input embeddings: untie them in the preset's config")
            drawn[path] = max(floor, confident_std(layer.in_features, layer.out_features))
        for path, std in drawn.items():
            layer = attrgetter(path)(model)
            layer.weight.copy_(torch.randn(layer.weight.shape, generator=g, dtype=torch.float32) * std)
            if layer.bias is not None:
                layer.bias.zero_()
    return drawn
