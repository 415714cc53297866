"""Per-step and evaluation metrics, summed over workers so they describe the global batch, and their names:
the one list (sweeps rank by them, the CLI prints them). Torch is imported where used: a space is validated
without it."""

from __future__ import annotations

import math
import resource

TRAIN, VAL = "train", "val"
LOSSES = ("loss", "text_loss", "image_loss")  # <prefix>/<name>, train and val
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

# sums carried per step / eval: text CE sum, text targets, image CE sum, image targets, tokens seen
TEXT_SUM, N_TEXT, IMAGE_SUM, N_IMAGE, TOKENS = range(5)


def add_loss(sums: list[float], out, batch: dict) -> None:
    """Accumulate one micro-batch's LossOutput (per-modality means times counts = sums)."""
    if out.text_loss is not None:
        sums[TEXT_SUM] += float(out.text_loss) * out.n_text
    if out.image_loss is not None:
        sums[IMAGE_SUM] += float(out.image_loss) * out.n_image
    sums[N_TEXT] += out.n_text
    sums[N_IMAGE] += out.n_image
    sums[TOKENS] += int(batch["attention_mask"].sum())


def loss_metrics(sums: list[float], prefix: str, weights: tuple[float, float] = (1.0, 1.0), ppl: bool = False,
                 image_ppl: bool = True) -> dict:
    """Global per-modality means (and perplexities) from summed losses; modalities absent in the data are
    left out. ``image_ppl=False`` (an image regression loss, Emu2): no image or overall perplexity."""
    n = sums[N_TEXT] + sums[N_IMAGE]
    out = {}
    if n:
        out[f"{prefix}/loss"] = (weights[0] * sums[TEXT_SUM] + weights[1] * sums[IMAGE_SUM]) / n
    for name, s, c in (("text", TEXT_SUM, N_TEXT), ("image", IMAGE_SUM, N_IMAGE)):
        if sums[c]:
            out[f"{prefix}/{name}_loss"] = sums[s] / sums[c]
            if ppl and (name == "text" or image_ppl):
                out[f"{prefix}/{name}_ppl"] = math.exp(min(sums[s] / sums[c], 50.0))
    if ppl and n and (image_ppl or not sums[N_IMAGE]):
        out[f"{prefix}/ppl"] = math.exp(min((sums[TEXT_SUM] + sums[IMAGE_SUM]) / n, 50.0))
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
