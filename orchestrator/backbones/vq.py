"""VQSpec: the families whose images are VQ codes in the token sequence (Chameleon / Anole, Emu3, Janus).

The spec owns the image tokenizer (the model's own VQ-VAE submodule, loaded alone for tokenizing; a fixed
seeded one for the random presets), turns pixels into a code grid and the grid into token ids, and at
generation time maps the image head's logits back to codes (and codes to pixels where transformers can).
"""

from __future__ import annotations

import hashlib
from abc import abstractmethod
from functools import cached_property

import numpy as np
import torch
from PIL import Image
from torch import nn

from ..wrappers import unwrap
from .hub import load_submodule
from .local_vq import localize
from .spec import BackboneSpec

TINY_VQ_SEED = 1234  # a preset's image tokenizer is the same whatever seed the model is built with


def pixels_to_image(pixels: torch.Tensor) -> Image.Image:
    """(3, H, W) VQ decoder output in [-1, 1] -> an RGB PIL image."""
    arr = ((pixels.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()
    return Image.fromarray(arr, "RGB")


class VQSpec(BackboneSpec):
    """A family whose images are grids of VQ codes written as token ids."""

    #: transformers' class mapping VQ codes <-> vocabulary ids (backbones whose codes are vocabulary tokens)
    vocab_mapping_class: type | None = None
    #: where the VQ's weights sit in a checkpoint (the first prefix present is used)
    vq_prefixes = ("model.vqmodel.", "vqmodel.")

    def vq_module(self, model: nn.Module) -> nn.Module:
        """The model's image tokenizer (VQ-VAE) submodule."""
        return model.model.vqmodel

    def init_random(self, model: nn.Module) -> None:
        self.vq_module(model).load_state_dict(self.tiny_vq().state_dict())

    def tiny_vq(self) -> nn.Module:
        """The fixed tiny image tokenizer (seeded independently of the model seed), with local codes."""
        if not hasattr(self, "_tiny_vq"):
            torch.manual_seed(TINY_VQ_SEED)
            self._tiny_vq = localize(self.vq_module(self.model_class(self.random_config()))).eval()
        return self._tiny_vq

    @cached_property
    def vq(self) -> nn.Module:
        if self.is_random:
            return self.tiny_vq()
        return load_submodule(self.checkpoint, self.model_class, self.vq_module, self.vq_prefixes, self.revision).eval()

    def pixel_vq(self, model: nn.Module | None) -> nn.Module:
        """The VQ to decode with: the model's own (on its device) when given, else the tokenizing one."""
        return self.vq_module(unwrap(model)) if model is not None else self.vq

    @cached_property
    def vocab_mapping(self):
        return self.vocab_mapping_class(self.model_config.vocabulary_map)

    @cached_property
    def image_token_ids(self) -> torch.Tensor:
        """Sorted vocabulary ids of the image codes."""
        return torch.tensor(self.vocab_mapping.image_tokens, dtype=torch.long)

    @abstractmethod
    def image_codes(self, pixel_values: torch.Tensor, image_size: tuple[int, int]) -> torch.Tensor:
        """(1, 3, H, W) pixels -> (h, w) VQ code grid."""

    @abstractmethod
    def image_tokens(self, codes: torch.Tensor) -> list[int]:
        """(h, w) code grid -> the token ids that represent the image in input_ids (with its specials)."""

    @abstractmethod
    def tiny_image_size(self, image: Image.Image) -> tuple[int, int]:
        """(H, W) in pixels that the tiny VQ takes this image at."""

    @cached_property
    def image_processor(self):
        if self.is_random:
            return None
        from transformers import AutoImageProcessor

        return AutoImageProcessor.from_pretrained(self.checkpoint, **self.hub)

    def preprocess(self, image: Image.Image) -> tuple[torch.Tensor, tuple[int, int]]:
        """PIL image -> ((1, 3, H, W) pixels, (H, W)) for the VQ."""
        image = image.convert("RGB")
        if self.image_processor is not None:
            out = self.image_processor(images=image, return_tensors="pt")
            px = out["pixel_values"]
            size = tuple(int(s) for s in out["image_sizes"][0]) if "image_sizes" in out else tuple(px.shape[-2:])
            return px, size
        h, w = self.tiny_image_size(image)
        arr = np.asarray(image.resize((w, h), Image.BICUBIC), dtype=np.float32) / 127.5 - 1.0
        return torch.from_numpy(arr).permute(2, 0, 1).unsqueeze(0), (h, w)

    @torch.no_grad()
    def encode_image(self, image: Image.Image) -> list[int]:
        px, size = self.preprocess(image)
        vq_dtype = next(self.vq.parameters()).dtype
        return self.image_tokens(self.image_codes(px.to(vq_dtype), size))

    def is_image_target(self, targets: torch.Tensor) -> torch.Tensor:
        return torch.isin(targets, self.image_token_ids.to(targets.device))

    # ---- generation -------------------------------------------------------------------------------
    @cached_property
    def image_candidates(self) -> torch.Tensor:
        """The ids an image cell may take, in the order of ``image_logits``' last dimension."""
        return self.image_token_ids

    def image_logits(self, model: nn.Module, h: torch.Tensor) -> torch.Tensor:
        """(..., D) hidden -> (..., n_codes) logits over ``image_candidates`` only."""
        head = unwrap(model).lm_head
        if getattr(self, "_image_rows_of", None) is not head.weight:  # the rows of the code ids, sliced once
            self._image_rows, self._image_rows_of = head.weight[self.image_candidates.to(head.weight.device)], head.weight
        return h @ self._image_rows.t()

    def ids_to_codes(self, ids: torch.Tensor) -> torch.Tensor:
        """Image-cell ids -> VQ codebook indices."""
        bpe2img = self.vocab_mapping.bpe2img
        return torch.tensor([bpe2img[int(t)] for t in ids.flatten()], dtype=torch.long).view(ids.shape)

    def text_banned_ids(self) -> list[int]:
        frame = self.image_frame(*self.generation_grid())
        banned = {self.tokenizer.pad_token_id, *frame.close, *frame.row_end}
        banned.update(set(frame.header) - set(self.text_ids("0123456789*")))  # Emu3's <|image token|>
        mapping = self.vocab_mapping if self.vocab_mapping_class is not None else None
        if mapping is not None and mapping.image_token_id is not None:
            banned.add(mapping.image_token_id)  # the processor's placeholder
        banned.discard(None)
        return sorted(banned) + self.image_token_ids.tolist()

    def target_grid(self, model: nn.Module, image: Image.Image) -> torch.Tensor:
        """An image -> what generation produces for it: the (h, w) VQ code grid."""
        px, size = self.preprocess(image)
        return self.image_codes(px.to(next(self.vq.parameters()).dtype), size)

    def grid_scores(self, generated: torch.Tensor, target: torch.Tensor) -> dict:
        """Agreement of a generated and a target grid: the fraction of equal codes (None for another shape)."""
        same = generated.shape == target.shape
        return {"code_match": float((generated == target).float().mean()) if same else None}

    def image_fingerprint(self) -> dict:
        h = hashlib.sha256()
        for k, v in sorted(self.vq.state_dict().items()):
            h.update(k.encode())
            h.update(v.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
        return {"vq": {"class": type(self.vq).__name__, "sha256": h.hexdigest()[:16]}}

    @torch.no_grad()
    def decode_codes(self, codes: torch.Tensor, model: nn.Module | None = None) -> Image.Image:
        """(h, w) codes -> pixels through the VQ's decoder (families whose VQ in transformers has one)."""
        vq = self.pixel_vq(model)
        return pixels_to_image(vq.decode(self.decoder_input(codes).to(next(vq.parameters()).device))[0])

    def decoder_input(self, codes: torch.Tensor) -> torch.Tensor:
        """(h, w) codes -> what this family's ``vq.decode`` takes."""
        return codes[None]

    def decode_image(self, grid, model=None, **settings):
        return self.decode_codes(grid, model) if self.has_pixel_decoder else None
