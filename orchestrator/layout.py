"""Where the images sit in a batch of token sequences: what backbones produce, shards store and adapters route by.

An image of H x W codes is stored in raster (row-major) order starting at ``offset``; row i begins at
``offset + i * row_stride`` (row_stride = W, or W + 1 for Emu3's end-of-line token per row). A
truncated image (or one being generated) has only its first ``n_cells`` cells present.
"""

from __future__ import annotations

from dataclasses import dataclass

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
