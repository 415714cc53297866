"""BackboneSpec: the core of what the rest of the project needs to know about one VLG family.

A spec is bound to a checkpoint: ``"tiny"`` (a seeded random config of the real transformers class,
with a byte-level tokenizer, for laptops and tests) or a hub id / local path. This module holds what every
family shares (building, tokenizing text, batching, the loss, one decoding step); how images enter is a
family's own: VQ codes as tokens (vq.py: Chameleon, Emu3, Janus) or continuous embeddings (emu2/).

Capabilities callers branch on are attributes of the spec (``continuous_images``, ``image_loss_is_ce``,
``has_pixel_decoder``, ``config_options``, ``pipeline_subfolder``, ``remote_code``...), so no code outside
this package names a backbone.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from functools import cached_property
from operator import attrgetter
from typing import Any

import torch
from PIL import Image
from torch import nn

from ..layout import ImageLayout
from ..wrappers import unwrap
from .frame import ImageBudget, ImageFrame, ImagePiece, frame_positions
from .heads import init_confident_heads
from .hub import HubCheckpoint, language_config
from .loss import IGNORE_INDEX, LossOutput, refuse_ddp, split_ce
from .tokenizer import build_byte_tokenizer

TINY = "tiny"
# Random-init presets of the real classes: "tiny" for tests and laptops, "small" for the CPU
# adapter benchmark, "large" for short GPU checks. grid = image side in VQ codes.
RANDOM_PRESETS = {
    "tiny": dict(hidden=64, intermediate=128, layers=2, heads=4, grid=8),
    "small": dict(hidden=512, intermediate=1376, layers=4, heads=8, grid=16),
    "large": dict(hidden=2048, intermediate=5504, layers=16, heads=16, grid=32),
}
PROJ_TAIL = r"(self_attn\.(q|k|v|o)_proj|mlp\.(gate|up|down)_proj)"
PROJS_PER_LAYER = 7


def decoder_regex(stack: str) -> str:
    """Regex for the 7 projections of every decoder layer under ``stack`` (e.g. 'model.layers')."""
    return re.escape(stack) + r"\.\d+\." + PROJ_TAIL


class BackboneSpec(ABC):
    """One VLG family. Subclasses fill the abstract parts; see vq.py (and chameleon/emu3/janus) and emu2/."""

    name: str
    model_class: type
    #: dotted path from the transformers model to its decoder layers (a ModuleList), e.g. "model.layers":
    #: adapters go on those layers' projections, activation sharding wraps them, layouts hook their parent
    decoder_path: str
    #: published checkpoints: hub id -> what is known of it (size, format errors, caveats)
    hub_checkpoints: dict[str, HubCheckpoint] = {}
    #: published sizes for meta-device builds: name -> config kwargs (see real_size_config)
    real_sizes: dict[str, dict] = {}
    #: the model_type(s) a local checkpoint's config.json must name for this family
    model_types: tuple[str, ...] = ()
    #: the output-head rows ``adapter.train_image_head`` can train (image codes in lm_head), or None
    image_head_module: str | None = None
    #: run-config keys of the backbone section this family takes -> the spec's constructor argument
    config_options: dict[str, str] = {}
    #: images enter as continuous embeddings the model computes from pixels (Emu2), not as VQ code ids
    continuous_images = False
    #: the image loss is a cross-entropy over codes (so image perplexity means something)
    image_loss_is_ce = True
    #: whether pixels can be decoded from what generation produces (decode_image)
    has_pixel_decoder = False
    #: a checkpoint may be a pipeline folder (model_index.json) whose language model sits in this subfolder
    pipeline_subfolder: str | None = None
    #: published checkpoints load through code they ship (config.json auto_map): needs trust_remote_code
    remote_code = False
    #: the model_type of this project's own stand-in export, which loads without remote code
    standin_model_type: str | None = None
    #: how to turn another published format into a transformers checkpoint (said when a format is refused)
    conversion_hint = ""
    #: the Linear layers that produce logits (and feed them inside a head): presets redraw them (heads.py)
    logit_heads: tuple[str, ...] = ("lm_head",)
    head_inputs: tuple[str, ...] = ()

    def __init__(self, checkpoint: str = TINY, revision: str | None = None, trust_remote_code: bool = False):
        self.checkpoint = checkpoint
        self.revision, self.trust_remote_code = revision, trust_remote_code

    @property
    def hub(self) -> dict:
        """What every from_pretrained / hub download of the checkpoint passes: the pinned revision."""
        return {"revision": self.revision} if self.revision else {}

    def __repr__(self) -> str:
        return f"{type(self).__name__}(checkpoint={self.checkpoint!r})"

    @classmethod
    def image_loss_kind(cls, options: dict) -> str:
        """The kind of image loss a run with these spec options trains (losses of one kind compare)."""
        return "cross-entropy"

    @classmethod
    def shard_settings(cls, options: dict) -> dict:
        """What the spec options change in tokenized shards, as the manifest's fingerprint records it; shards
        made with other settings are refused before training."""
        return {}

    @staticmethod
    def square_side_within(budget: int) -> int:
        """Backbones whose image area is a setting: the largest square grid side that fits ``budget``
        tokens (0: the grid is fixed, or none fits)."""
        return 0

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

    def size_config(self):
        """(config, where it came from) for a checkpoint AutoConfig cannot read here; None: use AutoConfig."""
        return None

    def decoder_layers(self, model: nn.Module) -> nn.ModuleList:
        """The language model's decoder layers (the only place adapters go)."""
        return attrgetter(self.decoder_path)(unwrap(model))

    @property
    def target_modules(self) -> str:
        """Regex (PEFT fullmatch) of the language model's q/k/v/o/gate/up/down projections."""
        return decoder_regex(self.decoder_path)

    def layout_modules(self, model: nn.Module) -> tuple[nn.Module, nn.Module]:
        """(module that receives input_ids, module that runs the decoder layers)."""
        return attrgetter(self.decoder_path.split(".")[0])(model), attrgetter(self.decoder_path.rsplit(".", 1)[0])(model)

    def build(self, checkpoint: str | None = None, seed: int = 0, dtype: torch.dtype | None = None) -> nn.Module:
        checkpoint = checkpoint or self.checkpoint
        if checkpoint != self.checkpoint:
            return self.rebind(checkpoint).build(seed=seed, dtype=dtype)
        if self.is_random:
            torch.manual_seed(seed)
            model = self.model_class(self.random_config())
            self.init_random(model)
            init_confident_heads(model, self.logit_heads, self.head_inputs, seed)
            model = model.to(dtype) if dtype is not None else model
        else:
            model = self.load(dtype)
        return model.eval()

    def rebind(self, checkpoint: str) -> BackboneSpec:
        """This spec, with the same settings, bound to another checkpoint."""
        return type(self)(checkpoint)

    def init_random(self, model: nn.Module) -> None:
        """Finish a random-init build (e.g. put in the preset's fixed image tokenizer)."""

    def load(self, dtype: torch.dtype | None) -> nn.Module:
        # safetensors only: a pickled .bin checkpoint can run code when loaded
        return self.model_class.from_pretrained(self.checkpoint, dtype=dtype or "auto", use_safetensors=True, **self.hub)

    def tiny_image_processor(self):
        """The real image-processor class of the family, sized for the tiny preset (None: the family has none)."""
        return None

    def export_tiny(self, directory: str, seed: int = 0) -> str:
        """Write a complete local checkpoint (weights, tokenizer, image processor) of the tiny model: loading
        it (``get_backbone(name, checkpoint=directory)``) exercises the same code as a hub id."""
        if not self.is_random:
            raise ValueError("export_tiny needs a spec bound to a random-init preset")
        self.build(seed=seed).save_pretrained(directory)
        self.tokenizer.save_pretrained(directory)
        processor = self.tiny_image_processor()
        if processor is not None:
            processor.save_pretrained(directory)
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
        return getattr(language_config(config), "max_position_embeddings", None)

    def enable_activation_checkpointing(self, model: nn.Module) -> None:
        """Recompute decoder activations in the backward pass (transformers' gradient checkpointing)."""
        unwrap(model).gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})

    def expected_target_count(self, model: nn.Module) -> int:
        return len(self.decoder_layers(model)) * PROJS_PER_LAYER

    # ---- tokenization -----------------------------------------------------------------------------
    @abstractmethod
    def tiny_tokenizer_specials(self) -> list[str]:
        """Special tokens of the tiny byte-level tokenizer (named as in the real tokenizer)."""

    @cached_property
    def model_config(self):
        """The checkpoint's config (no weights loaded)."""
        if self.is_random:
            return self.random_config()
        from transformers import AutoConfig

        return AutoConfig.from_pretrained(self.checkpoint, **self.hub)

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

    def text_ids(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    @abstractmethod
    def encode_image(self, image: Image.Image) -> list[int]:
        """An image -> its token ids in input_ids, with its begin/end tokens (an ImagePiece when the model
        embeds the pixels itself)."""

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
        """(B, T, D) last decoder hidden states. An adapter that routes by image position gets the batch's
        ``image_layout`` from whoever runs the forward (orchestrator.moss.set_layout), not from here."""
        base = unwrap(model)
        return base.model(input_ids=batch["input_ids"], attention_mask=batch.get("attention_mask")).last_hidden_state

    def head(self, model: nn.Module, rows: torch.Tensor, targets: torch.Tensor, image: bool):
        """Logits for selected hidden rows (and the targets in that head's index space)."""
        return unwrap(model).lm_head(rows), targets

    @abstractmethod
    def is_image_target(self, targets: torch.Tensor) -> torch.Tensor:
        """Which target ids are image cells."""

    def loss(self, model: nn.Module, batch: dict, weights: tuple[float, float] = (1.0, 1.0),
             chunk: int | None = None, per_row: bool = False) -> LossOutput:
        """Text CE + image CE on a collated batch, weighted (text, image), computed from hidden states; frame
        tokens apart in the metrics. Logits come from the heads directly, never from the HF forward (Chameleon
        masks image logits), ``chunk`` target rows at a time (chunked_cross_entropy; None: all at once).
        Under DDP wrap ``orchestrator.training.objective.loss_module(model, spec)`` and call that, so the
        forward runs through DDP. ``per_row``: per-record sums too (split_loss).
        """
        refuse_ddp(model)
        h = self.hidden_states(model, batch)
        frame = frame_positions(self.image_frame, batch["input_ids"], batch["image_layout"])
        return split_ce(lambda r, t, image: self.head(model, r, t, image), h, batch["labels"], self.is_image_target,
                        weights, chunk, frame, per_row)

    # ---- generation -------------------------------------------------------------------------------
    def count_visual(self, input_ids: torch.Tensor) -> int:
        """How many positions of ``input_ids`` take a visual embedding (continuous-image backbones)."""
        return 0

    def forward_hidden(self, model: nn.Module, input_ids: torch.Tensor, cache=None, visual=None, **positions):
        """(B, T) new ids after ``cache`` -> ((B, T, D) hidden states, the grown KV cache).

        ``visual``: embeddings of the ids that take one (continuous-image backbones only). ``positions``:
        ``attention_mask`` (B, cached + T) and ``position_ids`` (B, T) of a batch of sequences at their own
        positions (orchestrator/evaluation/decoding.py)."""
        if visual is not None:
            raise ValueError(f"{self.name} images are token ids: no visual embeddings to feed")
        out = unwrap(model).model(input_ids=input_ids, cache=cache, use_cache=True, **positions)
        return out.last_hidden_state, out.cache

    def text_logits(self, model: nn.Module, h: torch.Tensor) -> torch.Tensor:
        """(..., D) hidden -> (..., vocab) next-token logits over the text vocabulary (image ids masked later)."""
        return unwrap(model).lm_head(h)

    @abstractmethod
    def image_frame(self, height: int, width: int) -> ImageFrame:
        """The tokens around a generated height x width image."""

    def generation_grid(self, size: tuple[int, int] | None = None) -> tuple[int, int]:
        """(h, w) in codes of a generated image; fixed-grid backbones refuse another size."""
        grid = tuple(self.grid)
        if size is not None and tuple(size) != grid:
            raise ValueError(f"{self.name} ({self.checkpoint}) generates {grid[0]}x{grid[1]} code grids only, not {size}")
        return grid

    @abstractmethod
    def text_banned_ids(self) -> list[int]:
        """Ids never sampled as text: padding, image cells, and the tokens only an image frame places."""

    def decode_image(self, grid: torch.Tensor, model: nn.Module | None = None, **settings) -> Image.Image | None:
        """What generation produced for one image -> pixels (the model's own decoder when given, e.g. on GPU);
        None when the backbone has none. ``settings``: the sampling settings a decoder takes (e.g. diffusion)."""
        return None

    def prepare_decoder(self, model: nn.Module) -> None:
        """Load what decode_image needs now, so a missing piece fails before any generation."""

    @property
    def pixel_note(self) -> str:
        """Said where an image has no pixels (e.g. in `moss generate`'s summary)."""
        return f"{self.name}: no pixel decoder in transformers; decode the codes with the VQGAN decoder"

    @abstractmethod
    def target_grid(self, model: nn.Module, image: Image.Image) -> torch.Tensor:
        """An image -> what generation produces for it (a code grid, or an embedding grid)."""

    @abstractmethod
    def grid_scores(self, generated: torch.Tensor, target: torch.Tensor) -> dict:
        """Agreement of a generated and a target grid (editing evaluation)."""

    @abstractmethod
    def image_fingerprint(self) -> dict:
        """Identity of how images become tokens, so shards can be matched to a model (manifest)."""

