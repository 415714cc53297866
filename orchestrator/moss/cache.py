"""The conv cache: what the MoSS layers keep to decode image tokens one step at a time, for a batch of sequences.

With a KV cache a forward sees one new token per sequence (a batch row). For a text token (or an EOL /
begin / end token) the text branch alone is exact. For an image cell (i, j) the causal k x k conv reads
the conv input at cells (i - k + 1 .. i, j - k + 1 .. j) of the same image, which earlier steps saw. So
every row keeps, for the image it is decoding, the conv input of the last k - 1 rows plus the current row:
a ring buffer of k rows x (k - 1 + W) columns, its *region* (k - 1 zero columns on the left stand for the
conv's padding; image row i lives in slot i mod k). The conv input is x (d_in wide) for ``conv_space:
full`` and z = A x (r wide) for ``lowrank``.

One buffer tensor per layer group (the layers that read one input: q/k/v, gate/up; see step.py) holds the
regions of every row, back to back. Per step, ``plan`` computes once, for all layers, the flat buffer
row each image cell writes and the k * k rows its window reads; a layer group then does one indexed copy,
one ``index_select`` and one matmul with its precomputed taps, whatever the image size and batch.

Ring slots of rows above the image (i - k + 1 < 0) were never written since the image opened, so they read
as the zero padding; columns right of j in the window are never read, so a slot still holding row i - k's
tail is harmless. A row keeps its region while it decodes text (an EOL inside its image) and gets a fresh,
zeroed one when it opens another image; rows leaving or joining the batch move the regions (``keep``,
``add_row``), which copies each buffer once: an event per sequence, not per token.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Route:
    """Where one batch row's new token goes: an image cell (``image`` is the identity of the image, e.g.
    its ImageSegment; ``cell`` (row, col) in it; ``width`` its columns) or, with ``image`` None, the text branch."""

    image: object = None
    width: int = 0
    cell: tuple[int, int] | None = None

    @property
    def is_image(self) -> bool:
        return self.image is not None


TEXT = Route()


class ConvCache:
    """Regions of the images being decoded, one per batch row, in one buffer per layer group (module docstring)."""

    def __init__(self, kernel_size: int = 1) -> None:
        self.k = kernel_size
        self.clear()

    def clear(self) -> None:
        """Forget every row and buffer (a new decoding session)."""
        self.rows: list = []  # per batch row: the (image, width) its region holds, or None
        self.offsets: list[int] = []
        self.size = 0
        self.buffers: dict = {}  # (group id, adapter name) -> (size, c)

    def region_size(self, width: int) -> int:
        return self.k * (self.k - 1 + width)

    def add_row(self) -> None:
        """A sequence joins the batch as its last row (no image open yet)."""
        self._relayout(self.rows + [None], list(range(len(self.rows))) + [None])

    def keep(self, rows: list[int]) -> None:
        """Only ``rows`` stay in the batch, in that order (the others finished)."""
        self._relayout([self.rows[b] for b in rows], list(rows))

    def _relayout(self, keys: list, source: list) -> None:
        """New regions for ``keys`` (per new row); row b's data comes from old row ``source[b]`` if its key is the same."""
        offsets, size, src, dst = [], 0, [], []
        for b, key in enumerate(keys):
            offsets.append(size)
            n = self.region_size(key[1]) if key is not None else 0
            old = source[b]
            if key is not None and old is not None and self.rows[old] == key:
                src.extend(range(self.offsets[old], self.offsets[old] + n))
                dst.extend(range(size, size + n))
            size += n
        for name, buf in self.buffers.items():
            new = buf.new_zeros(size, buf.shape[1])
            if src:
                new[torch.tensor(dst, device=buf.device)] = buf[torch.tensor(src, device=buf.device)]
            self.buffers[name] = new
        self.rows, self.offsets, self.size = keys, offsets, size

    def plan(self, routes: list[Route], device) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(write, window) flat buffer rows of this step's image cells, in row order: write (n_img,), window
        (n_img * k * k,), the window in raster order. None when k == 1 (the conv is one cell: no buffer)."""
        if self.k == 1:
            return None
        if len(routes) != len(self.rows):
            raise RuntimeError(f"a step of {len(routes)} rows but the conv cache holds {len(self.rows)}")
        keys = [(r.image, r.width) if r.is_image else self.rows[b] for b, r in enumerate(routes)]
        if keys != self.rows:  # a row opened an image: a fresh zeroed region (the others move)
            self._relayout(keys, [b if keys[b] == self.rows[b] else None for b in range(len(keys))])
        k, write, window = self.k, [], []
        for b, r in enumerate(routes):
            if not r.is_image:
                continue
            (i, j), stride, base = r.cell, k - 1 + r.width, self.offsets[b]
            if not 0 <= j < r.width:
                raise RuntimeError(f"image cell column {j} outside the image's width {r.width}")
            rho = i % k
            write.append(base + rho * stride + j + k - 1)
            # kernel row a reads image row (i - k + 1 + a), kept in ring slot (rho + 1 + a) % k
            window.extend(base + ((rho + 1 + a) % k) * stride + j + c for a in range(k) for c in range(k))
        return torch.tensor(write, device=device), torch.tensor(window, device=device)

    def conv(self, key, x: torch.Tensor, taps: torch.Tensor, index) -> torch.Tensor:
        """Write the conv input ``x`` (n_img, c) of this step's cells; -> the causal conv there, (n_img, c_out).

        taps: (k * k * c, c_out), row (a, b, channel): the conv as one matmul. ``index``: this step's ``plan``."""
        if index is None:
            return x @ taps
        write, window = index
        buf = self.buffers.get(key)
        if buf is None or buf.dtype != x.dtype:
            buf = self.buffers[key] = x.new_zeros(self.size, x.shape[1])
        buf.index_copy_(0, write, x)
        return buf.index_select(0, window).view(x.shape[0], -1) @ taps


def conv_taps(weight: torch.Tensor) -> torch.Tensor:
    """(c_out, c_in, k, k) as nn.Conv2d stores it -> (k * k * c_in, c_out): out = window.flatten() @ taps."""
    c_out, c_in, k, _ = weight.shape
    return weight.detach().permute(2, 3, 1, 0).reshape(k * k * c_in, c_out)
