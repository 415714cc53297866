"""BackboneSpec: everything the rest of the project needs to know about one VLG family.

A spec is bound to a checkpoint: ``"tiny"`` (a seeded random config of the real transformers class,
with a byte-level tokenizer and a fixed-seed VQ, for laptops and tests) or a hub id / local path.
"""

from __future__ import annotations

import json
import os
import re
from abc import ABC, abstractmethod
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from ..moss.layout import ImageLayout, ImageSegment

IGNORE_INDEX = -100
TINY = "tiny"
TINY_VQ_SEED = 1234  # a preset's image tokenizer is the same whatever seed the model is built with
# Random-init presets of the real classes: "tiny" for tests and laptops, "small" for the CPU
# adapter benchmark, "large" for short GPU checks. grid = image side in VQ codes.
RANDOM_PRESETS = {
    "tiny": dict(hidden=64, intermediate=128, layers=2, heads=4, grid=8),
    "small": dict(hidden=512, intermediate=1376, layers=4, heads=8, grid=16),
    "large": dict(hidden=2048, intermediate=5504, layers=16, heads=16, grid=32),
}
PROJ_TAIL = r"(self_attn\.(q|k|v|o)_proj|mlp\.(gate|up|down)_proj)"
PROJS_PER_LAYER = 7


def unwrap(model: nn.Module) -> nn.Module:
    """The transformers model under PEFT / DDP wrappers (PEFT is imported when first needed)."""
    from ..moss.peft import unwrap as _unwrap

    return _unwrap(model)


def set_layout(model: nn.Module, layout: ImageLayout) -> None:
    """orchestrator.moss.set_layout, imported when first needed (tokenizing workers never load PEFT)."""
    from ..moss.peft import set_layout as _set_layout

    _set_layout(model, layout)


@dataclass
class LossOutput:
    """Total loss plus per-modality means (None when a batch has no target of that modality)."""

    loss: torch.Tensor
    text_loss: torch.Tensor | None
    image_loss: torch.Tensor | None
    n_text: int
    n_image: int

    def metrics(self) -> dict[str, float]:
        out = {"loss": float(self.loss.detach()), "n_text_tokens": self.n_text, "n_image_tokens": self.n_image}
        for k in ("text_loss", "image_loss"):
            v = getattr(self, k)
            if v is not None:
                out[k] = float(v.detach())
        return out


def split_loss(term, labels: torch.Tensor, is_image_target, weights: tuple[float, float], like: torch.Tensor) -> LossOutput:
    """Next-token loss at labelled positions, split by target modality.

    Position t predicts labels[t + 1]. ``term(sel, image) -> summed loss`` of the positions ``sel``
    ((B, T-1) mask over the shifted targets) of one modality; ``is_image_target(targets)`` says which
    targets are images. loss = (w_text * sum_text + w_image * sum_image) / (n_text + n_image): with
    weights (1, 1) the usual token mean; text_loss / image_loss are the unweighted per-modality means.
    """
    tgt = labels[:, 1:]
    valid = tgt != IGNORE_INDEX
    img = valid & is_image_target(tgt)
    txt = valid & ~img
    sums, means, counts = [], [], []
    for sel, image in ((txt, False), (img, True)):
        n = int(sel.sum())
        counts.append(n)
        if n == 0:
            means.append(None)
            continue
        s = term(sel, image)
        sums.append(s * weights[int(image)])
        means.append(s.detach() / n)
    total = sum(counts)
    loss = sum(sums) / max(total, 1) if sums else like.sum() * 0.0
    return LossOutput(loss, means[0], means[1], counts[0], counts[1])


def split_ce(
    logits_fn, h: torch.Tensor, labels: torch.Tensor, is_image_target, weights: tuple[float, float],
    chunk: int | None = None,
) -> LossOutput:
    """split_loss with cross-entropy for both modalities. h: (B, T, D) hidden states; ``logits_fn(h_sel,
    targets, image: bool) -> (logits, targets)`` maps selected hidden rows to logits over the right
    vocabulary (and the targets into that head's index space). ``chunk``: see chunked_cross_entropy."""
    hp, tgt = h[:, :-1], labels[:, 1:]

    def term(sel: torch.Tensor, image: bool) -> torch.Tensor:
        return chunked_cross_entropy(lambda r, t: logits_fn(r, t, image), hp[sel], tgt[sel], chunk)

    return split_loss(term, labels, is_image_target, weights, h)


