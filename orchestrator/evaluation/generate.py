"""Interleaved generation: sampled text, grid-constrained images, through the KV + conv caches.

Text tokens are sampled (temperature, top-p) from the text vocabulary minus the ids only an image
frame may place (codes, end-of-line, end-of-image...). When the model samples the token that opens
an image (Chameleon/Janus ``<begin_of_image>``-like, Emu3 ``<|image start|>``), the backbone's image
frame takes over: its header (Emu3: "H*W<|image token|>") is forced, each cell is sampled from the
image codes only, every row gets its end tokens (Emu3's EOL), and after exactly H x W cells the
closing tokens are forced; then text sampling resumes. Emu2 regresses each cell instead: its visual
embedding is ``project_down`` of the hidden state, fed back through ``project_up`` at the next step.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import torch
from PIL import Image
from pydantic import ConfigDict, ValidationError, model_validator
from torch import nn

from ..config import GenerateSection
from ..data.schema import PLACEHOLDER
from .decoding import BatchDecoder

log = logging.getLogger(__name__)


class SamplingConfig(GenerateSection):
    """The run config's ``generate:`` section (one schema, validated there) plus what only a caller knows:
    ``open_image``, the answer starts with an image (editing, text-to-image). Frozen."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    open_image: bool = False

    @classmethod
    def from_section(cls, section: GenerateSection, **overrides) -> SamplingConfig:
        """From the run config's ``generate:`` section, with overrides; ValueError naming what is wrong."""
        return cls.checked(**{**section.model_dump(), **overrides})

    @classmethod
    def checked(cls, **values) -> SamplingConfig:
        try:
            return cls(**values)
        except ValidationError as e:  # one line per problem, not pydantic's dump of the input
            raise ValueError("; ".join(f"{'.'.join(map(str, err['loc'])) or 'sampling'}: {err['msg']}"
                                       for err in e.errors())) from None

    def with_(self, **changes) -> SamplingConfig:
        """A copy with ``changes``, validated again."""
        return self.checked(**{**self.model_dump(), **changes})

    @model_validator(mode="after")
    def _check_open_image(self) -> SamplingConfig:
        if self.open_image and self.max_images < 1:
            raise ValueError("open_image needs max_images >= 1")
        return self

    def diffusion(self) -> dict:
        """The settings a diffusion pixel decoder takes (a backbone's ``decode_image(..., settings=)``)."""
        return {"steps": self.diffusion_steps, "guidance_scale": self.guidance_scale, "size": self.diffusion_size,
                "seed": self.seed}


@dataclass
class GeneratedImage:
    codes: torch.Tensor | None  # (h, w) VQ codebook indices (None for continuous-image backbones)
    image: Image.Image | None  # decoded pixels; None when the backbone has no pixel decoder here
    embeddings: torch.Tensor | None = None  # (h, w, d) regressed visual embeddings (Emu2)

    @property
    def grid(self) -> torch.Tensor:
        """What the model generated: codes (h, w) or embeddings (h, w, d)."""
        return self.codes if self.codes is not None else self.embeddings

    @property
    def size(self) -> tuple[int, int]:
        return int(self.grid.shape[0]), int(self.grid.shape[1])

    def save(self, directory, stem: str) -> dict:
        """Write the grid (codes JSON, or embeddings .npy) and the PNG when there are pixels; -> file names."""
        import json
        from pathlib import Path

        import numpy as np

        directory = Path(directory)
        files = {}
        if self.codes is not None:
            files["codes"] = f"{stem}.codes.json"
            (directory / files["codes"]).write_text(json.dumps(self.codes.tolist()))
        else:
            files["embeddings"] = f"{stem}.embeddings.npy"
            np.save(directory / files["embeddings"], self.embeddings.float().numpy())
        if self.image is not None:
            files["image"] = f"{stem}.png"
            self.image.save(directory / files["image"])
        return files


