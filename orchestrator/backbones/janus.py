"""Janus / Janus-Pro: generated images are VQ codes outside the text vocabulary.

Codes enter the language model as ``generation_aligner(generation_embeddings(code))`` and are
predicted by ``generation_head``. We keep sequences as one LongTensor by writing code c as the id
``text_vocab + c``; layouts therefore come from positions (ids >= text_vocab after
``<begin_of_image>``), and the spec builds the embeddings and the two heads itself. Images of the
prompt take the same discrete path (the SigLIP understanding tower is not used in this version).
"""

from __future__ import annotations

from functools import cached_property

import torch
from PIL import Image
from transformers import JanusConfig, JanusForConditionalGeneration

from ..wrappers import unwrap
from .frame import ImageFrame, fixed_grid_layout
from .hub import HubCheckpoint
from .tokenizer import TINY_TEXT_VOCAB
from .vq import VQSpec


class JanusSpec(VQSpec):
    name = "janus"
    decoder_path = "model.language_model.layers"
    model_class = JanusForConditionalGeneration
    logit_heads = ("lm_head", "model.generation_head.vision_head")  # text; image codes (after proj_out + GELU)
    head_inputs = ("model.generation_head.proj_out",)
    hub_checkpoints = {"deepseek-community/Janus-Pro-7B": HubCheckpoint("pro-7b"),
                       "deepseek-community/Janus-Pro-1B": HubCheckpoint("pro-1b")}
    # deepseek-ai/Janus-Pro-{7B,1B} language_config (max_position_embeddings 16384 in both)
    real_sizes = {
        "pro-7b": dict(vocab_size=102400, hidden_size=4096, intermediate_size=11008, num_hidden_layers=30,
                       num_attention_heads=32, num_key_value_heads=32, max_position_embeddings=16384),
        "pro-1b": dict(vocab_size=102400, hidden_size=2048, intermediate_size=5632, num_hidden_layers=24,
                       num_attention_heads=16, num_key_value_heads=16, max_position_embeddings=16384),
    }
    model_types = ("janus",)
    boi, eoi = "<begin_of_image>", "<end_of_image>"

    def tiny_tokenizer_specials(self) -> list[str]:
        return ["<pad>", "<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>", "<image_placeholder>", self.boi, self.eoi]

    def random_config(self) -> JanusConfig:
        p = self.preset
        return JanusConfig(
            image_token_id=self.token_id("<image_placeholder>"),
            tie_word_embeddings=False,  # the presets redraw lm_head alone (heads.py), not the input embeddings
            text_config=dict(model_type="llama", vocab_size=TINY_TEXT_VOCAB, hidden_size=p["hidden"],
                             intermediate_size=p["intermediate"], num_hidden_layers=p["layers"],
                             num_attention_heads=p["heads"], num_key_value_heads=p["heads"],
                             max_position_embeddings=4096, pad_token_id=0, bos_token_id=1, eos_token_id=2),
            # the VQ grid side is vision image_size // patch_size -> grid x grid codes from 4 * grid px
            vision_config=dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, image_size=8 * p["grid"],
                               patch_size=8, projection_dim=p["hidden"], depth=1, num_image_tokens=p["grid"] ** 2,
                               mlp_ratio=2.0),
            vq_config=dict(embed_dim=8, num_embeddings=256, latent_channels=32, base_channels=32,
                           channel_multiplier=[1, 2, 2], num_res_blocks=1, projection_dim=p["hidden"],
                           image_token_embed_dim=p["hidden"], num_hidden_layers=2),
        )

    def tiny_image_processor(self):
        from transformers import JanusImageProcessorPil

        side = self.tiny_image_size(None)[0]
        return JanusImageProcessorPil(size={"height": side, "width": side})

    def real_size_config(self, size: str) -> JanusConfig:
        return JanusConfig(text_config=dict(model_type="llama", **self.real_sizes[size]))

    @cached_property
    def text_vocab(self) -> int:
        return self.model_config.text_config.vocab_size

    @cached_property
    def grid(self) -> tuple[int, int]:
        return self.config_grid(self.vq)

    def config_grid(self, config) -> tuple[int, int]:
        """The generation VQ's num_patches per side (384 px -> 24 x 24 for Janus-Pro)."""
        side = (getattr(config, "vq_config", None) or config.config).num_patches
        return side, side

    def tiny_image_size(self, image: Image.Image) -> tuple[int, int]:
        side = self.grid[0] * 2 ** (len(self.vq.config.channel_multiplier) - 1)
        return side, side

    def image_codes(self, pixel_values, image_size):
        return self.vq.encode(pixel_values).image_tokens.view(*self.grid)

    def image_tokens(self, codes) -> list[int]:
        virtual = (codes.flatten() + self.text_vocab).tolist()
        return [self.token_id(self.boi), *virtual, self.token_id(self.eoi)]

    def image_layout(self, input_ids, labels=None):
        ids = input_ids.cpu()
        # understanding images arrive as <image_placeholder> runs (SigLIP patches, the same grid side)
        is_code = (ids >= self.text_vocab) | (ids == self.token_id("<image_placeholder>"))
        return fixed_grid_layout(ids, labels, {self.token_id(self.boi)}, is_code, *self.grid)

    def embed(self, model, input_ids: torch.Tensor) -> torch.Tensor:
        """(B, T) ids with codes at text_vocab + c -> (B, T, D) inputs_embeds."""
        base = unwrap(model)
        is_img = input_ids >= self.text_vocab
        emb = base.get_input_embeddings()(input_ids.masked_fill(is_img, 0))
        if is_img.any():
            img = base.prepare_embeddings_for_image_generation(input_ids[is_img] - self.text_vocab)
            emb = emb.index_put((is_img,), img.to(emb.dtype))
        return emb

    def hidden_states(self, model, batch):
        emb = self.embed(model, batch["input_ids"])
        lm = unwrap(model).model.language_model
        return lm(inputs_embeds=emb, attention_mask=batch.get("attention_mask")).last_hidden_state

    def head(self, model, rows, targets, image):
        base = unwrap(model)
        if image:
            return base.model.generation_head(rows), targets - self.text_vocab
        return base.lm_head(rows), targets

    def is_image_target(self, targets):
        return targets >= self.text_vocab

    # ---- generation: codes come from generation_head, embeddings from the generation aligner ----------
    def forward_hidden(self, model, input_ids, cache=None, visual=None, **positions):
        if visual is not None:
            raise ValueError("janus images are token ids: no visual embeddings to feed")
        lm = unwrap(model).model.language_model
        out = lm(inputs_embeds=self.embed(model, input_ids), cache=cache, use_cache=True, **positions)
        return out.last_hidden_state, out.cache

    @cached_property
    def image_candidates(self) -> torch.Tensor:
        return self.text_vocab + torch.arange(self.vq.config.num_embeddings)

    def image_logits(self, model, h):
        return unwrap(model).model.generation_head(h)

    def ids_to_codes(self, ids):
        return ids - self.text_vocab

    def image_frame(self, height: int, width: int) -> ImageFrame:
        return ImageFrame(self.token_id(self.boi), (), (), (self.token_id(self.eoi),), height, width)

    def text_banned_ids(self) -> list[int]:
        specials = (self.tokenizer.pad_token_id, self.token_id(self.eoi), self.token_id("<image_placeholder>"))
        return sorted(t for t in specials if t is not None)  # codes are not in lm_head's vocabulary

    has_pixel_decoder = True

    def decoder_input(self, codes):
        return codes.reshape(1, -1)
