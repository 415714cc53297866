"""The conv cache: what each MossLinear keeps to decode image tokens one at a time.

With a KV cache a forward sees one new token. For a text token (or an EOL / begin / end token) the
text branch alone is exact. For an image cell (i, j) the causal k x k conv reads the conv input at
cells (i - k + 1 .. i, j - k + 1 .. j) of the same image, which earlier forwards saw. So every
adapted layer keeps, for the image being decoded, its conv input of the last k - 1 rows plus the
current row: a ring buffer of k rows x (k - 1 + W) columns (k - 1 zero columns on the left stand for
the conv's padding; image row i lives in slot i mod k). The conv input is x (d_in wide) for ``conv_space: full`` and z = A x (r wide)
for ``lowrank``. Writing a cell and reading its window is O(k^2 c_in), whatever the image size.

Ring slots of rows above the image (i - k + 1 < 0) were never written since the image opened, so
they read as the zero padding; columns right of j in the window are never read, so a slot still
holding row i - k's tail is harmless.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Step:
    """How the single token of an incremental forward is routed.

    cell: (row, col) in the image being decoded, or None for a text-branch position.
    """

    cell: tuple[int, int] | None = None

    @property
    def is_image(self) -> bool:
        return self.cell is not None


TEXT_STEP = Step()


class ConvCache:
    """Per-layer ring buffers of the image being decoded; ``open`` starts a new image.

    A layer's buffer is stored flat, (k * (k - 1 + W), c_in), so writing a cell is one indexed copy and
    reading its window one ``index_select`` with a precomputed index (shared by all layers).
    """

    def __init__(self) -> None:
        self.image = None  # an identity of the image being decoded (e.g. its ImageSegment)
        self.width = 0
        self._buffers: dict = {}  # (layer id, adapter name) -> (k * (k - 1 + W), c_in)
        self._taps: dict = {}  # (layer id, adapter name) -> (k * k * c_in, c_out), the conv as one matmul
        self._windows: dict = {}  # (k, row % k, col) -> (k * k,) flat buffer rows of the window, raster order

    def open(self, image, width: int) -> None:
        """Start decoding ``image`` (a no-op when it is the one already open)."""
        if image != self.image:
            if width != self.width:
                self._windows.clear()
            self.image, self.width = image, width
            self._buffers.clear()

    def clear(self) -> None:
        self.image, self.width = None, 0
        self._buffers.clear()
        self._taps.clear()
        self._windows.clear()

    def _window(self, k: int, rho: int, col: int, device) -> torch.Tensor:
        key = (k, rho, col)
        idx = self._windows.get(key)
        if idx is None or idx.device != device:
            stride = k - 1 + self.width
            # kernel row a reads image row (row - k + 1 + a), kept in ring slot (rho + 1 + a) % k
            rows = [((rho + 1 + a) % k) * stride + col + b for a in range(k) for b in range(k)]
            idx = self._windows[key] = torch.tensor(rows, device=device)
        return idx

    def conv(self, key, x: torch.Tensor, weight: torch.Tensor, row: int, col: int) -> torch.Tensor:
        """Write conv input ``x`` (c_in,) at (row, col); return the causal conv output there, (c_out,).

        weight: (c_out, c_in, k, k) as nn.Conv2d stores it. Cells must arrive in raster order.
        """
        if self.image is None:
            raise RuntimeError("an image step before ConvCache.open: which image is being decoded?")
        if not 0 <= col < self.width:
            raise RuntimeError(f"image cell column {col} outside the open image's width {self.width}")
        c_out, c_in, k, _ = weight.shape
        taps = self._taps.get(key)
        if taps is None or taps.dtype != x.dtype:
            # out = sum_ab W[:, :, a, b] . window[a, b]: taps row (a, b, c) = W[:, c, a, b]
            taps = self._taps[key] = weight.detach().permute(2, 3, 1, 0).reshape(k * k * c_in, c_out).to(x.dtype)
        if k == 1:
            return x @ taps
        buf = self._buffers.get(key)
        if buf is None:
            buf = self._buffers[key] = x.new_zeros(k * (k - 1 + self.width), c_in)
        rho = row % k
        buf[rho * (k - 1 + self.width) + col + k - 1] = x
        return buf.index_select(0, self._window(k, rho, col, buf.device)).view(-1) @ taps