@dataclass
class Answer:
    """The generated part: ``parts`` are str and GeneratedImage in order; ``ids`` the full sequence."""

    parts: list = field(default_factory=list)
    ids: list[int] = field(default_factory=list)
    prompt_length: int = 0
    stop: str = ""  # eos | max_new_tokens | max_length
    seconds: float = 0.0  # wall time from its prefill to its end (in a batch: sharing the steps with the others)
    #: per generated image cell / text token: the batched heads, sampling and step that produced it (a row's
    #: latency per token; the batch makes batch-size tokens in that time). Prefills and pixel decoding excluded.
    image_token_seconds: list[float] = field(default_factory=list)
    text_token_seconds: list[float] = field(default_factory=list)
    #: (position, logits) of each token chosen by the sampler or forced open, before banning (record_logits)
    step_logits: list[tuple[int, torch.Tensor]] | None = None

    @property
    def text(self) -> str:
        return "".join(p if isinstance(p, str) else "<image>" for p in self.parts)

    @property
    def images(self) -> list[GeneratedImage]:
        return [p for p in self.parts if isinstance(p, GeneratedImage)]


def interleave(text: str, images: list) -> list:
    """Text with <image> placeholders + the images they stand for -> segments in reading order (str and
    images; a placeholder without an image is dropped, empty text pieces too)."""
    segments: list = []
    pieces = text.split(PLACEHOLDER)
    for i, piece in enumerate(pieces):
        if piece.strip():
            segments.append(piece.strip())
        if i < len(pieces) - 1 and i < len(images):
            segments.append(images[i])
    return segments


def sample(logits: torch.Tensor, temperature: float, top_p: float, generator: torch.Generator) -> int:
    """One index from (n,) logits: greedy at temperature 0, else nucleus sampling."""
    if temperature == 0:
        return int(logits.argmax())
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    if top_p < 1:
        p, idx = probs.sort(descending=True)
        keep = p.cumsum(0) - p < top_p  # the smallest prefix whose mass reaches top_p (at least one)
        probs = torch.zeros_like(probs).index_copy_(0, idx[keep], p[keep])
    return int(torch.multinomial(probs.cpu(), 1, generator=generator))


@dataclass
class _Request:
    """What an answer's coroutine asks the scheduler for: ``prefill`` its prompt (ids, segments, visual), a head
    over its hidden state ``h`` (text | image | regress), to declare an image ``segment``, or to ``feed`` a
    token (with its visual embedding on continuous-image backbones)."""

    kind: str
    h: torch.Tensor | None = None
    token: int = 0
    visual: torch.Tensor | None = None
    ids: torch.Tensor | None = None
    segment: object = None


@dataclass(eq=False)
class _Row:
    """One answer being generated: its prompt, its coroutine, what it asks for now (None: done) and its result."""

    index: int
    prompt: tuple
    alone: bool = False  # decoded again by itself after a batched step failed
    co: object = None
    h: torch.Tensor | None = None
    request: _Request | None = None
    result: object = None


