"""IncrementalDecoder: one sequence decoded with the KV cache and, for MoSS adapters, the conv cache.

``prefill`` runs a prompt in one forward; ``step`` feeds one token. Every position is routed by the
image segments of the sequence: known up front (a teacher-forced sequence) or declared while
generating (``add_segment`` when an image opens). Backbones with continuous image inputs (Emu2) get
each image cell's visual embedding with its placeholder id (``visual`` rows, in order). An image cell takes the image branch through each
layer's conv cache (orchestrator/moss/cache.py); everything else takes the text branch. The logits
equal those of one full forward over the same tokens (tests/unit/evaluation/test_decoding.py).
"""

from __future__ import annotations

from dataclasses import replace

import torch
from torch import nn

from ..moss import TEXT_STEP, ImageLayout, ImageSegment, Step, routed_step, set_layout
from ..moss.peft import moss_context


class IncrementalDecoder:
    """KV cache + conv cache over one sequence (batch 1). ``length`` tokens have been fed so far."""

    def __init__(self, model: nn.Module, spec):
        self.model, self.spec = model, spec
        self.ctx = moss_context(model)
        self.image_inputs = self.ctx.config.image_inputs if self.ctx is not None else True
        self.reset()

    def reset(self) -> None:
        self.cache = None
        self._visual = None  # the prompt's visual embeddings not fed yet (continuous-image backbones)
        self.length = 0
        self.segments: list[ImageSegment] = []
        if self.ctx is not None:
            self.ctx.conv_cache.clear()

    def add_segment(self, segment: ImageSegment) -> None:
        """Declare an image whose cells start at ``segment.offset`` (after every image declared so far)."""
        if self.segments and segment.offset <= self.segments[-1].positions()[-1]:
            raise ValueError(f"image {segment} overlaps or precedes {self.segments[-1]}")
        self.segments.append(segment)

    def route(self, position: int) -> Step:
        seg = next((s for s in reversed(self.segments) if s.offset <= position), None)
        if seg is None or (seg.is_input and not self.image_inputs):
            return TEXT_STEP
        i, j = divmod(position - seg.offset, seg.row_stride)
        if i >= seg.height or j >= seg.width or i * seg.width + j >= seg.n_cells:
            return TEXT_STEP  # a row end, or past the image
        if self.ctx is not None:
            self.ctx.conv_cache.open(seg, seg.width)
        return Step((i, j))

    @torch.no_grad()
    def _forward(self, ids: list[int], visual: torch.Tensor | None = None) -> torch.Tensor:
        device = self.spec_device()
        ids_t = torch.tensor([ids], device=device)
        n = self.spec.count_visual(ids_t)
        if n and visual is None:  # prompt cells: the next rows of the prefill's embeddings
            if self._visual is None or len(self._visual) < n:
                raise ValueError(f"{n} image cells to feed but {0 if self._visual is None else len(self._visual)} "
                                 "visual embeddings left from prefill")
            visual, self._visual = self._visual[:n], self._visual[n:]
        kw = {} if visual is None else {"visual": visual.to(device)}
        h, self.cache = self.spec.forward_hidden(self.model, ids_t, self.cache, **kw)
        self.length += len(ids)
        return h[0]

    def spec_device(self) -> torch.device:
        return next(self.model.parameters()).device

    def prefill(self, ids: torch.Tensor | list[int], segments=(), visual: torch.Tensor | None = None) -> torch.Tensor:
        """Feed a prompt (after reset); -> (T, D) hidden states. ``segments``: the prompt's images;
        ``visual``: (n, d) embeddings of its image cells in order (continuous-image backbones).

        One forward covers the prompt up to the first image it leaves open (a prompt that ends inside
        an image); the open image's cells present are then fed one by one, filling the conv cache.
        """
        ids = torch.as_tensor(ids).flatten().tolist()
        if self.length:
            raise RuntimeError("prefill starts a sequence: call reset() first")
        self._visual = visual
        for seg in segments:
            if not seg.complete and self._next_cell(seg) >= len(ids):  # cut with the prompt: still open
                seg = replace(seg, n_cells=seg.height * seg.width)
            self.add_segment(seg)
        cut, closed = len(ids), []
        for seg in self.segments:
            present = int((seg.positions() < len(ids)).sum())
            if present == 0:
                break
            if present < seg.n_cells:  # an image still being written when the prompt ends
                cut = seg.offset
                break
            closed.append(seg)
        parts = []
        if cut:
            set_layout(self.model, ImageLayout(((*closed,),), cut))
            parts.append(self._forward(ids[:cut]))
        parts += [self.step(t)[None] for t in ids[cut:]]
        if self._visual is not None and len(self._visual):
            raise ValueError(f"{len(self._visual)} visual embeddings left over after the prompt's image cells")
        return torch.cat(parts)

    @staticmethod
    def _next_cell(seg: ImageSegment) -> int:
        i, j = divmod(seg.n_cells, seg.width)
        return seg.offset + i * seg.row_stride + j

    def step(self, token_id: int, visual: torch.Tensor | None = None) -> torch.Tensor:
        """Feed one token (with its (d,) visual embedding on continuous-image backbones); -> (D,) its
        hidden state."""
        if self.length == 0:
            raise RuntimeError("step before prefill: the KV cache is empty")
        with routed_step(self.model, self.route(self.length)):
            return self._forward([int(token_id)], None if visual is None else visual.reshape(1, -1))[0]
