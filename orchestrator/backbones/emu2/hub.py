"""Where Emu2's parts come from: a plain checkpoint, or an Emu2-Gen diffusers pipeline folder (local or hub)."""

from __future__ import annotations

import json
import os
from functools import cached_property

import torch
from torch import nn

from ..hub import checkpoint_file
from .diffusion import is_pipeline_dir, weight_variant


class Emu2Hub:
    """Loading of BAAI's checkpoints (their own code, so only with trust_remote_code) and of the stand-in."""

    pipeline_subfolder = "multimodal_encoder"

    def load(self, dtype: torch.dtype | None) -> nn.Module:
        from transformers import AutoModelForCausalLM

        # Emu2's code ships with its checkpoint: loading runs it, so only with backbone.trust_remote_code
        # (and, from the hub, a pinned backbone.revision). A stand-in exported by export_tiny loads through
        # the same call without it (its class is registered in standin.py).
        path = self.model_path
        if self.pipeline_root is not None:
            self.fetch(f"{self.pipeline_subfolder}/*")
        return AutoModelForCausalLM.from_pretrained(path, trust_remote_code=self.trust_remote_code, use_safetensors=True,
                                                    variant=weight_variant(path), dtype=dtype or "auto", **self._model_hub)

    @cached_property
    def pipeline_root(self) -> str | None:
        """The local folder of an Emu2-Gen checkpoint (a diffusers pipeline: model_index.json,
        multimodal_encoder/, tokenizer/, unet/, vae/, scheduler/...), or None for a plain Emu2 checkpoint.
        From the hub, only model_index.json, the tokenizer and the encoder's config and code come down here;
        ``build`` fetches the encoder's weights and ``diffusion`` the decoder's (``fetch``)."""
        if self.is_random:
            return None
        if os.path.isdir(self.checkpoint):
            return self.checkpoint if is_pipeline_dir(self.checkpoint) else None
        if checkpoint_file(self.checkpoint, "model_index.json", self.revision) is None:
            return None
        sub = self.pipeline_subfolder
        return self.fetch("model_index.json", "tokenizer/*", f"{sub}/*.json", f"{sub}/*.py")

    def fetch(self, *patterns: str) -> str:
        """Download these files of a hub Emu2-Gen checkpoint (a no-op for local folders); -> the local root."""
        if os.path.isdir(self.checkpoint):
            return self.checkpoint
        from huggingface_hub import snapshot_download

        return snapshot_download(self.checkpoint, allow_patterns=list(patterns), **self.hub)

    @property
    def _model_hub(self) -> dict:
        """The revision for loads of model_path: a hub id (a pipeline's folder was fetched at that revision)."""
        return self.hub if self.pipeline_root is None else {}

    @property
    def model_path(self) -> str:
        root = self.pipeline_root
        return os.path.join(root, self.pipeline_subfolder) if root else self.checkpoint

    @cached_property
    def tokenizer(self):
        if self.is_random:
            return super().tokenizer
        from transformers import AutoTokenizer

        root = self.pipeline_root
        return AutoTokenizer.from_pretrained(os.path.join(root, "tokenizer"), trust_remote_code=self.trust_remote_code) \
            if root else AutoTokenizer.from_pretrained(self.checkpoint, trust_remote_code=self.trust_remote_code, **self.hub)

    @cached_property
    def model_config(self):
        if self.is_random:
            return self.random_config()
        from transformers import AutoConfig

        return AutoConfig.from_pretrained(self.model_path, trust_remote_code=self.trust_remote_code, **self._model_hub)

    def size_config(self):
        """BAAI's Emu2 config belongs to remote code (not run here): its decoder shape is read from the JSON and
        built as the stand-in; the project's own stand-in exports load through AutoConfig."""
        path = os.path.join(self.model_path, "config.json") if os.path.isdir(self.checkpoint) else None
        if path is None or not os.path.isfile(path):
            raise ValueError(f"cannot size emu2 checkpoint {self.checkpoint}: no local config.json")
        raw = json.loads(open(path).read())
        if raw.get("model_type") == self.standin_model_type:
            from transformers import AutoConfig

            return AutoConfig.from_pretrained(self.model_path), "local config.json"
        return self.real_size_config("37b"), "Emu2's published size (37b; remote-code config not executed)"

    @property
    def has_pixel_decoder(self) -> bool:
        """An Emu2-Gen checkpoint: its UNet + VAE turn the regressed embeddings into pixels."""
        root = self.pipeline_root
        if root is None:
            return False
        index = json.loads(open(os.path.join(root, "model_index.json")).read())
        return "unet" in index and "vae" in index
