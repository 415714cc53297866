"""Emu2 at generation time: text from lm_head, each image cell's embedding regressed (project_down), pixels
from Emu2-Gen's diffusion decoder when the checkpoint has one."""

from __future__ import annotations

import inspect
from functools import cached_property

import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from ...wrappers import unwrap
from ..frame import ImageFrame
from .diffusion import DiffusionSettings, Emu2Diffusion


def decoder_step(decoder: nn.Module, inputs_embeds: torch.Tensor, cache, **positions):
    """One cached decoder forward -> (hidden, cache), for transformers 5 (``cache=``) and for remote code
    written for transformers 4 (``past_key_values=``)."""
    if "cache" in inspect.signature(decoder.forward).parameters:
        out = decoder(inputs_embeds=inputs_embeds, cache=cache, use_cache=True, **positions)
        return out.last_hidden_state, out.cache
    out = decoder(inputs_embeds=inputs_embeds, past_key_values=cache, use_cache=True, **positions)
    return out.last_hidden_state, out.past_key_values


class Emu2Generation:
    """One decoding step, the image frame, and what a generated embedding grid is scored and decoded with."""

    pixel_note = ("emu2: the 8x8 grid of visual embeddings is saved (.npy); pixels need Emu2-Gen's diffusion decoder: "
                  "use an Emu2-Gen checkpoint (BAAI/Emu2-Gen or a local copy of it) with diffusers installed")

    def count_visual(self, input_ids: torch.Tensor) -> int:
        return int((input_ids == self.token_id(self.image)).sum())

    def forward_hidden(self, model, input_ids, cache=None, visual=None, **positions):
        """New ids after ``cache`` (``<image>`` ids take the rows of ``visual``, (n, d), in order)."""
        base = unwrap(model)
        lm = self.lm(model)
        emb = lm.get_input_embeddings()(input_ids)
        is_img = input_ids == self.token_id(self.image)
        n = int(is_img.sum())
        if n != (0 if visual is None else visual.shape[0]):
            raise ValueError(f"{n} <image> ids but {0 if visual is None else visual.shape[0]} visual embeddings")
        if n:
            up = base.project_up(visual.to(base.project_up.weight.dtype).reshape(n, -1))
            emb = emb.index_put((is_img,), up.to(emb.dtype))
        return decoder_step(lm.model, emb, cache, **positions)

    def text_logits(self, model, h):
        return self.lm(model).lm_head(h)

    def regress(self, model: nn.Module, h: torch.Tensor) -> torch.Tensor:
        """(..., D) hidden -> (..., d_model) the next visual embedding (project_down)."""
        return unwrap(model).project_down(h)

    @cached_property
    def image_token_ids(self) -> torch.Tensor:
        return torch.tensor([self.token_id(self.image)])

    def image_frame(self, height: int, width: int) -> ImageFrame:
        return ImageFrame(self.token_id(self.img), (), (), (self.token_id(self.img_end),), height, width)

    @property
    def cell_id(self) -> int:
        """The id every generated cell carries (its content is the regressed embedding)."""
        return self.token_id(self.image)

    def text_banned_ids(self) -> list[int]:
        ids = (self.tokenizer.pad_token_id, self.token_id(self.image), self.token_id(self.img_end))
        return sorted(t for t in ids if t is not None)

    def image_logits(self, model, h):
        raise NotImplementedError("emu2 regresses image embeddings (regress), it does not sample codes")

    def target_grid(self, model: nn.Module, image: Image.Image) -> torch.Tensor:
        """An image -> its (h, w, d) visual embedding grid (what generation regresses)."""
        device = next(model.parameters()).device
        px = self.normalize(self.resize(image))[None].to(device)
        return self.visual_embeddings(model, px)[0].float().view(*self.grid, -1).cpu()

    def grid_scores(self, generated: torch.Tensor, target: torch.Tensor) -> dict:
        """Agreement of a generated and a target embedding grid: MSE and mean cosine over the cells."""
        g, t = generated.float().flatten(0, 1), target.float().flatten(0, 1)
        return {"embedding_mse": float((g - t).pow(2).mean()),
                "embedding_cos": float(F.cosine_similarity(g, t, dim=-1).mean())}

    def prepare_decoder(self, model: nn.Module) -> None:
        if self.has_pixel_decoder:
            self.diffusion(model)  # the UNet + VAE: a missing diffusers fails before any generation

    def diffusion(self, model: nn.Module) -> Emu2Diffusion:
        """Emu2-Gen's UNet + VAE + scheduler, loaded once, on the model's device and in its dtype."""
        if getattr(self, "_diffusion", None) is None:
            p = next(model.parameters())
            root = self.fetch("unet/*", "vae/*", "scheduler/*", "safety_checker/*", "feature_extractor/*")
            self._diffusion = Emu2Diffusion.from_pipeline_dir(root, dtype=p.dtype, device=p.device)
        return self._diffusion

    def decode_image(self, grid, model=None, negative: torch.Tensor | None = None, settings: dict | None = None):
        """(h, w, d) regressed embeddings -> pixels through Emu2-Gen's diffusion decoder (None without one).
        ``negative``: the embeddings regressed from an empty prompt (the unconditional half of the guidance);
        ``settings``: steps, guidance_scale, size, seed (DiffusionSettings' fields)."""
        if not self.has_pixel_decoder or model is None:
            return None
        if negative is None:
            raise ValueError("Emu2-Gen's guidance needs the embeddings regressed from an empty prompt (negative)")
        run = DiffusionSettings(**(settings or {}))
        return self.diffusion(model)(grid.reshape(-1, grid.shape[-1]), negative.reshape(-1, grid.shape[-1]), run)
