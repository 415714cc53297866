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

import time
from dataclasses import dataclass, field

import torch
from PIL import Image
from pydantic import ConfigDict, ValidationError, model_validator
from torch import nn

from ..config import GenerateSection
from ..data.schema import PLACEHOLDER
from .decoding import IncrementalDecoder


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
    seconds: float = 0.0
    image_token_seconds: list[float] = field(default_factory=list)  # per generated image cell
    text_token_seconds: list[float] = field(default_factory=list)  # per generated text token (its head + step)
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


class Generator:
    """Generates interleaved answers for one model + backbone; reusable across prompts."""

    def __init__(self, model: nn.Module, spec, max_length: int | None = None):
        self.model, self.spec = model, spec
        self.decoder = IncrementalDecoder(model, spec)
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

    @torch.no_grad()
    def generate(self, segments: list, cfg: SamplingConfig = SamplingConfig(), record_logits: bool = False,
                 decode: bool = True) -> Answer:
        """``decode=False``: no pixel decoding (generated images keep only their codes / embeddings)."""
        spec, dec = self.spec, self.decoder
        if decode and spec.continuous_images and spec.has_pixel_decoder:
            self.negative_embeddings()  # before this answer's decoding starts: it runs a generation of its own
        enc = self.encode_prompt(segments)
        frame = spec.image_frame(*spec.generation_grid(cfg.image_size))
        image_len = self._check_length(len(enc["input_ids"]), frame, cfg)
        gen = torch.Generator().manual_seed(cfg.seed)
        t0 = time.perf_counter()
        dec.reset()
        h = dec.prefill(enc["input_ids"], enc["image_layout"], visual=enc.get("visual"))[-1]
        answer = Answer(ids=enc["input_ids"].tolist(), prompt_length=len(enc["input_ids"]))
        answer.step_logits = [] if record_logits else None
        text_ids: list[int] = []
        n_text = 0

        def feed(token: int, visual: torch.Tensor | None = None) -> torch.Tensor:
            answer.ids.append(token)
            return dec.step(token, visual)

        def flush_text() -> None:
            if text_ids:
                answer.parts.append(spec.tokenizer.decode(text_ids, skip_special_tokens=True))
                text_ids.clear()

        while True:
            if dec.length + 1 >= self.max_length:
                answer.stop = "max_length"
                break
            t_token = time.perf_counter()
            logits = spec.text_logits(self.model, h).float()
            raw = logits.clone() if record_logits else None
            logits[self.banned.to(logits.device)] = float("-inf")
            can_open = len(answer.images) < cfg.max_images and dec.length + image_len < self.max_length
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
                answer.step_logits.append((dec.length, raw))
            if token == frame.open_id:
                flush_text()
                h = self._image(frame, feed, cfg, gen, answer, record_logits, decode)
                continue
            if token == self.eos:
                answer.ids.append(token)
                answer.stop = "eos"
                break
            text_ids.append(token)
            n_text += 1
            h = feed(token)
            answer.text_token_seconds.append(time.perf_counter() - t_token)
        flush_text()
        answer.seconds = time.perf_counter() - t0
        return answer

    def _image(self, frame, feed, cfg: SamplingConfig, gen, answer: Answer, record_logits: bool,
               decode: bool = True) -> torch.Tensor:
        """Open an image at the next position, sample its H x W cells, close it; -> the last hidden state."""
        spec, dec = self.spec, self.decoder
        dec.add_segment(frame.segment(dec.length))
        h = feed(frame.open_id)
        for t in frame.header:
            h = feed(t)
        continuous = spec.continuous_images
        candidates = None if continuous else spec.image_candidates
        cells = []
        for _ in range(frame.height):
            for _ in range(frame.width):
                t0 = time.perf_counter()
                if continuous:  # regressed, not sampled: the same embedding is fed back
                    embedding = spec.regress(self.model, h)
                    cells.append(embedding.float().cpu())
                    h = feed(spec.cell_id, embedding)
                else:
                    logits = spec.image_logits(self.model, h).float()
                    if record_logits:
                        answer.step_logits.append((dec.length, logits))
                    token = int(candidates[sample(logits, cfg.image_temperature, cfg.image_top_p, gen)])
                    cells.append(token)
                    h = feed(token)
                answer.image_token_seconds.append(time.perf_counter() - t0)
            for t in frame.row_end:
                h = feed(t)
        for t in frame.close:
            h = feed(t)
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