def chunked_cross_entropy(logits_fn, rows: torch.Tensor, targets: torch.Tensor, chunk: int | None) -> torch.Tensor:
    """Summed CE of (n, D) hidden rows against (n,) targets, ``chunk`` rows at a time.

    Each chunk's logits (fp32, n x vocab: the largest activation of a step for a 65k-185k vocabulary) are
    freed as soon as its loss is summed and recomputed in the backward pass (activation checkpointing of
    the head), so a step holds one chunk's logits instead of all of them. Same value and gradient.
    """

    def ce_sum(r: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        logits, mapped = logits_fn(r, t)
        return F.cross_entropy(logits.float(), mapped, reduction="sum")

    if chunk is None or rows.shape[0] <= chunk:
        return ce_sum(rows, targets)
    pieces = zip(rows.split(chunk), targets.split(chunk))
    if not torch.is_grad_enabled():
        return sum(ce_sum(r, t) for r, t in pieces)
    from torch.utils.checkpoint import checkpoint

    return sum(checkpoint(ce_sum, r, t, use_reentrant=False) for r, t in pieces)


class ImagePiece(list):
    """An image's token ids (a list) that also carries the image the model embeds itself (``image``):
    backbones with continuous image inputs (Emu2) keep the resized pixels next to the placeholders."""

    def __init__(self, ids, image: Image.Image):
        super().__init__(ids)
        self.image = image


@dataclass(frozen=True)
class HubCheckpoint:
    """What is known of a published checkpoint without downloading it: its size in ``real_sizes``, and
    either why it cannot load (``error``: a format that is not a transformers checkpoint) or a caveat."""

    size: str
    error: str | None = None
    warning: str | None = None


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


class BackboneSpec(ABC):
    """One VLG family. Subclasses fill the abstract parts; see chameleon.py, emu3.py, janus.py."""

    name: str
    model_class: type
    #: published checkpoints: hub id -> what is known of it (size, format errors, caveats)
    hub_checkpoints: dict[str, HubCheckpoint] = {}
    #: published sizes for meta-device builds: name -> config kwargs (see real_size_config)
    real_sizes: dict[str, dict] = {}
    #: the model_type(s) a local checkpoint's config.json must name for this family
    model_types: tuple[str, ...] = ()
    #: the output-head rows ``adapter.train_image_head`` can train (image codes in lm_head), or None
    image_head_module: str | None = None

    def __init__(self, checkpoint: str = TINY, revision: str | None = None, trust_remote_code: bool = False):
        self.checkpoint = checkpoint
        self.revision, self.trust_remote_code = revision, trust_remote_code

    @property
    def hub(self) -> dict:
        """What every from_pretrained / hub download of the checkpoint passes: the pinned revision."""
        return {"revision": self.revision} if self.revision else {}

    def __repr__(self) -> str:
        return f"{type(self).__name__}(checkpoint={self.checkpoint!r})"

    # ---- building ---------------------------------------------------------------------------------
    @property
    def is_random(self) -> bool:
        return self.checkpoint in RANDOM_PRESETS

    @property
    def preset(self) -> dict:
        return RANDOM_PRESETS[self.checkpoint]

    @abstractmethod
    def random_config(self):
        """The random-init config of the real class for this spec's preset (see RANDOM_PRESETS)."""

    @abstractmethod
    def real_size_config(self, size: str):
        """The config of a published checkpoint size (for meta-device parameter counts)."""

    @abstractmethod
    def decoder_layers(self, model: nn.Module) -> nn.ModuleList:
        """The language model's decoder layers (the only place adapters go)."""

    @property
    @abstractmethod
    def target_modules(self) -> str:
        """Regex (PEFT fullmatch) of the language model's q/k/v/o/gate/up/down projections."""

    def build(self, checkpoint: str | None = None, seed: int = 0, dtype: torch.dtype | None = None) -> nn.Module:
        checkpoint = checkpoint or self.checkpoint
        if checkpoint != self.checkpoint:
            return type(self)(checkpoint).build(seed=seed, dtype=dtype)
        if self.is_random:
            torch.manual_seed(seed)
            model = self.model_class(self.random_config())
            self.vq_module(model).load_state_dict(self.tiny_vq().state_dict())
            model = model.to(dtype) if dtype is not None else model
        else:
            # safetensors only: a pickled .bin checkpoint can run code when loaded
            model = self.model_class.from_pretrained(checkpoint, dtype=dtype or "auto", use_safetensors=True, **self.hub)
        return model.eval()

    @abstractmethod
    def tiny_image_processor(self):
        """The real image-processor class of the family, sized for the tiny VQ (for export_tiny)."""

    def export_tiny(self, directory: str, seed: int = 0) -> str:
        """Write a complete local checkpoint (weights, tokenizer, image processor) of the tiny model.

        ``get_backbone(name, checkpoint=directory)`` then exercises the same loading code as a hub id.
        """
        if not self.is_random:
            raise ValueError("export_tiny needs a spec bound to a random-init preset")
        self.build(seed=seed).save_pretrained(directory)
        self.tokenizer.save_pretrained(directory)
        self.tiny_image_processor().save_pretrained(directory)
        return directory

    def build_meta(self, size: str) -> nn.Module:
        with torch.device("meta"):
            return self.model_class(self.real_size_config(size))

    def image_budget(self, config) -> ImageBudget:
        """Tokens per image for a model config (no weights): a fixed grid plus its begin/end tokens."""
        h, w = self.config_grid(config)
        n = h * w + 2
        return ImageBudget((h, w), (h, w), n, n, f"{h}x{w} grid")

    def config_grid(self, config) -> tuple[int, int]:
        """The fixed (h, w) image grid a model config implies (fixed-grid backbones)."""
        raise NotImplementedError(f"{self.name}: no fixed image grid")

    @staticmethod
    def position_limit(config) -> int | None:
        """The language model's position limit (max_position_embeddings), where the config says it."""
        text = getattr(config, "text_config", None) or config
        return getattr(text, "max_position_embeddings", None)

    def enable_activation_checkpointing(self, model: nn.Module) -> None:
        """Recompute decoder activations in the backward pass (transformers' gradient checkpointing)."""
        unwrap(model).gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})

    def expected_target_count(self, model: nn.Module) -> int:
        return len(self.decoder_layers(unwrap(model))) * PROJS_PER_LAYER

    # ---- tokenization -----------------------------------------------------------------------------
    @abstractmethod
    def tiny_tokenizer_specials(self) -> list[str]:
        """Special tokens of the tiny byte-level tokenizer (named as in the real tokenizer)."""

    def vq_module(self, model: nn.Module) -> nn.Module:
        """The model's image tokenizer (VQ-VAE) submodule."""
        return model.model.vqmodel

    @cached_property
    def model_config(self):
        """The checkpoint's config (no weights loaded)."""
        if self.is_random:
            return self.random_config()
        from transformers import AutoConfig

        return AutoConfig.from_pretrained(self.checkpoint, **self.hub)

    #: transformers' class mapping VQ codes <-> vocabulary ids (backbones whose codes are tokens)
    vocab_mapping_class: type | None = None

    @cached_property
    def vocab_mapping(self):
        return self.vocab_mapping_class(self.model_config.vocabulary_map)

    @cached_property
    def image_token_ids(self) -> torch.Tensor:
        """Sorted vocabulary ids of the image codes."""
        return torch.tensor(self.vocab_mapping.image_tokens, dtype=torch.long)

    @abstractmethod
    def image_codes(self, pixel_values: torch.Tensor, image_size: tuple[int, int]) -> torch.Tensor:
        """(1, 3, H, W) pixels -> (h, w) VQ code grid."""

    @abstractmethod
    def image_tokens(self, codes: torch.Tensor) -> list[int]:
        """(h, w) code grid -> the token ids that represent the image in input_ids (with its specials)."""

    @cached_property
    def tokenizer(self):
        """The text tokenizer (a real HF tokenizer; byte-level BPE for tiny)."""
        if self.is_random:
            return build_byte_tokenizer(self.tiny_tokenizer_specials())
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(self.checkpoint, **self.hub)

    def token_id(self, token: str) -> int:
        tid = self.tokenizer.convert_tokens_to_ids(token)
        if tid is None or tid == self.tokenizer.unk_token_id:
            raise KeyError(f"{self.name}: token {token!r} is not in the tokenizer of {self.checkpoint}")
        return tid

    def tiny_vq(self) -> nn.Module:
        """The fixed tiny image tokenizer (seeded independently of the model seed)."""
        if not hasattr(self, "_tiny_vq"):
            torch.manual_seed(TINY_VQ_SEED)
            self._tiny_vq = self.vq_module(self.model_class(self.random_config())).eval()
        return self._tiny_vq

    @cached_property
    def vq(self) -> nn.Module:
        if self.is_random:
            return self.tiny_vq()
        return load_submodule(self.checkpoint, self.model_class, self.vq_module, self.vq_prefixes, self.revision).eval()

    vq_prefixes = ("model.vqmodel.", "vqmodel.")

    @cached_property
    def image_processor(self):
        if self.is_random:
            return None
        from transformers import AutoImageProcessor

        return AutoImageProcessor.from_pretrained(self.checkpoint, **self.hub)

    @abstractmethod
    def tiny_image_size(self, image: Image.Image) -> tuple[int, int]:
        """(H, W) in pixels that the tiny VQ takes this image at."""

    def preprocess(self, image: Image.Image) -> tuple[torch.Tensor, tuple[int, int]]:
        """PIL image -> ((1, 3, H, W) pixels, (H, W)) for the VQ."""
        image = image.convert("RGB")
        if self.image_processor is not None:
            out = self.image_processor(images=image, return_tensors="pt")
            px = out["pixel_values"]
            size = tuple(int(s) for s in out["image_sizes"][0]) if "image_sizes" in out else tuple(px.shape[-2:])
            return px, size
        h, w = self.tiny_image_size(image)
        arr = np.asarray(image.resize((w, h), Image.BICUBIC), dtype=np.float32) / 127.5 - 1.0
        return torch.from_numpy(arr).permute(2, 0, 1).unsqueeze(0), (h, w)

    def text_ids(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    @torch.no_grad()
    def encode_image(self, image: Image.Image) -> list[int]:
        px, size = self.preprocess(image)
        vq_dtype = next(self.vq.parameters()).dtype
        return self.image_tokens(self.image_codes(px.to(vq_dtype), size))

    def encode(self, segments: list[Any], targets: list[bool] | None = None, add_bos: bool = True) -> dict:
        """Interleaved segments (str | PIL.Image) -> {"input_ids", "labels", "image_layout"} for one sequence.

        targets[i] says whether segment i is trained on (its tokens keep their labels); by default all
        are. Untrained segments get label -100; images among them are marked as prompt images.
        """
        targets = [True] * len(segments) if targets is None else list(targets)
        if len(targets) != len(segments):
            raise ValueError(f"{len(segments)} segments but {len(targets)} target flags")
        return self.assemble(self.encode_pieces(segments), targets, add_bos=add_bos)

    def encode_pieces(self, segments: list[Any]) -> list[list[int]]:
        """The token ids of each segment on its own (an image's include its begin/end tokens)."""
        pieces = []
        for seg in segments:
            if isinstance(seg, str):
                pieces.append(self.text_ids(seg))
            elif isinstance(seg, Image.Image):
                pieces.append(self.encode_image(seg))
            else:
                raise TypeError(f"segment of type {type(seg).__name__}: expected str or PIL.Image")
        return pieces

    def assemble(self, pieces: list[list[int]], targets: list[bool], add_bos: bool = True, add_eos: bool = True) -> dict:
        """Encoded pieces -> one sequence: BOS + pieces (+ EOS after a trained last piece)."""
        ids: list[int] = [self.tokenizer.bos_token_id] if add_bos and self.tokenizer.bos_token_id is not None else []
        labels = [IGNORE_INDEX] * len(ids)
        images = []
        for piece, trained in zip(pieces, targets):
            ids += piece
            if isinstance(piece, ImagePiece):
                images.append(piece.image)
            labels += piece if trained else [IGNORE_INDEX] * len(piece)
        if add_eos and self.tokenizer.eos_token_id is not None and (not targets or targets[-1]):
            ids.append(self.tokenizer.eos_token_id)
            labels.append(self.tokenizer.eos_token_id)
        input_ids = torch.tensor(ids, dtype=torch.long)
        label_t = torch.tensor(labels, dtype=torch.long)
        layout = self.image_layout(input_ids[None], label_t[None])
        out = {"input_ids": input_ids, "labels": label_t, "image_layout": layout.segments[0]}
        if self.continuous_images:
            out["images"] = images  # the pixels behind the placeholders, in layout order
        return out

    def collate(self, examples: list[dict]) -> dict:
        """Right-pad encoded sequences into a batch with an ImageLayout."""
        T = max(int(e["input_ids"].numel()) for e in examples)
        pad = self.tokenizer.pad_token_id or 0
        ids = torch.full((len(examples), T), pad, dtype=torch.long)
        labels = torch.full((len(examples), T), IGNORE_INDEX, dtype=torch.long)
        mask = torch.zeros((len(examples), T), dtype=torch.long)
        for b, e in enumerate(examples):
            n = e["input_ids"].numel()
            ids[b, :n], labels[b, :n], mask[b, :n] = e["input_ids"], e["labels"], 1
        layout = ImageLayout(tuple(tuple(e["image_layout"]) for e in examples), T)
        return {"input_ids": ids, "labels": labels, "attention_mask": mask, "image_layout": layout}

    # ---- layout + loss ----------------------------------------------------------------------------
    @abstractmethod
    def image_layout(self, input_ids: torch.Tensor, labels: torch.Tensor | None = None) -> ImageLayout:
        """(B, T) ids -> the image segments of each sequence, in raster order."""

    def hidden_states(self, model: nn.Module, batch: dict) -> torch.Tensor:
        """(B, T, D) last decoder hidden states; the MoSS layout comes from batch["image_layout"]."""
        set_layout(model, batch["image_layout"])
        base = unwrap(model)
        return base.model(input_ids=batch["input_ids"], attention_mask=batch.get("attention_mask")).last_hidden_state

    def head(self, model: nn.Module, rows: torch.Tensor, targets: torch.Tensor, image: bool):
        """Logits for selected hidden rows (and the targets in that head's index space)."""
        return unwrap(model).lm_head(rows), targets

    def is_image_target(self, targets: torch.Tensor) -> torch.Tensor:
        return torch.isin(targets, self.image_token_ids.to(targets.device))

    def loss(self, model: nn.Module, batch: dict, weights: tuple[float, float] = (1.0, 1.0),
             chunk: int | None = None) -> LossOutput:
        """Text CE + image CE on a collated batch, weighted (text, image), computed from hidden states.

        Logits come from the heads directly, never from the HF forward (Chameleon masks image logits),
        ``chunk`` target rows at a time (chunked_cross_entropy; None: all at once).
        Under DDP wrap ``spec.loss_module(model)`` and call that, so the forward runs through DDP.
        """
        if isinstance(model, nn.parallel.DistributedDataParallel):
            raise TypeError(
                "spec.loss would bypass DistributedDataParallel.forward (no gradient all-reduce): wrap "
                "spec.loss_module(model) in DDP and call the wrapper with the batch instead"
            )
        h = self.hidden_states(model, batch)
        return split_ce(lambda r, t, image: self.head(model, r, t, image), h, batch["labels"], self.is_image_target,
                        weights, chunk)

    def loss_module(self, model: nn.Module, weights: tuple[float, float] = (1.0, 1.0),
                    chunk: int | None = None) -> LossModule:
        return LossModule(model, self, weights, chunk)

    def layout_modules(self, model: nn.Module) -> tuple[nn.Module, nn.Module]:
        """(module that receives input_ids, module that runs the decoder layers)."""
        return model.model, model.model

    # ---- generation -------------------------------------------------------------------------------
    #: images enter as continuous embeddings the model computes from pixels (Emu2), not as VQ code ids
    continuous_images = False
    #: the image loss is a cross-entropy over codes (so image perplexity means something)
    image_loss_is_ce = True

    def count_visual(self, input_ids: torch.Tensor) -> int:
        """How many positions of ``input_ids`` take a visual embedding (continuous-image backbones)."""
        return 0

    def forward_hidden(self, model: nn.Module, input_ids: torch.Tensor, cache=None, visual=None):
        """(B, T) new ids after ``cache`` -> ((B, T, D) hidden states, the grown KV cache).

        ``visual``: embeddings of the ids that take one (continuous-image backbones only)."""
        if visual is not None:
            raise ValueError(f"{self.name} images are token ids: no visual embeddings to feed")
        out = unwrap(model).model(input_ids=input_ids, cache=cache, use_cache=True)
        return out.last_hidden_state, out.cache

    def text_logits(self, model: nn.Module, h: torch.Tensor) -> torch.Tensor:
        """(..., D) hidden -> (..., vocab) next-token logits over the text vocabulary (image ids masked later)."""
        return unwrap(model).lm_head(h)

    @cached_property
    def image_candidates(self) -> torch.Tensor:
        """The ids an image cell may take, in the order of ``image_logits``' last dimension."""
        return self.image_token_ids

    def image_logits(self, model: nn.Module, h: torch.Tensor) -> torch.Tensor:
        """(..., D) hidden -> (..., n_codes) logits over ``image_candidates`` only."""
        head = unwrap(model).lm_head
        if getattr(self, "_image_rows_of", None) is not head.weight:  # the rows of the code ids, sliced once
            self._image_rows, self._image_rows_of = head.weight[self.image_candidates.to(head.weight.device)], head.weight
        return h @ self._image_rows.t()

    def ids_to_codes(self, ids: torch.Tensor) -> torch.Tensor:
        """Image-cell ids -> VQ codebook indices."""
        bpe2img = self.vocab_mapping.bpe2img
        return torch.tensor([bpe2img[int(t)] for t in ids.flatten()], dtype=torch.long).view(ids.shape)

    @abstractmethod
    def image_frame(self, height: int, width: int) -> ImageFrame:
        """The tokens around a generated height x width image."""

    def generation_grid(self, size: tuple[int, int] | None = None) -> tuple[int, int]:
        """(h, w) in codes of a generated image; fixed-grid backbones refuse another size."""
        grid = tuple(self.grid)
        if size is not None and tuple(size) != grid:
            raise ValueError(f"{self.name} ({self.checkpoint}) generates {grid[0]}x{grid[1]} code grids only, not {size}")
        return grid

    def text_banned_ids(self) -> list[int]:
        """Ids never sampled as text: padding, image codes, and the tokens only an image frame places."""
        frame = self.image_frame(*self.generation_grid())
        banned = {self.tokenizer.pad_token_id, *frame.close, *frame.row_end}
        banned.update(set(frame.header) - set(self.text_ids("0123456789*")))  # Emu3's <|image token|>
        mapping = self.vocab_mapping if self.vocab_mapping_class is not None else None
        if mapping is not None and mapping.image_token_id is not None:
            banned.add(mapping.image_token_id)  # the processor's placeholder
        banned.discard(None)
        return sorted(banned) + self.image_token_ids.tolist()

    #: whether transformers has a pixel decoder for this backbone's VQ codes (decode_image)
    has_pixel_decoder = False

    def decode_image(self, codes: torch.Tensor, model: nn.Module | None = None) -> Image.Image | None:
        """(h, w) codes -> a PIL image through the VQ decoder (the model's own when given, e.g. on GPU);
        None when the backbone has none."""
        return None

    #: said where an image has no pixels (e.g. in `moss generate`'s summary)
    @property
    def pixel_note(self) -> str:
        return f"{self.name}: no pixel decoder in transformers; decode the codes with the VQGAN decoder"

    def target_grid(self, model: nn.Module, image: Image.Image) -> torch.Tensor:
        """An image -> what generation produces for it: the (h, w) VQ code grid."""
        px, size = self.preprocess(image)
        return self.image_codes(px.to(next(self.vq.parameters()).dtype), size)

    def grid_scores(self, generated: torch.Tensor, target: torch.Tensor) -> dict:
        """Agreement of a generated and a target grid: the fraction of equal codes (None for another shape)."""
        same = generated.shape == target.shape
        return {"code_match": float((generated == target).float().mean()) if same else None}

    def image_fingerprint(self) -> dict:
        """Identity of the image tokenizer, so shards can be matched to a model (manifest)."""
        import hashlib

        h = hashlib.sha256()
        for k, v in sorted(self.vq.state_dict().items()):
            h.update(k.encode())
            h.update(v.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
        return {"vq": {"class": type(self.vq).__name__, "sha256": h.hexdigest()[:16]}}

    def pixel_vq(self, model: nn.Module | None) -> nn.Module:
        return self.vq_module(unwrap(model)) if model is not None else self.vq


class LossModule(nn.Module):
    """``module(batch) -> LossOutput``: the loss as a module forward, for DDP / FSDP wrappers."""

    def __init__(self, model: nn.Module, spec: BackboneSpec, weights: tuple[float, float] = (1.0, 1.0),
                 chunk: int | None = None):
        super().__init__()
        self.model, self.spec, self.weights, self.chunk = model, spec, weights, chunk

    def forward(self, batch: dict) -> LossOutput:
        return self.spec.loss(self.model, batch, self.weights, self.chunk)


def pixels_to_image(pixels: torch.Tensor) -> Image.Image:
    """(3, H, W) VQ decoder output in [-1, 1] -> an RGB PIL image."""
    arr = ((pixels.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()
    return Image.fromarray(arr, "RGB")


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


def build_byte_tokenizer(specials: list[str]):
    """A real HF fast tokenizer: byte-level BPE without merges; ids 0..15 specials, 16..271 bytes."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from tokenizers.pre_tokenizers import ByteLevel
    from transformers import PreTrainedTokenizerFast

    if len(specials) > 16:
        raise ValueError("at most 16 special tokens")
    vocab = {t: i for i, t in enumerate(specials)}
    vocab.update({ch: 16 + i for i, ch in enumerate(sorted(ByteLevel.alphabet()))})
    tk = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    tk.add_special_tokens(specials)
    return PreTrainedTokenizerFast(tokenizer_object=tk, pad_token=specials[0], bos_token=specials[1], eos_token=specials[2])


TINY_TEXT_VOCAB = 512  # specials + bytes fit below; tiny image codes start here


def load_submodule(checkpoint: str, model_class, get_sub, prefixes: tuple[str, ...], revision: str | None = None) -> nn.Module:
    """Load one submodule (e.g. the VQ) of a checkpoint without loading the language model weights.

    Saved key layouts differ from module names (transformers 5 converts some on save, e.g. Emu3 writes
    ``vqmodel.*`` for ``model.vqmodel.*``), so the first prefix present in the checkpoint is used.
    """
    from safetensors import safe_open
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(checkpoint, revision=revision)
    with torch.device("meta"):
        shell = model_class(config)
    sub = get_sub(shell)
    keys = _weight_index(checkpoint, revision)
    prefix = next((p for p in prefixes if any(k.startswith(p) for k in keys)), None)
    if prefix is None:
        raise KeyError(f"no weights under any of {prefixes} in {checkpoint}")
    state = {}
    for name in sorted({f for k, f in keys.items() if k.startswith(prefix)}):
        with safe_open(checkpoint_file(checkpoint, name, revision), framework="pt") as f:
            state.update({k[len(prefix) :]: f.get_tensor(k) for k in f.keys() if k.startswith(prefix)})
    sub.load_state_dict(state, strict=True, assign=True)
    return sub


def checkpoint_file(checkpoint: str, name: str, revision: str | None = None) -> str | None:
    if os.path.isdir(checkpoint):
        p = os.path.join(checkpoint, name)
        return p if os.path.exists(p) else None
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError

    try:
        return hf_hub_download(checkpoint, name, revision=revision)
    except EntryNotFoundError:
        return None


def _weight_index(checkpoint: str, revision: str | None = None) -> dict[str, str]:
    """Tensor name -> safetensors file name, for a single-file or sharded checkpoint."""
    index = checkpoint_file(checkpoint, "model.safetensors.index.json", revision)
    if index is not None:
        return json.loads(open(index).read())["weight_map"]
    single = checkpoint_file(checkpoint, "model.safetensors", revision)
    if single is None:
        raise FileNotFoundError(f"{checkpoint}: no model.safetensors(.index.json)")
    from safetensors import safe_open

    with safe_open(single, framework="pt") as f:
        return {k: "model.safetensors" for k in f.keys()}


def decoder_regex(stack: str) -> str:
    """Regex for the 7 projections of every decoder layer under ``stack`` (e.g. 'model.layers')."""
    return re.escape(stack) + r"\.\d+\." + PROJ_TAIL
