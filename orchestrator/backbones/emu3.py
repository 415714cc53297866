"""Emu3: VQ codes are vocabulary tokens; H and W vary per image; every row ends with an EOL token.

Layout per image (processing_emu3.py): ``<|image start|>`` + "H*W" (text digits) + ``<|image token|>``
+ H rows of (W codes + ``<|extra_200|>`` EOL) + ``<|extra_201|>`` (eof) + ``<|image end|>``.
The EOL column is not part of the grid (row stride W + 1); it takes the text branch.
"""

from __future__ import annotations

import math
import re
from functools import cached_property

import torch
from PIL import Image
from transformers import Emu3Config, Emu3ForConditionalGeneration, Emu3TextConfig
from transformers.models.emu3.modeling_emu3 import Emu3ImageVocabularyMapping

from ..layout import ImageLayout, ImageSegment
from .frame import ImageBudget, ImageFrame, is_input_image
from .hub import HubCheckpoint
from .tokenizer import TINY_TEXT_VOCAB
from .vq import VQSpec

def square_image_tokens(side: int) -> int:
    """Tokens of a side x side image: start + "H*W" digits + image token + side rows of (side codes + EOL) +
    eof + end (the digits count one token each, an upper bound)."""
    return 1 + len(f"{side}*{side}") + 1 + side * (side + 1) + 2


def largest_square_side(budget: int) -> int:
    """The largest square grid side whose image fits ``budget`` tokens (0 if none)."""
    side = math.isqrt(max(budget, 0))
    while side > 0 and square_image_tokens(side) > budget:
        side -= 1
    return side


#: Emu3ImageProcessor's defaults (transformers 5.24): every image is resized into this pixel area
HUB_MIN_PIXELS, HUB_MAX_PIXELS = 512 * 512, 1024 * 1024

TINY_CODEBOOK = 256


