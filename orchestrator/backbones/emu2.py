"""Emu2 / Emu2-Gen: continuous visual embeddings, regressed rather than sampled.

An image is ``[IMG]`` + n_query x ``<image>`` + ``[/IMG]`` (n_query = 64 for Emu2 and Emu2-Gen: an
8 x 8 grid). The visual encoder's patch grid is average-pooled to 8 x 8 and flattened row-major
(Emu2's ``encode_image``); ``project_up`` of those embeddings replaces the ``<image>`` token
embeddings, so the sequence is fed as ``inputs_embeds`` and the MoSS layout comes from the
``<image>`` positions after each ``[IMG]``.

Loss: text cross-entropy, plus regression of the visual embeddings: the hidden state at ``[IMG]`` and
at each ``<image>`` predicts the next embedding through ``project_down`` (MSE, or 1 - cosine).

Shards keep pixels, not embeddings: each image is stored as the PNG of the resized (448 x 448 for
the real checkpoints) RGB image, the exact input of the visual encoder before normalisation.
"""

from __future__ import annotations

import inspect
import io
import json
import math
import os
from functools import cached_property
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from .base import (
    TINY_TEXT_VOCAB,
    checkpoint_file,
    BackboneSpec,
    HubCheckpoint,
    chunked_cross_entropy,
    ImageFrame,
    ImagePiece,
    LossOutput,
    decoder_regex,
    fixed_grid_layout,
    set_layout,
    split_loss,
    unwrap,
)
from .emu2_diffusion import DiffusionSettings, Emu2Diffusion, is_pipeline_dir, weight_variant
from .emu2_model import Emu2StandIn, Emu2StandInConfig

#: Emu2's image transform (HF ``prepare_image_input``): bicubic resize, OpenAI CLIP mean / std
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
#: vision towers of the random presets: the patch grid is twice the 8 x 8 embedding grid
VISION_PRESETS = {
    "tiny": dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, image_size=32, patch_size=2),
    "small": dict(hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4, image_size=64, patch_size=4),
    "large": dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=4, num_attention_heads=16, image_size=224,
                  patch_size=14),
}
Regression = Literal["mse", "cosine"]


def _get(cfg, name: str, default=None):
    """A field of a config that may be an object or (remote-code sub-configs) a dict."""
    return cfg.get(name, default) if isinstance(cfg, dict) else getattr(cfg, name, default)


