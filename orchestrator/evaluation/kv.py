"""The KV cache of a batch of sequences: left-padded rows, merged and dropped, appended without copying.

transformers' DynamicLayer concatenates every step, copying the whole cache: per token O(length) bytes per
layer and row, which at batch 8 and a few thousand positions costs more than the step itself. ``adopt``
turns a cache's dynamic layers into ``GrowingLayer``s that append into spare capacity (doubling), so a step
writes only its own keys and values. Rows join (``merge``, left-padding the shorter side) and leave
(``select``) as whole-cache copies: events per sequence, not per token.
"""

from __future__ import annotations

import torch
from transformers.cache_utils import DynamicLayer


class GrowingLayer(DynamicLayer):
    """A DynamicLayer whose keys / values are views of buffers with room to grow (module docstring)."""

    _kbuf = _vbuf = None

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        if not self.is_initialized or self.keys is None or self.keys.numel() == 0:
            return super().update(key_states, value_states, *args, **kwargs)
        n, t = self.keys.shape[-2], key_states.shape[-2]
        if (self._kbuf is None or self._kbuf.shape[-2] < n + t or self.keys.data_ptr() != self._kbuf.data_ptr()
                or self.values.data_ptr() != self._vbuf.data_ptr() or self.keys.shape[:-2] != self._kbuf.shape[:-2]):
            # no room, or keys replaced (crop, batch select...)
            self._kbuf, self._vbuf = _room(self.keys, 2 * (n + t)), _room(self.values, 2 * (n + t))
        self._kbuf[..., n : n + t, :] = key_states
        self._vbuf[..., n : n + t, :] = value_states
        self.keys, self.values = self._kbuf[..., : n + t, :], self._vbuf[..., : n + t, :]
        return self.keys, self.values

    def set(self, keys: torch.Tensor, values: torch.Tensor) -> None:
        """New contents (rows merged or dropped): the next update copies them into fresh room."""
        self.keys, self.values, self._kbuf, self._vbuf = keys, values, None, None


def _room(t: torch.Tensor, capacity: int) -> torch.Tensor:
    buf = t.new_empty(*t.shape[:-2], capacity, t.shape[-1])
    buf[..., : t.shape[-2], :] = t
    return buf


def layers(cache) -> list:
    """The KV layers of an ``adopt``ed cache; full-attention dynamic layers only (rows are left-padded)."""
    found = getattr(cache, "layers", None)
    if found is None or not all(isinstance(layer, GrowingLayer) for layer in found):
        raise RuntimeError(f"batched decoding needs a cache of full-attention dynamic layers, got {type(cache).__name__}"
                           " (decode with batch_size 1)")
    return found


def batchable(cache) -> bool:
    """Whether rows of ``cache`` can be merged and dropped: a stack of full-attention dynamic layers (not, e.g.,
    sliding-window layers, or the tuples of remote code written for transformers 4)."""
    found = getattr(cache, "layers", None)
    return bool(found) and all(type(layer) in (DynamicLayer, GrowingLayer) for layer in found)


def adopt(cache):
    """Make ``cache``'s dynamic layers GrowingLayers (same data) when it is ``batchable``; else leave it."""
    if batchable(cache):
        for layer in cache.layers:
            layer.__class__ = GrowingLayer
    return cache


def pad_left(t: torch.Tensor, length: int, dim: int = 2) -> torch.Tensor:
    """Zeros on the left of ``dim`` up to ``length``."""
    n = length - t.shape[dim]
    if n == 0:
        return t
    shape = list(t.shape)
    shape[dim] = n
    return torch.cat([t.new_zeros(shape), t], dim=dim)


def merge(cache, new, length: int) -> None:
    """Append the rows of ``new`` to ``cache``, both left-padded to ``length`` positions."""
    for mine, theirs in zip(layers(cache), layers(new)):
        mine.set(torch.cat([pad_left(mine.keys, length), pad_left(theirs.keys, length)]),
                 torch.cat([pad_left(mine.values, length), pad_left(theirs.values, length)]))


def select(cache, rows: torch.Tensor, trim: int) -> None:
    """Keep only ``rows`` of ``cache``, without its first ``trim`` positions (pads of every row kept)."""
    for layer in layers(cache):
        layer.set(layer.keys.index_select(0, rows)[:, :, trim:], layer.values.index_select(0, rows)[:, :, trim:])
