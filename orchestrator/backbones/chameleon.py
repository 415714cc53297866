"""Chameleon / Anole: VQ codes are ordinary vocabulary tokens, one fixed H x W grid per image.

Layout per image: ``<racm3:break>`` (boi) + H*W code tokens (row-major) + ``<eoss>`` (eoi).
transformers' forward sets image-token logits to the float minimum, so the loss computes logits from
the decoder's hidden states with ``lm_head`` directly (Anole does the same).
"""

from __future__ import annotations

from functools import cached_property

import torch
from PIL import Image
from transformers import ChameleonConfig, ChameleonForConditionalGeneration
from transformers.models.chameleon.modeling_chameleon import ChameleonImageVocabularyMapping

from .frame import ImageFrame, fixed_grid_layout
from .hub import HubCheckpoint
from .tokenizer import TINY_TEXT_VOCAB
from .vq import VQSpec

TINY_CODEBOOK = 256


def _code_name(code: int) -> str:
    return "IMGIMG" + "".join(chr(ord("A") + int(d)) for d in str(code)) + "Z"


class ChameleonSpec(VQSpec):
    name = "chameleon"
    decoder_path = "model.layers"
    vocab_mapping_class = ChameleonImageVocabularyMapping
    model_class = ChameleonForConditionalGeneration
    hub_checkpoints = {
        # a transformers conversion of Anole-7B (safetensors, ChameleonForConditionalGeneration)
        "leloy/Anole-7b-v0.1-hf": HubCheckpoint("7b"),
        "GAIR/Anole-7b-v0.1": HubCheckpoint("7b", error=(
            "GAIR/Anole-7b-v0.1 holds Meta's format (models/7b/consolidated.pth + tokenizer/), not a transformers "
            "checkpoint: use leloy/Anole-7b-v0.1-hf (its transformers conversion), or convert it with transformers' "
            "convert_chameleon_weights_to_hf.py and give the output folder")),
        "facebook/chameleon-7b": HubCheckpoint("7b", warning=(
            "facebook/chameleon-7b does not generate images (Meta left the image-token rows of lm_head untrained; "
            "Anole restored generation by training exactly those rows): with a frozen head its image losses mean "
            "little. Set adapter.train_image_head=true, or use leloy/Anole-7b-v0.1-hf")),
    }
    model_types = ("chameleon",)
    conversion_hint = "convert Meta's weights with transformers' convert_chameleon_weights_to_hf.py"
    image_head_module = "lm_head"
    # facebook/chameleon-7b config.json (Anole-7B shares it)
    real_sizes = {
        "7b": dict(
            vocab_size=65536, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
            num_attention_heads=32, num_key_value_heads=32, max_position_embeddings=4096,
        ),
    }
    boi, eoi = "<racm3:break>", "<eoss>"

    def tiny_tokenizer_specials(self) -> list[str]:
        return ["<pad>", "<s>", "</s>", "<image>", self.boi, self.eoi, "<reserved08706>"]

    def random_config(self) -> ChameleonConfig:
        p = self.preset
        vmap = dict(self.tokenizer.get_vocab())
        vmap.update({_code_name(c): TINY_TEXT_VOCAB + c for c in range(TINY_CODEBOOK)})
        return ChameleonConfig(
            vocab_size=TINY_TEXT_VOCAB + TINY_CODEBOOK, hidden_size=p["hidden"], intermediate_size=p["intermediate"],
            num_hidden_layers=p["layers"], num_attention_heads=p["heads"], num_key_value_heads=p["heads"],
            max_position_embeddings=4096, pad_token_id=0, bos_token_id=1, eos_token_id=2, vocabulary_map=vmap,
            # downsampling 4 -> grid x grid codes per image; GroupNorm(32) needs base_channels >= 32
            vq_config=dict(embed_dim=8, num_embeddings=TINY_CODEBOOK, latent_channels=8, base_channels=32,
                           channel_multiplier=[1, 2, 2], resolution=4 * p["grid"], num_res_blocks=1),
        )

    def tiny_image_processor(self):
        from transformers import ChameleonImageProcessorPil

        res = self.vq.config.resolution
        return ChameleonImageProcessorPil(size={"shortest_edge": res}, crop_size={"height": res, "width": res})

    def real_size_config(self, size: str) -> ChameleonConfig:
        # image codes are ids 4..8195 in Chameleon/Anole; the mapping only shapes the meta build
        vmap = {_code_name(c): 4 + c for c in range(8192)}
        return ChameleonConfig(vocabulary_map=vmap, **self.real_sizes[size])

    @cached_property
    def grid(self) -> tuple[int, int]:
        return self.config_grid(self.vq)

    def config_grid(self, config) -> tuple[int, int]:
        """resolution / 2^(levels - 1) codes per side (512 px -> 32 x 32 for Chameleon / Anole)."""
        vq = getattr(config, "vq_config", None) or config.config
        side = vq.resolution // 2 ** (len(vq.channel_multiplier) - 1)
        return side, side

    def tiny_image_size(self, image: Image.Image) -> tuple[int, int]:
        res = self.vq.config.resolution
        return res, res

    def image_codes(self, pixel_values, image_size):
        codes = self.vq.encode(pixel_values).image_tokens  # (h*w,) row-major
        return codes.view(*self.grid)

    def image_tokens(self, codes) -> list[int]:
        bpe = self.vocab_mapping.convert_img2bpe(codes.flatten()).tolist()
        return [self.token_id(self.boi), *bpe, self.token_id(self.eoi)]

    def image_frame(self, height: int, width: int) -> ImageFrame:
        # no pixel decoder in transformers (ChameleonVQVAE has no decode): decode_image stays None
        return ImageFrame(self.token_id(self.boi), (), (), (self.token_id(self.eoi),), height, width)

    def image_layout(self, input_ids, labels=None):
        # the processor path holds "<image>" placeholders (swapped for codes inside the model) instead
        placeholder = self.vocab_mapping.image_token_id
        codes = self.image_token_ids if placeholder is None else torch.cat([self.image_token_ids, torch.tensor([placeholder])])
        is_code = torch.isin(input_ids, codes.to(input_ids.device))
        return fixed_grid_layout(input_ids.cpu(), labels, {self.token_id(self.boi)}, is_code.cpu(), *self.grid)
