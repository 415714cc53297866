"""The causal k x k convolution over image token grids that MoSS's image branch applies."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .layout import RoutingPlan


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
