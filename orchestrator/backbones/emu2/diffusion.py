"""Emu2-Gen's visual decoder: 64 regressed visual embeddings -> pixels.

An Emu2-Gen checkpoint (``BAAI/Emu2-Gen``) is a diffusers pipeline folder: ``multimodal_encoder/`` (the Emu2
model), ``tokenizer/``, and an SDXL-shaped ``unet/`` conditioned on the 64 embeddings (cross-attention
dim 1792), a ``vae/``, an Euler ``scheduler/``, and a ``safety_checker/`` + ``feature_extractor/``.
``Emu2Diffusion`` runs the denoising loop of its ``EmuVisualGenerationPipeline.__call__``
(baaivision/Emu, ``Emu2/emu/diffusion.py``): classifier-free guidance against the embeddings regressed
from an empty prompt (conditional half first), SDXL's added conditions (``time_ids`` = original size +
crop + target size, ``text_embeds`` = the mean embedding), then ``vae.decode(latents / scaling_factor)``
and the safety checker when the folder has one. Needs diffusers (``pip install 'moss-orchestrator[emu2-gen]'``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image


@dataclass(frozen=True)
class DiffusionSettings:
    """Emu2-Gen's defaults: 50 Euler steps, guidance 3, 1024 x 1024 pixels."""

    steps: int = 50
    guidance_scale: float = 3.0
    size: int = 1024
    seed: int = 0


def is_pipeline_dir(path: str) -> bool:
    return os.path.isfile(os.path.join(path, "model_index.json"))


def weight_variant(folder: str) -> str | None:
    """"bf16" when the folder's weights are saved as a bf16 variant (``*.bf16.safetensors``), as Emu2-Gen's are."""
    if not os.path.isdir(folder):
        return None
    return "bf16" if any(".bf16." in f or f.endswith(".bf16.json") for f in os.listdir(folder)) else None


class Emu2Diffusion:
    def __init__(self, unet, vae, scheduler, safety_checker=None, feature_extractor=None):
        self.unet, self.vae, self.scheduler = unet, vae, scheduler
        self.safety_checker, self.feature_extractor = safety_checker, feature_extractor

    @classmethod
    def from_pipeline_dir(cls, root: str, dtype: torch.dtype | None = None, device=None) -> Emu2Diffusion:
        try:
            from diffusers import AutoencoderKL, EulerDiscreteScheduler, UNet2DConditionModel
        except ImportError as e:
            raise ImportError(f"{root} has Emu2-Gen's diffusion decoder, which needs diffusers: "
                              "pip install 'moss-orchestrator[emu2-gen]'") from e

        def load(model_cls, sub):
            model = model_cls.from_pretrained(root, subfolder=sub, variant=weight_variant(os.path.join(root, sub)),
                                              use_safetensors=True, torch_dtype=dtype)
            return (model.to(device) if device is not None else model).eval()

        unet, vae = load(UNet2DConditionModel, "unet"), load(AutoencoderKL, "vae")
        scheduler = EulerDiscreteScheduler.from_pretrained(root, subfolder="scheduler")
        checker = extractor = None
        if os.path.isdir(os.path.join(root, "safety_checker")):
            from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker
            from transformers import CLIPImageProcessor

            checker = load(StableDiffusionSafetyChecker, "safety_checker")
            extractor = CLIPImageProcessor.from_pretrained(root, subfolder="feature_extractor")
        return cls(unet, vae, scheduler, checker, extractor)

    @property
    def vae_scale_factor(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @torch.no_grad()
    def __call__(self, cond: torch.Tensor, uncond: torch.Tensor, settings: DiffusionSettings = DiffusionSettings()) -> Image.Image:
        """cond / uncond: (n_query, d) embeddings (the answer's, and those regressed from an empty prompt)."""
        unet, device = self.unet, next(self.unet.parameters()).device
        dtype = next(unet.parameters()).dtype
        s = settings.size
        guided = settings.guidance_scale > 1.0
        embeds = (torch.stack([cond, uncond]) if guided else cond[None]).to(device, dtype)
        time_ids = torch.tensor([[s, s, 0, 0, s, s]] * embeds.shape[0], device=device, dtype=dtype)
        added = {"time_ids": time_ids, "text_embeds": embeds.mean(1)}
        self.scheduler.set_timesteps(settings.steps, device=device)
        f = self.vae_scale_factor
        gen = torch.Generator(device="cpu").manual_seed(settings.seed)
        latents = torch.randn((1, unet.config.in_channels, s // f, s // f), generator=gen).to(device, dtype)
        latents = latents * self.scheduler.init_noise_sigma
        for t in self.scheduler.timesteps:
            x = torch.cat([latents] * embeds.shape[0])
            x = self.scheduler.scale_model_input(x, t)
            noise = unet(x, t, encoder_hidden_states=embeds, added_cond_kwargs=added).sample
            if guided:
                c, u = noise.chunk(2)
                noise = u + settings.guidance_scale * (c - u)
            latents = self.scheduler.step(noise, t, latents).prev_sample
        vae_dtype = next(self.vae.parameters()).dtype
        image = self.vae.decode(latents.to(vae_dtype) / self.vae.config.scaling_factor).sample
        array = (image / 2 + 0.5).clamp(0, 1).cpu().permute(0, 2, 3, 1).float().numpy()
        if self.safety_checker is not None:
            pil = [Image.fromarray((a * 255).round().astype(np.uint8)) for a in array]
            clip_input = self.feature_extractor(pil, return_tensors="pt").pixel_values.to(device, vae_dtype)
            array, _ = self.safety_checker(images=array, clip_input=clip_input)  # flagged images come back black
        return Image.fromarray((np.asarray(array[0]) * 255).round().astype(np.uint8), "RGB")