class Generator:
    """Generates interleaved answers for one model + backbone; reusable across prompts.

    ``generate`` answers one prompt; ``generate_many`` answers many, up to ``batch_size`` decoded together
    (BatchDecoder): a finished answer's row is refilled with the next prompt. Each answer is a coroutine
    (``_answer``) that asks for heads and feeds; the scheduler runs one batched forward per step and one
    batched head per kind, so an answer is the same whatever else is in its batch, to float tolerance (its own
    seeded sampler, its own caches: tests/unit/evaluation/test_batch_decoding.py). One decoding at a time per
    Generator (and per model: the caches live in the model's MoSS context).
    """

    def __init__(self, model: nn.Module, spec, max_length: int | None = None):
        self.model, self.spec = model.eval(), spec
        self.token_seconds = 0.0  # the last batched step's time, heads and sampling included
        self.decoder = BatchDecoder(model, spec)
        cfg = spec.model_config
        text_cfg = getattr(cfg, "text_config", cfg)
        self.max_length = max_length or getattr(text_cfg, "max_position_embeddings", 4096)
        self.eos = spec.tokenizer.eos_token_id
        banned = set(spec.text_banned_ids()) - {self.eos, None}  # a pad that doubles as eos still ends answers
        self.banned = torch.tensor(sorted(banned), dtype=torch.long)
        self._negative = None  # a guided decoder's unconditional input: embeddings regressed from an empty prompt
        spec.prepare_decoder(model)

    def negative_embeddings(self) -> torch.Tensor:
        """Emu2-Gen's unconditional branch: an image regressed after an empty prompt (computed once)."""
        if self._negative is None:
            cfg = SamplingConfig(max_new_tokens=0, open_image=True, max_images=1)
            self._negative = self.generate([], cfg, decode=False).images[0].embeddings
        return self._negative

    def encode_prompt(self, segments: list) -> dict:
        """Prompt segments (str | PIL.Image) -> ids + layout, prompt images marked as inputs (and, for
        continuous-image backbones, ``visual``: the (n_cells, d) embeddings of their cells in order)."""
        enc = self.spec.assemble(self.spec.encode_pieces(segments), [False] * len(segments), add_eos=False)
        if self.spec.continuous_images and enc["images"]:
            device = next(self.model.parameters()).device
            px = torch.stack([self.spec.normalize(im) for im in enc["images"]]).to(device)
            grids = self.spec.visual_embeddings(self.model, px)
            enc["visual"] = torch.cat([g[: s.n_cells] for g, s in zip(grids, enc["image_layout"])])
        return enc

    def _check_length(self, prompt_len: int, frame, cfg: SamplingConfig) -> int:
        """Refuse a prompt (plus the image it must open) longer than the model's positions; -> image tokens."""
        image_len = len(frame.tokens([0] * frame.height * frame.width))
        if prompt_len + 1 + (image_len if cfg.open_image else 0) > self.max_length:
            what = f" plus a {frame.height}x{frame.width} image ({image_len} tokens)" if cfg.open_image else ""
            raise ValueError(f"the prompt ({prompt_len} tokens){what} exceeds the model's {self.max_length} positions")
        return image_len

    def generate(self, segments: list, cfg: SamplingConfig = SamplingConfig(), record_logits: bool = False,
                 decode: bool = True) -> Answer:
        """One answer. ``decode=False``: no pixel decoding (generated images keep only their codes / embeddings)."""
        (_, result), = self.generate_many([(segments, cfg)], 1, record_logits=record_logits, decode=decode)
        if isinstance(result, Exception):
            raise result
        return result

    @torch.no_grad()
    def generate_many(self, prompts, batch_size: int = 1, record_logits: bool = False, decode: bool = True):
        """Answer ``prompts`` ((segments, SamplingConfig) pairs; an exception instead of the segments: a prompt
        that could not be read) up to ``batch_size`` at a time; yields (index, Answer), or (index, the exception)
        for a prompt that failed (too long, an unreadable image...), in the order they finish. ``prompts`` is read
        lazily, as rows free up.

        A batched forward, head or prefill that fails with rows active (e.g. out of memory) sends every active
        answer back to be decoded again by itself, and halves the batch for the rest (``self.retried`` counts
        them, with a warning): only what fails alone is a failure."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        spec, dec = self.spec, self.decoder
        if decode and spec.continuous_images and spec.has_pixel_decoder:
            self.negative_embeddings()  # before any answer's decoding starts: it runs a generation of its own
        dec.reset()
        self.retried, self.batch_limit = 0, batch_size
        pending, exhausted = iter(enumerate(prompts)), False
        alone: list = []  # (index, prompt) to decode again by itself after a batched failure
        active: list[_Row] = []  # one per decoder row, in row order
        heads = {"text": spec.text_logits, "image": spec.image_logits, "regress": getattr(spec, "regress", None)}
        try:
            while True:
                finished: list[_Row] = []
                joining = None
                try:
                    while len(active) < self.batch_limit and dec.batchable and not any(r.alone for r in active):
                        if alone:  # an answer sent back by a failed batched step decodes by itself
                            if active:
                                break
                            row = _Row(*alone.pop(0), alone=True)
                        else:
                            nxt = next(pending, None)
                            if nxt is None:
                                exhausted = True
                                break
                            row = _Row(*nxt)
                        joining = row
                        row.result = self._join(row, record_logits, decode, batched=bool(active))
                        joining = None
                        if row.result is not None:  # its own failure (too long, an unreadable image...)
                            finished.append(row)
                            continue
                        active.append(row)
                        self._advance(active, len(active) - 1, row.h)
                    t0 = time.perf_counter()
                    while True:  # heads, batched per kind, until every row asks to feed (or is done)
                        asking = [b for b, r in enumerate(active) if r.request is not None and r.request.kind in heads]
                        if not asking:
                            break
                        kind = active[asking[0]].request.kind
                        rows = [b for b in asking if active[b].request.kind == kind]
                        out = heads[kind](self.model, torch.stack([active[b].request.h for b in rows]))
                        for b, o in zip(rows, out):
                            self._advance(active, b, o)
                    active = self._retire(active, finished)
                    if active:
                        hs = dec.step([r.request.token for r in active], [r.request.visual for r in active])
                        self.token_seconds = time.perf_counter() - t0  # the batch's heads, sampling and step
                        for b in range(len(active)):
                            self._advance(active, b, hs[b])
                        active = self._retire(active, finished)
                except (RuntimeError, ValueError) as e:  # a batched forward, head or prefill failed (out of memory...)
                    failed_size = len(active) + (joining is not None)
                    finished.extend(r for r in active if r.request is None and r not in finished)  # done already
                    rest = [r for r in active if r not in finished]
                    for r in rest:
                        r.co.close()
                    if joining is not None:  # its prefill failed next to the others: it is sent back too
                        rest.append(joining)
                    if failed_size == 1 and rest:  # it failed by itself: its own failure
                        rest[0].result = e
                        finished.append(rest[0])
                    elif rest:
                        alone.extend((r.index, r.prompt) for r in rest)
                        self.retried += len(rest)
                        self.batch_limit = max(1, failed_size // 2)
                        log.warning("a batched decoding step failed (%s: %s): %d answers are decoded again one at a "
                                    "time; batch size now %d", type(e).__name__, str(e)[:200], len(rest),
                                    self.batch_limit)
                    active = []
                    dec.reset()
                for r in finished:  # after the clock: the caller's work on an answer is no row's token time
                    yield r.index, r.result
                if not active and not alone and exhausted:
                    return
        finally:
            for r in active:
                r.co.close()
            dec.reset()

    def _retire(self, active: list, finished: list) -> list:
        """Move the rows whose answer is done to ``finished`` and out of the decoder; -> the others."""
        done = [b for b, r in enumerate(active) if r.request is None]
        if not done:
            return active
        finished.extend(active[b] for b in done)
        self.decoder.drop(done)
        return [r for r in active if r.request is not None]

    def _join(self, row: _Row, record_logits: bool, decode: bool, batched: bool = False) -> Exception | None:
        """Start ``row``'s answer and prefill its prompt as a new decoder row; -> the exception if it failed.
        ``batched`` (other rows are active): a RuntimeError (out of memory...) is raised, for the caller to retry."""
        segments, cfg = row.prompt
        if isinstance(segments, Exception):  # a prompt that could not be read: its result
            return segments
        row.co = self._answer(segments, cfg, record_logits, decode)
        try:
            req = next(row.co)  # the encoded prompt
            row.h = self.decoder.join(req.ids, req.segment, visual=req.visual)[-1]
        except (ValueError, RuntimeError, OSError) as e:  # too long, an unreadable image...
            row.co.close()
            if batched and isinstance(e, RuntimeError):
                raise
            return e
        return None

    def _advance(self, active: list, b: int, value) -> None:
        """Send ``value`` to row b's coroutine: its next request, or none and its answer (or the exception).
        Image segments it declares go to the decoder on the way."""
        row = active[b]
        try:
            req = row.co.send(value)
            while req.kind == "segment":
                self.decoder.add_segment(b, req.segment)
                req = row.co.send(None)
            row.request = req
        except StopIteration as stop:
            row.request, row.result = None, stop.value
        except (ValueError, RuntimeError, OSError) as e:  # e.g. a pixel decoder failing on one answer
            row.request, row.result = None, e

    def _answer(self, segments: list, cfg: SamplingConfig, record_logits: bool, decode: bool):
        """One answer as a coroutine: yields _Requests, gets back what they ask for; returns the Answer."""
        spec = self.spec
        enc = self.encode_prompt(segments)
        frame = spec.image_frame(*spec.generation_grid(cfg.image_size))
        image_len = self._check_length(len(enc["input_ids"]), frame, cfg)
        gen = torch.Generator().manual_seed(cfg.seed)
        t0 = time.perf_counter()
        h = yield _Request("prefill", ids=enc["input_ids"], segment=list(enc["image_layout"]), visual=enc.get("visual"))
        answer = Answer(ids=enc["input_ids"].tolist(), prompt_length=len(enc["input_ids"]))
        answer.step_logits = [] if record_logits else None
        text_ids: list[int] = []
        n_text = 0

        def flush_text() -> None:
            if text_ids:
                answer.parts.append(spec.tokenizer.decode(text_ids, skip_special_tokens=True))
                text_ids.clear()

        while True:
            length = len(answer.ids)
            if length + 1 >= self.max_length:
                answer.stop = "max_length"
                break
            logits = (yield _Request("text", h)).float()
            raw = logits.clone() if record_logits else None
            logits[self.banned.to(logits.device)] = float("-inf")
            can_open = len(answer.images) < cfg.max_images and length + image_len < self.max_length
            if not can_open:
                logits[frame.open_id] = float("-inf")
            if cfg.open_image and can_open and not answer.parts and not text_ids:
                token = frame.open_id
            else:
                if n_text >= cfg.max_new_tokens:
                    answer.stop = "max_new_tokens"
                    break
                token = sample(logits, cfg.temperature, cfg.top_p, gen)
            if record_logits:
                answer.step_logits.append((length, raw))
            if token == frame.open_id:
                flush_text()
                h = yield from self._image(frame, cfg, answer, record_logits, decode, gen)
                continue
            if token == self.eos:
                answer.ids.append(token)
                answer.stop = "eos"
                break
            text_ids.append(token)
            n_text += 1
            answer.ids.append(token)
            h = yield _Request("feed", token=token)
            answer.text_token_seconds.append(self.token_seconds)
        flush_text()
        answer.seconds = time.perf_counter() - t0
        return answer

    def _image(self, frame, cfg: SamplingConfig, answer: Answer, record_logits: bool, decode: bool, gen):
        """Open an image at the next position, sample its H x W cells, close it; -> the last hidden state."""
        spec = self.spec

        def feed(token: int, visual: torch.Tensor | None = None):
            answer.ids.append(token)
            return (yield _Request("feed", token=token, visual=visual))

        yield _Request("segment", segment=frame.segment(len(answer.ids)))
        h = yield from feed(frame.open_id)
        for t in frame.header:
            h = yield from feed(t)
        continuous = spec.continuous_images
        candidates = None if continuous else spec.image_candidates
        cells = []
        for _ in range(frame.height):
            for _ in range(frame.width):
                if continuous:  # regressed, not sampled: the same embedding is fed back
                    embedding = yield _Request("regress", h)
                    cells.append(embedding.float().cpu())
                    h = yield from feed(spec.cell_id, embedding)
                else:
                    logits = (yield _Request("image", h)).float()
                    if record_logits:
                        answer.step_logits.append((len(answer.ids), logits.clone()))
                    token = int(candidates[sample(logits, cfg.image_temperature, cfg.image_top_p, gen)])
                    cells.append(token)
                    h = yield from feed(token)
                answer.image_token_seconds.append(self.token_seconds)
            for t in frame.row_end:
                h = yield from feed(t)
        for t in frame.close:
            h = yield from feed(t)
        if continuous:
            grid = torch.stack(cells).view(frame.height, frame.width, -1)
            image = None
            if decode and spec.has_pixel_decoder:
                settings = {**cfg.diffusion(), "seed": cfg.seed + len(answer.images)}  # new noise per image
                image = spec.decode_image(grid, self.model, self.negative_embeddings(), settings)
            answer.parts.append(GeneratedImage(None, image, embeddings=grid))
        else:
            codes = spec.ids_to_codes(torch.tensor(cells)).view(frame.height, frame.width)
            answer.parts.append(GeneratedImage(codes, spec.decode_image(codes, self.model) if decode else None))
        return h
