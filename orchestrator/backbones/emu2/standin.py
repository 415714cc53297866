"""A small stand-in for Emu2 built from transformers parts, with Emu2's module tree.

Emu2 (BAAI/Emu2, Emu2-Gen) is not a transformers class: its code ships with the checkpoint
(``trust_remote_code``). Its tree, from the checkpoint's ``modeling_emu.py``::

    EmuForCausalLM
      .model.visual          EVA-CLIP-E (448 px, patch 14 -> 32 x 32 patches, width 1792)
      .model.decoder.lm      LlamaForCausalLM (hidden 6656, 60 layers)
      .project_up            Linear(1792 -> 6656): visual embedding -> decoder input
      .project_down          Linear(6656 -> 1792): decoder hidden -> predicted visual embedding

The stand-in keeps those names (so one target regex fits both) with a CLIP vision tower in place of
EVA-CLIP and transformers' LlamaForCausalLM. It runs anywhere with random weights; real checkpoints
load through their own code (orchestrator/backbones/emu2/).
"""

from __future__ import annotations

import torch
from huggingface_hub.dataclasses import strict
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM, LlamaForCausalLM, PreTrainedConfig, PreTrainedModel
from transformers.configuration_utils import SubConfigSpec
from transformers.modeling_outputs import CausalLMOutputWithPast


@strict
class Emu2StandInConfig(PreTrainedConfig):
    """text_config: LlamaConfig; vision_config: CLIPVisionConfig; n_query: visual embeddings per image
    (a square number; the patch grid is average-pooled to sqrt(n_query) x sqrt(n_query))."""

    model_type = "moss_emu2_standin"
    sub_configs_defaults = {
        "text_config": SubConfigSpec(config_class=AutoConfig, model_type="llama"),
        "vision_config": SubConfigSpec(config_class=AutoConfig, model_type="clip_vision_model"),
    }

    text_config: dict | PreTrainedConfig | None = None
    vision_config: dict | PreTrainedConfig | None = None
    n_query: int = 64
    tie_word_embeddings: bool = False

    @property
    def d_model(self) -> int:
        """Width of the visual embeddings (Emu2's config.d_model, 1792 for EVA-CLIP-E)."""
        return self.vision_config.hidden_size

    @property
    def hidden_size(self) -> int:
        return self.text_config.hidden_size


class Emu2Decoder(nn.Module):
    """Emu2's ``EmuForClsAndRegression``: the language model lives at ``.lm``."""

    def __init__(self, config):
        super().__init__()
        self.lm = LlamaForCausalLM(config)


class Emu2Inner(nn.Module):
    def __init__(self, config: Emu2StandInConfig):
        super().__init__()
        from transformers import CLIPVisionModel

        self.visual = CLIPVisionModel(config.vision_config)
        self.decoder = Emu2Decoder(config.text_config)


class Emu2StandIn(PreTrainedModel):
    """The stand-in's forward is the language model on text ids (images need the backbone spec, which
    places visual embeddings at the ``<image>`` positions; see Emu2Spec.hidden_states)."""

    config_class = Emu2StandInConfig
    config: Emu2StandInConfig
    base_model_prefix = "model"
    # as BAAI's EmuPreTrainedModel: checkpointing is enabled on the inner LM (Emu2Spec.enable_activation_checkpointing)
    supports_gradient_checkpointing = False
    _supports_sdpa = True
    _no_split_modules = ["LlamaDecoderLayer", "CLIPEncoderLayer"]

    def __init__(self, config: Emu2StandInConfig):
        super().__init__(config)
        self.model = Emu2Inner(config)
        self.project_up = nn.Linear(config.d_model, config.hidden_size, bias=False)
        self.project_down = nn.Linear(config.hidden_size, config.d_model, bias=False)
        self.post_init()

    def get_input_embeddings(self) -> nn.Module:
        return self.model.decoder.lm.get_input_embeddings()

    def forward(self, input_ids=None, attention_mask=None, inputs_embeds=None, labels=None, **kwargs) -> CausalLMOutputWithPast:
        return self.model.decoder.lm(input_ids=input_ids, attention_mask=attention_mask, inputs_embeds=inputs_embeds,
                                     labels=labels, **kwargs)

    @torch.no_grad()
    def _init_weights(self, module):
        super()._init_weights(module)
        if module is self.project_up or module is self.project_down:
            nn.init.normal_(module.weight, std=module.in_features ** -0.5)


AutoConfig.register(Emu2StandInConfig.model_type, Emu2StandInConfig)
AutoModelForCausalLM.register(Emu2StandInConfig, Emu2StandIn)
