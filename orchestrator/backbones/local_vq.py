"""A tiny image tokenizer whose codes are local, as a trained VQ-VAE's are.

A trained VQ-VAE's code at a cell describes the patch under it: a flat region is one code repeated, an edge
changes it. A randomly initialised one does not. At the tiny presets' 32 x 32 input every code's receptive
field covers most of the image, so zero padding and the encoder's attention make each code a mix of its
position and the whole image. Such codes hide the 2-D structure that MoSS's convolution is for.

`localize` keeps the real class and its random weights but makes every cell see only its own patch (and the
image's GroupNorm statistics, which are the same for every cell of an image, so a flat region stays one code):
- each k x k convolution keeps its centre tap, rescaled by sqrt(k * k) to keep the variance (a 3-D one, e.g.
  Emu3's temporal stack, keeps every temporal tap at the spatial centre: its padding in time is causal);
- each attention block's output projection is zeroed, which leaves its residual path.

Both the encoder and the decoder are changed, so a grid of equal codes decodes to a flat image.

Measured on the sample set's images: the entropy of a code given its left neighbour drops from 3.85 nats
(random VQ; 3.77 with no context) to 1.64 (local VQ; 2.77 with no context), with plug-in estimates on 340
train and 60 held-out images.
"""

from __future__ import annotations

import math

import torch
from torch import nn

ATTENTION_OUTPUTS = ("proj_out", "out_proj")  # Chameleon / Janus, Emu3


@torch.no_grad()
def localize(vq: nn.Module) -> nn.Module:
    """Make every code of ``vq`` depend on its own patch only (in place); returns ``vq``."""
    for module in vq.modules():
        if isinstance(module, (nn.Conv2d, nn.Conv3d)) and max(module.kernel_size[-2:]) > 1:
            kh, kw = module.kernel_size[-2:]
            centre = (Ellipsis, kh // 2, kw // 2)
            tap = module.weight[centre] * math.sqrt(kh * kw)
            module.weight.zero_()
            module.weight[centre] = tap
        elif "attention" in type(module).__name__.lower() or "attnblock" in type(module).__name__.lower():
            out = next((getattr(module, n) for n in ATTENTION_OUTPUTS if hasattr(module, n)), None)
            if out is None:
                raise TypeError(f"{type(module).__name__}: no output projection among {ATTENTION_OUTPUTS}")
            out.weight.zero_()
            if out.bias is not None:
                out.bias.zero_()
    return vq