class Emu2Spec(BackboneSpec):
    name = "emu2"
    model_class = Emu2StandIn
    hub_checkpoints = {"BAAI/Emu2": HubCheckpoint("37b"), "BAAI/Emu2-Gen": HubCheckpoint("37b")}
    model_types = ()  # BAAI's config names its own remote-code class (auto_map); checked in plan/checkpoints.py
    # BAAI/Emu2 config.json (LLaMA-33B decoder) + vision_config (EVA-CLIP-E-14-plus, 448 px)
    real_sizes = {
        "37b": dict(vocab_size=32272, hidden_size=6656, intermediate_size=17920, num_hidden_layers=60,
                    num_attention_heads=52, num_key_value_heads=52, max_position_embeddings=2048, rms_norm_eps=1e-6),
    }
    real_vision = dict(hidden_size=1792, intermediate_size=15360, num_hidden_layers=64, num_attention_heads=16,
                       image_size=448, patch_size=14)
    img, img_end, image = "[IMG]", "[/IMG]", "<image>"
    continuous_images = True

    def __init__(self, checkpoint: str = "tiny", regression: Regression = "mse", **hub):
        super().__init__(checkpoint, **hub)
        if regression not in ("mse", "cosine"):
            raise ValueError(f"regression must be 'mse' or 'cosine', not {regression!r}")
        self.regression = regression

    # ---- building ---------------------------------------------------------------------------------
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

    def build(self, checkpoint: str | None = None, seed: int = 0, dtype: torch.dtype | None = None) -> nn.Module:
        checkpoint = checkpoint or self.checkpoint
        if checkpoint != self.checkpoint:
            return type(self)(checkpoint, self.regression).build(seed=seed, dtype=dtype)
        if self.is_random:
            torch.manual_seed(seed)
            model = self.model_class(self.random_config())
            model = model.to(dtype) if dtype is not None else model
        else:
            from transformers import AutoModelForCausalLM

            # Emu2's code ships with its checkpoint: loading runs it, so only with backbone.trust_remote_code
            # (and, from the hub, a pinned backbone.revision). A stand-in exported by export_tiny loads through
            # the same call without it (its class is registered here).
            path = self.model_path
            if self.pipeline_root is not None:
                self.fetch("multimodal_encoder/*")
            model = AutoModelForCausalLM.from_pretrained(path, trust_remote_code=self.trust_remote_code,
                                                         use_safetensors=True, variant=weight_variant(path),
                                                         dtype=dtype or "auto", **self._model_hub)
        return model.eval()

    def export_tiny(self, directory: str, seed: int = 0) -> str:
        if not self.is_random:
            raise ValueError("export_tiny needs a spec bound to a random-init preset")
        self.build(seed=seed).save_pretrained(directory)
        self.tokenizer.save_pretrained(directory)
        return directory

    def tiny_image_processor(self):
        return None  # Emu2 has no image processor class: its transform is fixed (preprocess below)

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
        return self.fetch("model_index.json", "tokenizer/*", "multimodal_encoder/*.json", "multimodal_encoder/*.py")

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
        return os.path.join(root, "multimodal_encoder") if root else self.checkpoint

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

    def decoder_layers(self, model):
        return unwrap(model).model.decoder.lm.model.layers

    @property
    def target_modules(self) -> str:
        return decoder_regex("model.decoder.lm.model.layers")

    def layout_modules(self, model):
        lm = model.model.decoder.lm.model
        return lm, lm

    def enable_activation_checkpointing(self, model: nn.Module) -> None:
        """On the inner LLaMA: Emu2's own class says it does not support it (the vision tower runs without
        gradients anyway)."""
        self.lm(model).gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})

    def lm(self, model: nn.Module) -> nn.Module:
        """The LLaMA causal LM (``.model`` the decoder stack, ``.lm_head`` the text head)."""
        return unwrap(model).model.decoder.lm

    # ---- images: pixels in, 8 x 8 visual embeddings out ----------------------------------------------
    @cached_property
    def n_query(self) -> int:
        cfg = self.model_config  # BAAI/Emu2 builds its placeholders from vision_config.n_query (v_query is video's)
        n = _get(_get(cfg, "vision_config", {}), "n_query") or _get(cfg, "n_query") or 64
        if math.isqrt(n) ** 2 != n:
            raise ValueError(f"{self.checkpoint}: n_query={n} is not a square grid")
        return n

    @cached_property
    def grid(self) -> tuple[int, int]:
        side = math.isqrt(self.n_query)
        return side, side

    def config_grid(self, config) -> tuple[int, int]:
        """sqrt(n_query) per side: 8 x 8 embeddings for Emu2 and the stand-in."""
        n = _get(_get(config, "vision_config", {}), "n_query") or _get(config, "n_query") or 64
        return math.isqrt(n), math.isqrt(n)

    @cached_property
    def image_size(self) -> int:
        return int(_get(_get(self.model_config, "vision_config", {}), "image_size", 448))

    @cached_property
    def d_model(self) -> int:
        return int(_get(self.model_config, "d_model"))

    @property
    def vq(self):
        raise AttributeError("emu2 has no VQ image tokenizer: images become embeddings inside the model")

    @property
    def image_processor(self):
        return None

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

    def text_ids(self, text: str) -> list[int]:
        """Text never yields [IMG] / <image> / [/IMG] ids: a literal "<image>" in a prompt stays text (a
        placeholder without an embedding behind it would shift every image after it)."""
        ids = self.tokenizer(text, add_special_tokens=False, split_special_tokens=True)["input_ids"]
        if set(ids) & set(self.placeholder_ids):  # a tokenizer whose image tokens are not "special" ones
            from ..data.schema import SchemaError

            raise SchemaError(f"text holds one of Emu2's image tokens {self.img} / {self.image} / {self.img_end}: "
                              f"{text[:80]!r}")
        return ids

    @cached_property
    def placeholder_ids(self) -> tuple[int, int, int]:
        return tuple(self.token_id(t) for t in (self.img, self.image, self.img_end))

    def encode_image(self, image: Image.Image) -> ImagePiece:
        ids = [self.token_id(self.img), *[self.token_id(self.image)] * self.n_query, self.token_id(self.img_end)]
        return ImagePiece(ids, image=self.resize(image))

    def image_codes(self, pixel_values, image_size):
        raise NotImplementedError("emu2 images are continuous embeddings (visual_embeddings), not VQ codes")

    def image_tokens(self, codes):
        raise NotImplementedError("emu2 images are continuous embeddings (encode_image), not VQ codes")

    def tiny_image_size(self, image):
        return self.image_size, self.image_size

    @staticmethod
    def png(image: Image.Image) -> bytes:
        """How shards store a resized image (lossless, so training sees exactly these pixels)."""
        buf = io.BytesIO()
        image.save(buf, format="PNG")
        return buf.getvalue()

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

    def _cell_index(self, layout, device):
        """(batch rows, positions) of every present cell, and (image, cell) of each, in layout order."""
        b_idx, t_idx, k_idx, c_idx, k = [], [], [], [], 0
        for b, segs in enumerate(layout.segments):
            for seg in segs:
                pos = seg.positions()
                b_idx.append(torch.full_like(pos, b))
                t_idx.append(pos)
                k_idx.append(torch.full_like(pos, k))
                c_idx.append(torch.arange(seg.n_cells))
                k += 1
        if not b_idx:
            return None, 0
        return tuple(torch.cat(x).to(device) for x in (b_idx, t_idx, k_idx, c_idx)), k

    def embed(self, model: nn.Module, input_ids: torch.Tensor, layout, visual: torch.Tensor | None) -> torch.Tensor:
        """(B, T) ids -> (B, T, D) inputs_embeds, project_up(visual) at the layout's cells."""
        base = unwrap(model)
        emb = self.lm(model).get_input_embeddings()(input_ids)
        index, n_images = self._cell_index(layout, input_ids.device)
        if n_images == 0:
            return emb
        if visual is None or visual.shape[0] != n_images:
            got = 0 if visual is None else visual.shape[0]
            raise ValueError(f"the batch lays out {n_images} images but has visual embeddings for {got}")
        b, t, k, c = index
        up = base.project_up(visual[k, c].to(base.project_up.weight.dtype))
        return emb.index_put((b, t), up.to(emb.dtype))

    def _hidden(self, model: nn.Module, batch: dict) -> tuple[torch.Tensor, torch.Tensor | None]:
        layout = batch["image_layout"]
        visual = self.batch_visual(model, batch)
        emb = self.embed(model, batch["input_ids"], layout, visual)
        set_layout(model, layout)
        h = self.lm(model).model(inputs_embeds=emb, attention_mask=batch.get("attention_mask")).last_hidden_state
        return h, visual

    def hidden_states(self, model, batch):
        return self._hidden(model, batch)[0]

    def image_layout(self, input_ids, labels=None):
        ids = input_ids.cpu()
        return fixed_grid_layout(ids, labels, {self.token_id(self.img)}, ids == self.token_id(self.image), *self.grid)

    def is_image_target(self, targets):
        return targets == self.token_id(self.image)

    def regression_sum(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Summed per-embedding loss: mean squared error over the d dimensions, or 1 - cosine."""
        pred, target = pred.float(), target.float()
        if self.regression == "cosine":
            return (1 - F.cosine_similarity(pred, target, dim=-1)).sum()
        return (pred - target).pow(2).mean(-1).sum()

    def loss(self, model, batch, weights=(1.0, 1.0), chunk: int | None = None) -> LossOutput:
        """Text CE (lm_head) + visual-embedding regression (project_down), weighted (text, image).

        Position t predicts position t + 1: where labels[t + 1] is ``<image>``, the target is the
        visual embedding placed there; elsewhere the usual next-token CE over the text vocabulary.
        """
        if isinstance(model, nn.parallel.DistributedDataParallel):
            raise TypeError("spec.loss would bypass DistributedDataParallel.forward: call spec.loss_module(model) "
                            "wrapped in DDP instead")
        h, visual = self._hidden(model, batch)
        labels = batch["labels"]
        hp, tgt = h[:, :-1], labels[:, 1:]
        target_grid = None
        base = unwrap(model)
        index, _ = self._cell_index(batch["image_layout"], h.device)
        is_cell = torch.zeros(labels.shape, dtype=torch.bool, device=h.device)
        if index is not None:
            is_cell[index[0], index[1]] = True  # image targets: the layout's cells (ids only mirror them)

        def term(sel: torch.Tensor, image: bool) -> torch.Tensor:
            nonlocal target_grid
            if not image:
                head = self.lm(model).lm_head
                return chunked_cross_entropy(lambda r, t: (head(r), t), hp[sel], tgt[sel], chunk)
            if target_grid is None:  # (B, T, d): each cell's own embedding at its position
                b, t, k, c = index
                target_grid = h.new_zeros((*labels.shape, visual.shape[-1]), dtype=torch.float32)
                target_grid = target_grid.index_put((b, t), visual[k, c].float())
            return self.regression_sum(base.project_down(hp[sel]), target_grid[:, 1:][sel])

        return split_loss(term, labels, lambda targets: is_cell[:, 1:], weights, h)

    #: the loss of image targets is a regression, not a cross-entropy (no image perplexity)
    image_loss_is_ce = False

    # ---- generation ---------------------------------------------------------------------------------
    def count_visual(self, input_ids: torch.Tensor) -> int:
        return int((input_ids == self.token_id(self.image)).sum())

    def forward_hidden(self, model, input_ids, cache=None, visual=None):
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
        return decoder_step(lm.model, emb, cache)

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

    @property
    def has_pixel_decoder(self) -> bool:
        """An Emu2-Gen checkpoint: its UNet + VAE turn the regressed embeddings into pixels."""
        root = self.pipeline_root
        if root is None:
            return False
        index = json.loads(open(os.path.join(root, "model_index.json")).read())
        return "unet" in index and "vae" in index

    pixel_note = ("emu2: the 8x8 grid of visual embeddings is saved (.npy); pixels need Emu2-Gen's diffusion decoder: "
                  "use an Emu2-Gen checkpoint (BAAI/Emu2-Gen or a local copy of it) with diffusers installed")

    def diffusion(self, model: nn.Module) -> Emu2Diffusion:
        """Emu2-Gen's UNet + VAE + scheduler, loaded once, on the model's device and in its dtype."""
        if getattr(self, "_diffusion", None) is None:
            p = next(model.parameters())
            root = self.fetch("unet/*", "vae/*", "scheduler/*", "safety_checker/*", "feature_extractor/*")
            self._diffusion = Emu2Diffusion.from_pipeline_dir(root, dtype=p.dtype, device=p.device)
        return self._diffusion

    def decode_image(self, grid, model=None, negative: torch.Tensor | None = None,
                     settings: DiffusionSettings = DiffusionSettings()):
        """(h, w, d) regressed embeddings -> pixels through Emu2-Gen's diffusion decoder (None without one).
        ``negative``: the embeddings regressed from an empty prompt (the unconditional half of the guidance)."""
        if not self.has_pixel_decoder or model is None:
            return None
        if negative is None:
            raise ValueError("Emu2-Gen's guidance needs the embeddings regressed from an empty prompt (negative)")
        return self.diffusion(model)(grid.reshape(-1, grid.shape[-1]), negative.reshape(-1, grid.shape[-1]), settings)


def decoder_step(decoder: nn.Module, inputs_embeds: torch.Tensor, cache):
    """One cached decoder forward -> (hidden, cache), for transformers 5 (``cache=``) and for remote code
    written for transformers 4 (``past_key_values=``)."""
    if "cache" in inspect.signature(decoder.forward).parameters:
        out = decoder(inputs_embeds=inputs_embeds, cache=cache, use_cache=True)
        return out.last_hidden_state, out.cache
    out = decoder(inputs_embeds=inputs_embeds, past_key_values=cache, use_cache=True)
    return out.last_hidden_state, out.past_key_values

