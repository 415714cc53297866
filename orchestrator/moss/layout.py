"""Where the images sit in a token sequence, and the index maps the MoSS layers route with.

An image of H x W codes is stored in raster (row-major) order starting at ``offset``; row i begins at
``offset + i * row_stride`` (row_stride = W, or W + 1 for Emu3's end-of-line token per row). A
truncated image (or one being generated) has only its first ``n_cells`` cells present.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass(frozen=True)
class ImageSegment:
    """One image's cells inside a sequence (positions of the codes only, never of special tokens)."""

    offset: int
    height: int
    width: int
    row_stride: int
    n_cells: int
    is_input: bool = False  # a prompt image (not generated); routed by MossConfig.image_inputs

    def __post_init__(self) -> None:
        if self.height < 1 or self.width < 1 or self.row_stride < self.width:
            raise ValueError(f"bad image grid {self}")
        if not 0 <= self.n_cells <= self.height * self.width:
            raise ValueError(f"n_cells={self.n_cells} outside 0..{self.height * self.width} in {self}")

    @property
    def complete(self) -> bool:
        return self.n_cells == self.height * self.width

    def rows_cols(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Grid coordinates (i, j) of the present cells, raster order."""
        raster = torch.arange(self.n_cells)
        return raster // self.width, raster % self.width

    def positions(self) -> torch.Tensor:
        """Sequence positions of the present cells, raster order."""
        i, j = self.rows_cols()
        return self.offset + i * self.row_stride + j


@dataclass(frozen=True)
class ImageLayout:
    """The image segments of every sequence of a batch, each list in sequence order."""

    segments: tuple[tuple[ImageSegment, ...], ...]
    seq_len: int

    @classmethod
    def from_lists(cls, segments: list[list[ImageSegment]], seq_len: int) -> ImageLayout:
        return cls(tuple(tuple(s) for s in segments), seq_len)

    @classmethod
    def from_positions(cls, seq_len: int, grids: list[list[tuple[int, int, int]]], **kw) -> ImageLayout:
        """Layout for images known by position only (Janus generation): per sequence, (offset, H, W)."""
        segs = [
            [ImageSegment(o, h, w, w, min(h * w, max(0, seq_len - o)), **kw) for (o, h, w) in seq] for seq in grids
        ]
        return cls.from_lists(segs, seq_len)

    @property
    def batch_size(self) -> int:
        return len(self.segments)

    @property
    def num_images(self) -> int:
        return sum(len(s) for s in self.segments)

    def image_mask(self) -> torch.Tensor:
        """(B, T) bool: True at image-code positions."""
        mask = torch.zeros(self.batch_size, self.seq_len, dtype=torch.bool)
        for b, segs in enumerate(self.segments):
            for seg in segs:
                mask[b, seg.positions()] = True
        return mask

    def concat(self, other: ImageLayout) -> ImageLayout:
        if self.seq_len != other.seq_len:
            raise ValueError("can only batch layouts of the same sequence length")
        return ImageLayout(self.segments + other.segments, self.seq_len)


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
