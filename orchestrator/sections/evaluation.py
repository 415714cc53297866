"""Generation and evaluation of a trained adapter: ``generate:``, ``editing:``, ``interleavedbench:``,
``evaluate:``."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from .base import Section


class GenerateSection(Section):
    """Sampling for `moss generate` and for the answers `moss evaluate` generates."""

    max_new_tokens: int = Field(128, ge=0)  # text tokens of an answer; images come on top (max_images)
    temperature: float = Field(1.0, ge=0)  # 0: greedy
    top_p: float = Field(0.9, gt=0, le=1)  # nucleus sampling of text tokens
    image_temperature: float = Field(1.0, ge=0)  # sampling temperature of image codes; 0: greedy
    image_top_p: float = Field(1.0, gt=0, le=1)  # nucleus sampling of image codes
    max_images: int = Field(2, ge=0)  # images per answer
    image_size: tuple[int, int] | None = None  # (rows, cols) of codes; Emu3 only, the others have a fixed grid
    seed: int = 0  # sampling seed
    #: Emu2-Gen's diffusion decoder (emu2 checkpoints with one): Euler steps, guidance, pixels per side
    diffusion_steps: int = Field(50, ge=1)
    guidance_scale: float = Field(3.0, ge=0)  # classifier-free guidance of Emu2-Gen's decoder
    diffusion_size: int = Field(1024, ge=8)  # pixels per side of Emu2-Gen's decoded images

    @field_validator("image_size")
    @classmethod
    def _positive(cls, v):
        if v is not None and min(v) < 1:
            raise ValueError("image_size sides must be >= 1 code")
        return v


class EditingSection(Section):
    """MagicBrush-style editing metrics: input image + instruction -> generated vs target image."""

    source: str | list[str] | None = None  # LeafInstruct records; null: data.source
    domain: str = "editing"  # records of this domain (task_name) with one input and one output image
    split: Literal["train", "val", "all"] = "val"  # by the same id hash as preprocessing (data.val_fraction)
    max_records: int | None = Field(16, ge=1)  # editing records scored at most; null: all
    clip_model: str | None = None  # local CLIP checkpoint (transformers CLIPModel) for CLIP-I; null: skipped
    dino_model: str | None = None  # local DINO ViT checkpoint (transformers AutoModel) for DINO; null: skipped


class InterleavedBenchSection(Section):
    path: str | None = None  # interleaved_bench.json (or .jsonl); images relative to its folder
    max_records: int | None = Field(None, ge=1)  # records answered at most; null: all
    judge: bool = False  # score the answers with an OpenAI-compatible judge (MOSS_JUDGE_* environment)


class EvaluateSection(Section):
    heldout: bool = True  # per-modality loss / perplexity on a shard split
    split: Literal["train", "val"] = "val"  # the shard split held-out metrics are computed on
    editing: bool = True  # MagicBrush-style metrics (see the editing section)
    output: str = "eval"  # results.json, generated images and answers go to <output>/<run or adapter name>/
    #: answers generated together (batched KV + conv caches; each answer is what batch 1 gives it, to float
    #: tolerance). Each row keeps a KV cache as long as the batch's longest: 2 x layers x KV width x positions x
    #: bytes (Emu3-8B, bf16: 128 KiB per position)
    batch_size: int = Field(8, ge=1)
