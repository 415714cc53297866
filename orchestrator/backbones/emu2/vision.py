"""Emu2's images: pixels resized and normalised for its visual encoder, pooled into an n_query grid of embeddings."""

from __future__ import annotations

import io
import math
from functools import cached_property

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from ...wrappers import unwrap
from ..frame import ImagePiece
from ..errors import UnencodableError

#: Emu2's image transform (HF ``prepare_image_input``): bicubic resize, OpenAI CLIP mean / std
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def config_field(cfg, name: str, default=None):
    """A field of a config that may be an object or (remote-code sub-configs) a dict."""
    return cfg.get(name, default) if isinstance(cfg, dict) else getattr(cfg, name, default)


def n_query_of(config) -> int:
    # BAAI/Emu2 builds its placeholders from vision_config.n_query (v_query is video's)
    return config_field(config_field(config, "vision_config", {}), "n_query") or config_field(config, "n_query") or 64


class Emu2Vision:
    """Pixels in, an n_query grid of visual embeddings out; and the placeholder tokens that stand for them."""

    @cached_property
    def n_query(self) -> int:
        n = n_query_of(self.model_config)
        if math.isqrt(n) ** 2 != n:
            raise ValueError(f"{self.checkpoint}: n_query={n} is not a square grid")
        return n

    @cached_property
    def grid(self) -> tuple[int, int]:
        side = math.isqrt(self.n_query)
        return side, side

    def config_grid(self, config) -> tuple[int, int]:
        """sqrt(n_query) per side: 8 x 8 embeddings for Emu2 and the stand-in."""
        n = n_query_of(config)
        return math.isqrt(n), math.isqrt(n)

    @cached_property
    def image_size(self) -> int:
        return int(config_field(config_field(self.model_config, "vision_config", {}), "image_size", 448))

    @cached_property
    def d_model(self) -> int:
        return int(config_field(self.model_config, "d_model"))

    def resize(self, image: Image.Image) -> Image.Image:
        """The visual encoder's input, before normalisation: RGB, image_size x image_size, bicubic."""
        return image.convert("RGB").resize((self.image_size, self.image_size), Image.BICUBIC)

    def normalize(self, image: Image.Image) -> torch.Tensor:
        """A resized image -> (3, S, S) float pixels (ToTensor + Normalize with the CLIP mean / std)."""
        if image.size != (self.image_size, self.image_size):
            raise ValueError(f"image is {image.size}, expected {self.image_size}x{self.image_size} (use resize)")
        arr = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
        arr = (arr - np.array(CLIP_MEAN, dtype=np.float32)) / np.array(CLIP_STD, dtype=np.float32)
        return torch.from_numpy(arr).permute(2, 0, 1).contiguous()

    def preprocess(self, image: Image.Image) -> tuple[torch.Tensor, tuple[int, int]]:
        return self.normalize(self.resize(image))[None], (self.image_size, self.image_size)

    def image_fingerprint(self) -> dict:
        return {"pixels": {"transform": "resize-bicubic+clip-normalize", "image_size": self.image_size,
                           "mean": list(CLIP_MEAN), "std": list(CLIP_STD)}}

    @staticmethod
    def png(image: Image.Image) -> bytes:
        """How shards store a resized image (lossless, so training sees exactly these pixels)."""
        buf = io.BytesIO()
        image.save(buf, format="PNG")
        return buf.getvalue()

    def text_ids(self, text: str) -> list[int]:
        """Text never yields [IMG] / <image> / [/IMG] ids: a literal "<image>" in a prompt stays text (a
        placeholder without an embedding behind it would shift every image after it)."""
        ids = self.tokenizer(text, add_special_tokens=False, split_special_tokens=True)["input_ids"]
        if set(ids) & set(self.placeholder_ids):  # a tokenizer whose image tokens are not "special" ones
            raise UnencodableError(f"text holds one of Emu2's image tokens {self.img} / {self.image} / {self.img_end}: "
                                   f"{text[:80]!r}")
        return ids

    @cached_property
    def placeholder_ids(self) -> tuple[int, int, int]:
        return tuple(self.token_id(t) for t in (self.img, self.image, self.img_end))

    def encode_image(self, image: Image.Image) -> ImagePiece:
        ids = [self.token_id(self.img), *[self.token_id(self.image)] * self.n_query, self.token_id(self.img_end)]
        return ImagePiece(ids, image=self.resize(image))

    def collate(self, examples: list[dict]) -> dict:
        """The base batch plus ``pixel_values`` (n_images, 3, S, S), images in layout order."""
        batch = super().collate(examples)
        images = [im for e in examples for im in e.get("images", ())]
        n_segments = sum(len(e["image_layout"]) for e in examples)
        if len(images) != n_segments:
            raise ValueError(f"{n_segments} images in the token layout but {len(images)} pixel images")
        if images:
            batch["pixel_values"] = torch.stack([self.normalize(im) for im in images])
        return batch

    def visual_embeddings(self, model: nn.Module, pixel_values: torch.Tensor) -> torch.Tensor:
        """(N, 3, S, S) pixels -> (N, n_query, d_model): the last block's patch features (CLS dropped),
        average-pooled to sqrt(n_query) x sqrt(n_query), row-major (Emu2's encode_image). No gradient:
        the visual encoder is frozen and the embeddings are also the regression targets."""
        visual = unwrap(model).model.visual
        with torch.no_grad():
            out = visual(pixel_values.to(next(visual.parameters()).dtype))
            feats = getattr(out, "last_hidden_state", out)[:, 1:]
            n, p, c = feats.shape
            side = math.isqrt(p)
            grid = feats.transpose(1, 2).reshape(n, c, side, side)
            stride = side // self.grid[0]
            pooled = F.avg_pool2d(grid, kernel_size=stride, stride=stride)
            return pooled.flatten(2).transpose(1, 2)

    def batch_visual(self, model: nn.Module, batch: dict) -> torch.Tensor | None:
        """The batch's visual embeddings: ``image_embeds`` when given (N, n_query, d), else from pixels."""
        if batch.get("image_embeds") is not None:
            return batch["image_embeds"]
        if batch.get("pixel_values") is not None:
            return self.visual_embeddings(model, batch["pixel_values"])
        return None
