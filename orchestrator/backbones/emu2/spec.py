"""Emu2Spec: the Emu2 family, assembled from its capability modules (see the package docstring)."""

from __future__ import annotations

from typing import Literal

from torch import nn

from ...wrappers import unwrap
from ..frame import fixed_grid_layout
from ..hub import HubCheckpoint
from ..spec import BackboneSpec
from ..tokenizer import TINY_TEXT_VOCAB
from .generation import Emu2Generation
from .hub import Emu2Hub
from .loss import Emu2Loss
from .standin import Emu2StandIn, Emu2StandInConfig
from .vision import Emu2Vision

#: vision towers of the random presets: the patch grid is twice the 8 x 8 embedding grid
VISION_PRESETS = {
    "tiny": dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, image_size=32, patch_size=2),
    "small": dict(hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4, image_size=64, patch_size=4),
    "large": dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=4, num_attention_heads=16, image_size=224,
                  patch_size=14),
}
Regression = Literal["mse", "cosine"]


class Emu2Spec(Emu2Hub, Emu2Vision, Emu2Loss, Emu2Generation, BackboneSpec):
    name = "emu2"
    model_class = Emu2StandIn
    decoder_path = "model.decoder.lm.model.layers"
    logit_heads = ("model.decoder.lm.lm_head",)  # text only: images are regressed (project_down)
    hub_checkpoints = {"BAAI/Emu2": HubCheckpoint("37b"), "BAAI/Emu2-Gen": HubCheckpoint("37b")}
    model_types = ()  # BAAI's config names its own remote-code class (auto_map): see remote_code
    remote_code = True
    standin_model_type = Emu2StandInConfig.model_type
    config_options = {"image_regression": "regression"}
    # BAAI/Emu2 config.json (LLaMA-33B decoder) + vision_config (EVA-CLIP-E-14-plus, 448 px)
    real_sizes = {
        "37b": dict(vocab_size=32272, hidden_size=6656, intermediate_size=17920, num_hidden_layers=60,
                    num_attention_heads=52, num_key_value_heads=52, max_position_embeddings=2048, rms_norm_eps=1e-6),
    }
    real_vision = dict(hidden_size=1792, intermediate_size=15360, num_hidden_layers=64, num_attention_heads=16,
                       image_size=448, patch_size=14)
    img, img_end, image = "[IMG]", "[/IMG]", "<image>"
    continuous_images = True
    #: the loss of image targets is a regression, not a cross-entropy (no image perplexity)
    image_loss_is_ce = False

    def __init__(self, checkpoint: str = "tiny", regression: Regression = "mse", **hub):
        super().__init__(checkpoint, **hub)
        if regression not in ("mse", "cosine"):
            raise ValueError(f"regression must be 'mse' or 'cosine', not {regression!r}")
        self.regression = regression

    @classmethod
    def image_loss_kind(cls, options: dict) -> str:
        return options.get("regression") or "mse"  # the regression of visual embeddings

    def rebind(self, checkpoint: str) -> Emu2Spec:
        return type(self)(checkpoint, self.regression)

    def tiny_tokenizer_specials(self) -> list[str]:
        return ["[PAD]", "<s>", "</s>", self.img, self.img_end, self.image]

    def random_config(self) -> Emu2StandInConfig:
        p = self.preset
        return Emu2StandInConfig(
            text_config=dict(model_type="llama", vocab_size=TINY_TEXT_VOCAB, hidden_size=p["hidden"],
                             intermediate_size=p["intermediate"], num_hidden_layers=p["layers"],
                             num_attention_heads=p["heads"], num_key_value_heads=p["heads"],
                             max_position_embeddings=2048, pad_token_id=0, bos_token_id=1, eos_token_id=2),
            vision_config=dict(model_type="clip_vision_model", **VISION_PRESETS[self.checkpoint]),
            n_query=64,
        )

    def real_size_config(self, size: str) -> Emu2StandInConfig:
        """The stand-in at a published size: the decoder has the real shape (meta-device counts)."""
        return Emu2StandInConfig(text_config=dict(model_type="llama", **self.real_sizes[size]),
                                 vision_config=dict(model_type="clip_vision_model", **self.real_vision), n_query=64)

    def layout_modules(self, model):
        lm = model.model.decoder.lm.model  # images enter as embeddings: the decoder is fed directly
        return lm, lm

    def enable_activation_checkpointing(self, model: nn.Module) -> None:
        """On the inner LLaMA: Emu2's own class says it does not support it (the vision tower runs without
        gradients anyway)."""
        self.lm(model).gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})

    def lm(self, model: nn.Module) -> nn.Module:
        """The LLaMA causal LM (``.model`` the decoder stack, ``.lm_head`` the text head)."""
        return unwrap(model).model.decoder.lm

    def image_layout(self, input_ids, labels=None):
        ids = input_ids.cpu()
        return fixed_grid_layout(ids, labels, {self.token_id(self.img)}, ids == self.token_id(self.image), *self.grid)
