"""How images sit among tokens: an encoded image piece, the token budget of one image, the frame around a
generated image, and the layout of fixed-grid images."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from PIL import Image

from ..layout import ImageLayout, ImageSegment
from .loss import IGNORE_INDEX


class ImagePiece(list):
    """An image's token ids (a list) that also carries the image the model embeds itself (``image``):
    backbones with continuous image inputs (Emu2) keep the resized pixels next to the placeholders."""

    def __init__(self, ids, image: Image.Image):
        super().__init__(ids)
        self.image = image


@dataclass(frozen=True)
class ImageBudget:
    """Tokens one image takes in a sequence, at the smallest and the largest grid this backbone produces
    (equal for fixed-grid backbones). ``size``: the pixel size(s) behind them, in words."""

    min_grid: tuple[int, int]
    max_grid: tuple[int, int]
    min_tokens: int
    max_tokens: int
    size: str
    pixels_per_code: int = 0  # > 0: the image area is a setting (emu3's min / max pixels), codes per side = px / this


@dataclass(frozen=True)
class ImageFrame:
    """The tokens around one generated h x w image: the token that opens it, a header after it, the
    tokens ending each row, and the tokens closing it. Cells follow the header in raster order."""

    open_id: int
    header: tuple[int, ...]
    row_end: tuple[int, ...]
    close: tuple[int, ...]
    height: int
    width: int

    @property
    def row_stride(self) -> int:
        return self.width + len(self.row_end)

    def segment(self, open_position: int) -> ImageSegment:
        """The layout segment of this image when its open token sits at ``open_position``."""
        n = self.height * self.width
        return ImageSegment(open_position + 1 + len(self.header), self.height, self.width, self.row_stride, n)

    def tokens(self, cell_ids: list[int]) -> list[int]:
        if len(cell_ids) != self.height * self.width:
            raise ValueError(f"{len(cell_ids)} cells for a {self.height}x{self.width} image")
        rows = [cell_ids[i * self.width : (i + 1) * self.width] + list(self.row_end) for i in range(self.height)]
        return [self.open_id, *self.header, *(t for r in rows for t in r), *self.close]


def runs_after(ids: torch.Tensor, start_ids: set[int], is_code: torch.Tensor) -> list[tuple[int, int]]:
    """For a 1-D id row: (first code position, number of consecutive codes) after each start token."""
    runs = []
    starts = [i for i, t in enumerate(ids.tolist()) if t in start_ids]
    codes = is_code.tolist()
    for s in starts:
        n, p = 0, s + 1
        while p < len(codes) and codes[p]:
            n, p = n + 1, p + 1
        runs.append((s + 1, n))
    return runs


def is_input_image(labels: torch.Tensor | None, b: int, positions: torch.Tensor) -> bool:
    if labels is None or positions.numel() == 0:
        return False
    return bool((labels[b, positions] == IGNORE_INDEX).all())


def fixed_grid_layout(
    input_ids: torch.Tensor, labels, start_ids: set[int], is_code: torch.Tensor, h: int, w: int
) -> ImageLayout:
    """Layout for backbones whose images are a fixed h x w grid of codes right after a begin token."""
    segs = []
    for b in range(input_ids.shape[0]):
        row = []
        for off, n in runs_after(input_ids[b], start_ids, is_code[b]):
            seg = ImageSegment(off, h, w, w, min(n, h * w))
            row.append(ImageSegment(off, h, w, w, seg.n_cells, is_input_image(labels, b, seg.positions())))
        segs.append(row)
    return ImageLayout.from_lists(segs, input_ids.shape[1])


def frame_positions(frame_of, input_ids: torch.Tensor, layout: ImageLayout) -> torch.Tensor:
    """(B, T) mask of the tokens that frame each laid-out image (open, header, row ends, close): not
    content, so neither text nor image in the loss's metrics (``frame_loss``). ``frame_of(h, w)``: the
    backbone's ImageFrame. A position counts only where it holds the frame's own token, so a cut image
    or a frame the layout does not describe never marks text."""
    mask = torch.zeros(input_ids.shape, dtype=torch.bool)
    if not any(layout.segments):
        return mask.to(input_ids.device)
    ids, frames = input_ids.cpu(), {}
    for b, segments in enumerate(layout.segments):
        for seg in segments:
            if (seg.height, seg.width) not in frames:  # Emu3's header is tokenized: once per grid size
                frame = frame_of(seg.height, seg.width)
                frames[seg.height, seg.width] = frame, torch.tensor(frame.tokens([-1] * (seg.height * seg.width)))
            frame, expected = frames[seg.height, seg.width]
            pos = torch.arange(len(expected)) + seg.offset - 1 - len(frame.header)
            keep = (expected >= 0) & (pos >= 0) & (pos < ids.shape[1])
            pos, expected = pos[keep], expected[keep]
            mask[b, pos[ids[b, pos] == expected]] = True
    return mask.to(input_ids.device)
