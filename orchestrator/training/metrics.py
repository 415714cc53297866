"""Per-step and evaluation metrics, summed over workers so they describe the global batch, and their names:
the one list (sweeps rank by them, the CLI prints them). Torch is imported where used: a space is validated
without it."""

from __future__ import annotations

import math
import resource

TRAIN, VAL = "train", "val"
LOSSES = ("loss", "text_loss", "image_loss", "frame_loss")  # <prefix>/<name>, train and val
PERPLEXITIES = ("ppl", "text_ppl", "image_ppl")  # val only
STEP_METRICS = ("lr", "grad_norm", "tokens_per_s", "step_time_s", "peak_mem_mb")  # train only
#: what a sweep can rank trials by: every metric training reports but the step's bookkeeping
RANKABLE = (tuple(f"{TRAIN}/{m}" for m in LOSSES + ("grad_norm", "tokens_per_s"))
            + tuple(f"{VAL}/{m}" for m in LOSSES + PERPLEXITIES))
#: what `moss train` prints at the end, when present
SUMMARY = (tuple(f"{TRAIN}/{m}" for m in LOSSES) + tuple(f"{VAL}/{m}" for m in LOSSES + ("text_ppl", "image_ppl"))
           + (f"{TRAIN}/tokens_per_s",))
#: progress line label -> metric
PROGRESS = {"loss": f"{TRAIN}/loss", "text": f"{TRAIN}/text_loss", "image": f"{TRAIN}/image_loss",
            "val": f"{VAL}/loss", "val_text": f"{VAL}/text_loss", "val_image": f"{VAL}/image_loss"}


def step_metrics(lr: float, grad_norm: float, tokens_per_s: float, step_time_s: float, peak_mem_mb: float) -> dict:
    """The per-step bookkeeping metrics, named."""
    values = (lr, grad_norm, tokens_per_s, step_time_s, peak_mem_mb)
    return {f"{TRAIN}/{name}": v for name, v in zip(STEP_METRICS, values)}

# sums carried per step / eval: text CE sum, text targets, image loss sum, image targets, tokens seen,
# frame CE sum, frame targets (the tokens around each image: LossOutput)
TEXT_SUM, N_TEXT, IMAGE_SUM, N_IMAGE, TOKENS, FRAME_SUM, N_FRAME = range(7)
N_SUMS = 7


def add_loss(sums: list[float], out, batch: dict) -> None:
    """Accumulate one micro-batch's LossOutput (per-kind means times counts = sums)."""
    for mean, n, s, c in ((out.text_loss, out.n_text, TEXT_SUM, N_TEXT), (out.image_loss, out.n_image, IMAGE_SUM, N_IMAGE),
                          (out.frame_loss, out.n_frame, FRAME_SUM, N_FRAME)):
        if mean is not None:
            sums[s] += float(mean) * n
        sums[c] += n
    sums[TOKENS] += int(batch["attention_mask"].sum())


def loss_metrics(sums: list[float], prefix: str, weights=None, ppl: bool = False, image_ppl: bool = True) -> dict:
    """Global per-kind means (and perplexities) from summed losses; kinds absent in the data are left out.

    ``<prefix>/loss`` combines them as training does (``weights``: a LossWeights, frame tokens on the text
    side; None: the token mean). ``text_loss`` / ``text_ppl`` cover text alone, ``frame_loss`` the tokens
    around images. ``image_ppl=False`` (an image regression loss, Emu2): no image or overall perplexity."""
    sums = list(sums) + [0.0] * (N_SUMS - len(sums))
    other_sum, n_other = sums[TEXT_SUM] + sums[FRAME_SUM], sums[N_TEXT] + sums[N_FRAME]
    n = n_other + sums[N_IMAGE]
    out = {}
    if n:
        out[f"{prefix}/loss"] = (weights.combine(other_sum, n_other, sums[IMAGE_SUM], sums[N_IMAGE])
                                 if weights is not None else (other_sum + sums[IMAGE_SUM]) / n)
    for name, s, c in (("text", TEXT_SUM, N_TEXT), ("image", IMAGE_SUM, N_IMAGE), ("frame", FRAME_SUM, N_FRAME)):
        if sums[c]:
            out[f"{prefix}/{name}_loss"] = sums[s] / sums[c]
            if ppl and (name == "text" or (name == "image" and image_ppl)):
                out[f"{prefix}/{name}_ppl"] = math.exp(min(sums[s] / sums[c], 50.0))
    if ppl and n and (image_ppl or not sums[N_IMAGE]):
        out[f"{prefix}/ppl"] = math.exp(min((other_sum + sums[IMAGE_SUM]) / n, 50.0))
    return out


def use_bf16(cfg, device) -> bool:
    """bf16 weights + autocast: train.precision bf16, or auto on CUDA (training and evaluation alike)."""
    return cfg.train.precision == "bf16" or (cfg.train.precision == "auto" and device.type == "cuda")


def reset_peak_memory(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_mb(device) -> float:
    """CUDA: peak allocated since the step began; CPU: the worker process's peak RSS so far."""
    import torch

    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB
