"""The index maps the MoSS layers route with, built from an image layout (orchestrator/layout.py)."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..layout import ImageLayout, ImageSegment

__all__ = ["ImageLayout", "ImageSegment", "RoutingPlan", "build_routing_plan"]


@dataclass
class RoutingPlan:
    """Index maps shared by every MoSS layer during one forward (built once per forward).

    text_pos:  (n_txt,) flat positions b * T + t that take the text branch
    image_pos: (n_img,) flat positions of image cells that take the image branch, grouped per image
    grid_idx, row_idx, col_idx: (n_img,) which grid (one per image) and which cell each image position is
    restore:   (B * T,) index into cat([text_rows, image_rows]) giving back sequence order
    """

    batch_size: int
    seq_len: int
    text_pos: torch.Tensor
    image_pos: torch.Tensor
    grid_idx: torch.Tensor
    row_idx: torch.Tensor
    col_idx: torch.Tensor
    restore: torch.Tensor
    n_grids: int
    max_h: int
    max_w: int
    _canvas_index: dict = field(default_factory=dict, repr=False)  # per-plan caches

    @property
    def num_image_positions(self) -> int:
        return int(self.image_pos.numel())

    def image_weight(self, dtype: torch.dtype) -> torch.Tensor:
        """(B*T, 1): 1.0 at image-branch positions, 0.0 elsewhere."""
        key = ("image", dtype)
        if key not in self._canvas_index:
            w = torch.zeros(self.batch_size * self.seq_len, 1, dtype=dtype, device=self.image_pos.device)
            w[self.image_pos] = 1
            self._canvas_index[key] = w
        return self._canvas_index[key]

    def text_weight(self, dtype: torch.dtype) -> torch.Tensor:
        """(B*T, 1): 1.0 at text-branch positions, 0.0 at image cells."""
        key = ("text", dtype)
        if key not in self._canvas_index:
            self._canvas_index[key] = 1 - self.image_weight(dtype)
        return self._canvas_index[key]

    def canvas_index(self, pad: int) -> torch.Tensor:
        """(n_img,) flat index of each image cell in a (n_grids, H + pad, W + pad) canvas, cells at [pad:, pad:]."""
        if pad not in self._canvas_index:
            h, w = self.max_h + pad, self.max_w + pad
            self._canvas_index[pad] = (self.grid_idx * h + self.row_idx + pad) * w + self.col_idx + pad
        return self._canvas_index[pad]


def build_routing_plan(layout: ImageLayout, image_inputs: bool = True, device=None) -> RoutingPlan:
    """Which positions go to the image branch (cells of images, per image), and which to the text branch.

    With ``image_inputs=False`` prompt images (``is_input``) are left to the text branch.
    """
    B, T = layout.batch_size, layout.seq_len
    pos, grid, rows, cols = [], [], [], []
    max_h = max_w = 1
    g = 0
    for b, segs in enumerate(layout.segments):
        for seg in segs:
            if (seg.is_input and not image_inputs) or seg.n_cells == 0:
                continue
            i, j = seg.rows_cols()
            p = seg.positions()
            if int(p[-1]) >= T:
                raise ValueError(f"image segment {seg} runs past the sequence length {T}")
            pos.append(b * T + p)
            grid.append(torch.full_like(i, g))
            rows.append(i)
            cols.append(j)
            max_h, max_w = max(max_h, seg.height), max(max_w, seg.width)
            g += 1
    empty = torch.zeros(0, dtype=torch.long)
    image_pos = torch.cat(pos) if pos else empty
    is_image = torch.zeros(B * T, dtype=torch.bool)
    is_image[image_pos] = True
    if int(is_image.sum()) != image_pos.numel():
        raise ValueError("two image segments overlap in the layout")
    text_pos = torch.nonzero(~is_image).flatten()
    restore = torch.empty(B * T, dtype=torch.long)
    restore[text_pos] = torch.arange(text_pos.numel())
    restore[image_pos] = torch.arange(image_pos.numel()) + text_pos.numel()
    to = (lambda t: t.to(device)) if device is not None else (lambda t: t)
    return RoutingPlan(
        batch_size=B,
        seq_len=T,
        text_pos=to(text_pos),
        image_pos=to(image_pos),
        grid_idx=to(torch.cat(grid) if grid else empty),
        row_idx=to(torch.cat(rows) if rows else empty),
        col_idx=to(torch.cat(cols) if cols else empty),
        restore=to(restore),
        n_grids=g,
        max_h=max_h,
        max_w=max_w,
    )