class Emu3Spec(VQSpec):
    name = "emu3"
    decoder_path = "model.text_model.layers"
    config_options = {"image_min_pixels": "min_pixels", "image_max_pixels": "max_pixels"}
    square_side_within = staticmethod(largest_square_side)
    vocab_mapping_class = Emu3ImageVocabularyMapping
    model_class = Emu3ForConditionalGeneration
    hub_checkpoints = {"BAAI/Emu3-Gen-hf": HubCheckpoint("8b"), "BAAI/Emu3-Chat-hf": HubCheckpoint("8b")}
    model_types = ("emu3",)
    image_head_module = "lm_head"
    # BAAI/Emu3-Gen-hf config.json (text_config)
    real_sizes = {
        "8b": dict(
            vocab_size=184622, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
            num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=9216,
        ),
    }
    image_start, image_token, image_end = "<|image start|>", "<|image token|>", "<|image end|>"
    eol, eof = "<|extra_200|>", "<|extra_201|>"

    def __init__(self, checkpoint: str = "tiny", min_pixels: int | None = None, max_pixels: int | None = None, **hub):
        """``min_pixels`` / ``max_pixels``: the image area bounds (backbone.image_min_pixels / _max_pixels);
        None keeps the checkpoint's image processor settings (random presets: fit in max_side px)."""
        super().__init__(checkpoint, **hub)
        self.min_pixels, self.max_pixels = min_pixels, max_pixels

    def rebind(self, checkpoint: str) -> Emu3Spec:
        return type(self)(checkpoint, self.min_pixels, self.max_pixels)

    @classmethod
    def shard_settings(cls, options: dict) -> dict:
        return {"image_area": {k: options[k] for k in ("min_pixels", "max_pixels") if k in options}}

    @property
    def pixel_bounds(self) -> dict:
        return {k: v for k, v in (("min_pixels", self.min_pixels), ("max_pixels", self.max_pixels)) if v is not None}

    @cached_property
    def image_processor(self):
        if self.is_random:
            return None
        from transformers import AutoImageProcessor

        return AutoImageProcessor.from_pretrained(self.checkpoint, **self.pixel_bounds, **self.hub)

    def image_fingerprint(self) -> dict:
        return {**super().image_fingerprint(), **({"image_area": self.pixel_bounds} if self.pixel_bounds else {})}

    def tiny_tokenizer_specials(self) -> list[str]:
        return ["<pad>", "<|extra_203|>", "<|endoftext|>", "<|extra_0|>", self.image_start, self.image_token,
                self.image_end, self.eol, self.eof]

    def random_config(self) -> Emu3Config:
        p = self.preset
        vmap = dict(self.tokenizer.get_vocab())
        vmap["<image>"] = vmap["<|extra_0|>"]
        vmap.update({f"<|visual token{c:06d}|>": TINY_TEXT_VOCAB + c for c in range(TINY_CODEBOOK)})
        text = Emu3TextConfig(
            vocab_size=TINY_TEXT_VOCAB + TINY_CODEBOOK, hidden_size=p["hidden"], intermediate_size=p["intermediate"],
            num_hidden_layers=p["layers"], num_attention_heads=p["heads"], num_key_value_heads=p["heads"] // 2,
            max_position_embeddings=4096, pad_token_id=0, bos_token_id=1, eos_token_id=2,
            attention_dropout=0.0,  # the class default is 0.1
        )
        return Emu3Config(
            vocabulary_map=vmap, text_config=text,
            # hidden_size must equal base_channels * channel_multiplier[-1]; spatial factor 4
            vq_config=dict(codebook_size=TINY_CODEBOOK, embed_dim=4, latent_channels=4, temporal_downsample_factor=1,
                           base_channels=32, channel_multiplier=[1, 2, 2], num_res_blocks=1, attn_resolutions=[],
                           hidden_size=64, num_attention_heads=1),
        )

    def tiny_image_processor(self):
        from transformers import Emu3ImageProcessor

        f = self.spatial_factor
        return Emu3ImageProcessor(spatial_factor=f, min_pixels=(4 * f) ** 2, max_pixels=self.max_side**2)

    def real_size_config(self, size: str) -> Emu3Config:
        # visual tokens fill the top 32768 ids; the mapping only shapes the meta build
        vocab = self.real_sizes[size]["vocab_size"]
        vmap = {f"<|visual token{c:06d}|>": vocab - 32768 + c for c in range(32768)}
        return Emu3Config(vocabulary_map=vmap, text_config=Emu3TextConfig(**self.real_sizes[size]))

    def image_budget(self, config) -> ImageBudget:
        """A square image at the smallest and the largest area the processor allows (per side: codes =
        pixels / spatial factor): start + "H*W" + image token + H rows of (W codes + EOL) + eof + end."""
        f = 2 ** (len(config.vq_config.channel_multiplier) - 1)
        if self.is_random and not self.pixel_bounds:  # resized to fit max_side px (tiny_image_size)
            low, high = f * f, self.max_side**2
        else:
            low = self.min_pixels or HUB_MIN_PIXELS
            high = self.max_pixels or max(HUB_MAX_PIXELS, low)
        lo_side = max(1, math.ceil(math.sqrt(low) / f))
        # an image upscaled to min_pixels rounds each side up to a code: up to one more row and column
        hi_side = max(1, math.floor(math.sqrt(high) / f), lo_side + (1 if low > f * f else 0))

        tokens = square_image_tokens
        size = f"{lo_side * f}-{hi_side * f} px square" if lo_side != hi_side else f"{lo_side * f} px square"
        return ImageBudget((lo_side, lo_side), (hi_side, hi_side), tokens(lo_side), tokens(hi_side), size, f)

    @property
    def max_side(self) -> int:
        """Random presets resize images to fit (5/4 grid) x 4 px: 40 px for tiny, so aspect ratios vary."""
        return 5 * self.preset["grid"]

    @property
    def spatial_factor(self) -> int:
        return self.vq.vision_spatial_factor

    def tiny_image_size(self, image: Image.Image) -> tuple[int, int]:
        f = self.spatial_factor
        if self.pixel_bounds:  # the real processor's rule, at the chosen area bounds
            from transformers.models.emu3.image_processing_emu3 import smart_resize

            low, high = self.min_pixels or f * f, self.max_pixels or max(self.max_side**2, (self.min_pixels or 0))
            return smart_resize(image.size[1], image.size[0], factor=f, min_pixels=low, max_pixels=high)
        scale = min(1.0, self.max_side / max(image.size))
        w, h = (max(f, int(math.floor(s * scale / f)) * f) for s in image.size)
        return h, w

    def image_codes(self, pixel_values, image_size):
        return self.vq.encode(pixel_values, torch.tensor([image_size])).image_tokens[0]  # (h, w)

    def image_tokens(self, codes) -> list[int]:
        h, w = codes.shape
        rows = self.vocab_mapping.convert_img2bpe(codes).flatten().tolist()  # h * (w + 1), EOL per row
        return [
            self.token_id(self.image_start), *self.text_ids(f"{h}*{w}"), self.token_id(self.image_token),
            *rows, self.token_id(self.eof), self.token_id(self.image_end),
        ]

    def image_frame(self, height: int, width: int) -> ImageFrame:
        header = (*self.text_ids(f"{height}*{width}"), self.token_id(self.image_token))
        close = (self.token_id(self.eof), self.token_id(self.image_end))
        return ImageFrame(self.token_id(self.image_start), header, (self.token_id(self.eol),), close, height, width)

    #: Emu3-Gen's default image_area 518400 px = 720 x 720 px at spatial factor 8: 90 x 90 codes
    HUB_GENERATION_GRID = (90, 90)

    def generation_grid(self, size=None) -> tuple[int, int]:
        """Any h x w (Emu3 writes the size into the image header); default square."""
        if size is not None:
            h, w = (int(v) for v in size)
            if h < 1 or w < 1:
                raise ValueError(f"image size {size}: both sides must be >= 1 code")
            return h, w
        return (self.preset["grid"],) * 2 if self.is_random else self.HUB_GENERATION_GRID

    has_pixel_decoder = True


    def image_layout(self, input_ids, labels=None):
        input_ids = input_ids.cpu()
        # the processor path holds "<image>" placeholders (swapped for codes inside the model) instead
        is_code = torch.isin(input_ids, self.image_token_ids)
        if self.vocab_mapping.image_token_id is not None:
            is_code |= input_ids == self.vocab_mapping.image_token_id
        start, grid_tok = self.token_id(self.image_start), self.token_id(self.image_token)
        segs = []
        for b in range(input_ids.shape[0]):
            row = input_ids[b].tolist()
            found = []
            for s in (i for i, t in enumerate(row) if t == start):
                try:
                    g = row.index(grid_tok, s + 1)
                except ValueError:
                    continue  # truncated inside the "H*W" prefix: no code of this image is present
                m = re.fullmatch(r"\s*(\d+)\*(\d+)\s*", self.tokenizer.decode(row[s + 1 : g]))
                if m is None:
                    continue
                h, w = int(m.group(1)), int(m.group(2))
                seg = ImageSegment(g + 1, h, w, w + 1, h * w)
                pos = seg.positions()
                ok = (pos < len(row)) & is_code[b, pos.clamp(max=len(row) - 1)]
                n_cells = int(ok.long().cumprod(0).sum())  # cells present before the first missing one
                seg = ImageSegment(g + 1, h, w, w + 1, n_cells)
                found.append(ImageSegment(g + 1, h, w, w + 1, n_cells, is_input_image(labels, b, seg.positions())))
            segs.append(found)
        return ImageLayout.from_lists(segs, input_ids.shape[1])
