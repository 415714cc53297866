"""Cached decoding: a batch of sequences, each at its own position, with the KV cache and the MoSS conv cache.

``BatchDecoder`` keeps one row per sequence. A sequence ``join``s with a prefill of its prompt alone (one
forward at batch 1), whose KV cache is then merged into the batch's, left-padded to the longest row; a
``step`` feeds one token per row in one forward, with an attention mask over the pads and each row's own
position ids; finished rows ``drop`` out (the pad columns no row needs any more are trimmed). Every position
is routed by the image segments of its row, known up front or declared while generating (``add_segment``
when an image opens): an image cell takes the image branch through the conv cache (orchestrator/moss/cache.py),
everything else the text branch. Backbones with continuous image inputs (Emu2) get each image cell's visual
embedding with its placeholder id.

Each row's hidden states equal those of decoding it alone (tests/unit/evaluation/test_batch_decoding.py), and
those equal one full forward over the same tokens (test_decoding.py). ``IncrementalDecoder`` is the one-row
case, with prompts that may end inside an image.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch
from torch import nn

from ..moss import TEXT, ImageLayout, ImageSegment, Route, recording_groups, routed_step, set_layout
from ..moss.peft import moss_context
from . import kv


@dataclass
class Row:
    """One sequence of the batch: ``length`` tokens fed so far, its image segments."""

    length: int = 0
    segments: list[ImageSegment] = field(default_factory=list)


class BatchDecoder:
    """KV cache + conv cache over a batch of sequences (module docstring)."""

    def __init__(self, model: nn.Module, spec):
        self.model, self.spec = model, spec
        self.ctx = moss_context(model)
        self.image_inputs = self.ctx.config.image_inputs if self.ctx is not None else True
        self.device = next(model.parameters()).device
        self.reset()

    def reset(self) -> None:
        """Forget every sequence (a new decoding session: the adapter's current weights are read again)."""
        self.cache = None
        self.rows: list[Row] = []
        self.mask: torch.Tensor | None = None  # (B, P) 1 at each row's tokens, 0 at its left pads
        if self.ctx is not None:
            self.ctx.new_session()

    @property
    def batchable(self) -> bool:
        """Whether another sequence may join (the first always may; more need a cache whose rows can be merged)."""
        return self.cache is None or kv.batchable(self.cache)

    @property
    def padded_length(self) -> int:
        return 0 if self.mask is None else self.mask.shape[1]

    def add_segment(self, row: int, segment: ImageSegment) -> None:
        """Declare an image of ``row`` whose cells start at ``segment.offset`` (after every image declared so far)."""
        segs = self.rows[row].segments
        if segs and segment.offset <= segs[-1].positions()[-1]:
            raise ValueError(f"image {segment} overlaps or precedes {segs[-1]}")
        segs.append(segment)

    def route(self, row: int, position: int) -> Route:
        seg = next((s for s in reversed(self.rows[row].segments) if s.offset <= position), None)
        if seg is None or (seg.is_input and not self.image_inputs):
            return TEXT
        i, j = divmod(position - seg.offset, seg.row_stride)
        if i >= seg.height or j >= seg.width or i * seg.width + j >= seg.n_cells:
            return TEXT  # a row end, or past the image
        return Route(seg, seg.width, (i, j))

    @torch.no_grad()
    def join(self, ids, segments=(), visual: torch.Tensor | None = None) -> torch.Tensor:
        """A new sequence as the last row: prefill its prompt alone; -> (T, D) hidden states.

        ``segments``: the prompt's images, all complete; ``visual``: (n, d) embeddings of their cells in order
        (continuous-image backbones)."""
        ids = torch.as_tensor(ids).flatten().tolist()
        if not ids:
            raise ValueError("an empty prompt: nothing to prefill")
        row = Row()
        for seg in segments:
            if seg.n_cells and int(seg.positions()[-1]) >= len(ids):
                raise ValueError(f"image {seg} runs past the prompt's {len(ids)} tokens: join takes whole images")
            if row.segments and seg.offset <= row.segments[-1].positions()[-1]:
                raise ValueError(f"image {seg} overlaps or precedes {row.segments[-1]}")
            row.segments.append(seg)
        n = self.spec.count_visual(torch.tensor([ids]))
        if n != (0 if visual is None else len(visual)):
            raise ValueError(f"{n} image cells to feed but {0 if visual is None else len(visual)} visual embeddings")
        set_layout(self.model, ImageLayout(((*row.segments,),), len(ids)))
        kw = {} if visual is None else {"visual": visual.to(self.device)}
        try:
            with recording_groups(self.model):
                h, cache = self.spec.forward_hidden(self.model, torch.tensor([ids], device=self.device), None, **kw)
        except BaseException:
            if self.ctx is not None:  # a forward that failed before its layers ran leaves no layout for the next
                self.ctx.pending_layout = None
            raise
        row.length = len(ids)
        self._merge(cache, len(ids))
        self.rows.append(row)
        if self.ctx is not None:
            self.ctx.conv_cache.add_row()
        return h[0]

    def _merge(self, cache, length: int) -> None:
        """Append a one-row KV cache of ``length`` tokens to the batch's, left-padding the shorter side."""
        ones = torch.ones(1, length, dtype=torch.long, device=self.device)
        if self.cache is None:
            self.cache, self.mask = kv.adopt(cache), ones
            return
        p = max(self.padded_length, length)
        kv.merge(self.cache, kv.adopt(cache), p)
        self.mask = torch.cat([kv.pad_left(self.mask, p, dim=1), kv.pad_left(ones, p, dim=1)])

    def drop(self, rows: list[int]) -> None:
        """Rows ``rows`` finished: remove them (the others keep their order)."""
        gone = set(rows)
        keep = [b for b in range(len(self.rows)) if b not in gone]
        if self.ctx is not None:
            self.ctx.conv_cache.keep(keep)
        self.rows = [self.rows[b] for b in keep]
        if not keep:
            self.cache, self.mask = None, None
            return
        index = torch.tensor(keep, device=self.device)
        mask = self.mask.index_select(0, index)
        trim = int((mask.cumsum(1) == 0).sum(1).min())  # pad columns every remaining row has
        kv.select(self.cache, index, trim)
        self.mask = mask[:, trim:]

    @torch.no_grad()
    def step(self, tokens: list[int], visual: list[torch.Tensor | None] | None = None,
             routes: list[Route] | None = None) -> torch.Tensor:
        """Feed one token per row (with its (d,) visual embedding where it is an image cell of a
        continuous-image backbone); -> (B, D) their hidden states. ``routes``: each row's route (default: by
        its image segments)."""
        if len(tokens) != len(self.rows) or not self.rows:
            raise RuntimeError(f"{len(tokens)} tokens for {len(self.rows)} rows (join a sequence first)")
        if routes is None:
            routes = [self.route(b, r.length) for b, r in enumerate(self.rows)]
        rows = [v.reshape(1, -1) for v in (visual or []) if v is not None]
        kw = {"visual": torch.cat(rows).to(self.device)} if rows else {}
        ids = torch.tensor(tokens, device=self.device).view(-1, 1)
        positions = torch.tensor([r.length for r in self.rows], device=self.device).view(-1, 1)
        self.mask = torch.cat([self.mask, self.mask.new_ones(len(self.rows), 1)], dim=1)
        if bool(self.mask[:, 0].all()):  # no row is padded: the plain causal step
            kw["position_ids"] = positions
        else:
            kw.update(attention_mask=self.mask, position_ids=positions)
        with routed_step(self.model, routes):
            h, self.cache = self.spec.forward_hidden(self.model, ids, self.cache, **kw)
        for r in self.rows:
            r.length += 1
        return h[:, 0]


class IncrementalDecoder:
    """One sequence (a one-row BatchDecoder) whose prompt may end inside an image. ``length`` tokens fed so far."""

    def __init__(self, model: nn.Module, spec):
        self.model, self.spec = model, spec
        self.batch = BatchDecoder(model, spec)
        self.reset()

    def reset(self) -> None:
        self.batch.reset()
        self._visual = None  # the prompt's visual embeddings not fed yet (continuous-image backbones)
        self._segments: list[ImageSegment] = []

    @property
    def length(self) -> int:
        return self.batch.rows[0].length if self.batch.rows else 0

    @property
    def cache(self):
        return self.batch.cache

    def add_segment(self, segment: ImageSegment) -> None:
        self.batch.add_segment(0, segment)

    def route(self, position: int) -> Route:
        return self.batch.route(0, position)

    def prefill(self, ids: torch.Tensor | list[int], segments=(), visual: torch.Tensor | None = None) -> torch.Tensor:
        """Feed a prompt (after reset); -> (T, D) hidden states. ``segments``: the prompt's images;
        ``visual``: (n, d) embeddings of its image cells in order (continuous-image backbones).

        One forward covers the prompt up to the first image it leaves open (a prompt that ends inside
        an image); the open image's cells present are then fed one by one, filling the conv cache.
        """
        ids = torch.as_tensor(ids).flatten().tolist()
        if self.batch.rows:
            raise RuntimeError("prefill starts a sequence: call reset() first")
        segs = []
        for seg in segments:
            if not seg.complete and _next_cell(seg) >= len(ids):  # cut with the prompt: still open
                seg = replace(seg, n_cells=seg.height * seg.width)
            segs.append(seg)
        cut, closed = len(ids), []
        for seg in segs:
            present = int((seg.positions() < len(ids)).sum())
            if present == 0:
                break
            if present < seg.n_cells:  # an image still being written when the prompt ends
                cut = seg.offset
                break
            closed.append(seg)
        n = self.spec.count_visual(torch.tensor([ids[:cut]])) if cut else 0
        if visual is not None and n > len(visual):
            raise ValueError(f"{n} image cells to feed but {len(visual)} visual embeddings")
        first = None if visual is None or n == 0 else visual[:n]
        self._visual = None if visual is None else visual[n:]
        if cut == 0:
            raise ValueError("a prompt that starts inside an image: nothing to prefill")
        parts = [self.batch.join(ids[:cut], closed, visual=first)]
        for seg in segs[len(closed):]:
            self.add_segment(seg)
        parts += [self.step(t)[None] for t in ids[cut:]]
        if self._visual is not None and len(self._visual):
            raise ValueError(f"{len(self._visual)} visual embeddings left over after the prompt's image cells")
        return torch.cat(parts)

    def step(self, token_id: int, visual: torch.Tensor | None = None) -> torch.Tensor:
        """Feed one token (with its (d,) visual embedding on continuous-image backbones); -> (D,) its
        hidden state."""
        if not self.batch.rows:
            raise RuntimeError("step before prefill: the KV cache is empty")
        if visual is None and self.spec.count_visual(torch.tensor([[int(token_id)]])):
            if self._visual is None or not len(self._visual):
                raise ValueError("an image cell to feed but no visual embeddings left from prefill")
            visual, self._visual = self._visual[0], self._visual[1:]
        return self.batch.step([int(token_id)], [visual], routes=[self.route(self.length)])[0]


def _next_cell(seg: ImageSegment) -> int:
    i, j = divmod(seg.n_cells, seg.width)
    return seg.offset + i * seg.row_stride + j
