"""Next-token loss split by target modality: the one definition every backbone's ``loss`` builds on."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

IGNORE_INDEX = -100


@dataclass
class LossOutput:
    """Total loss plus per-modality means (None when a batch has no target of that modality)."""

    loss: torch.Tensor
    text_loss: torch.Tensor | None
    image_loss: torch.Tensor | None
    n_text: int
    n_image: int

    def metrics(self) -> dict[str, float]:
        out = {"loss": float(self.loss.detach()), "n_text_tokens": self.n_text, "n_image_tokens": self.n_image}
        for k in ("text_loss", "image_loss"):
            v = getattr(self, k)
            if v is not None:
                out[k] = float(v.detach())
        return out


def split_loss(term, labels: torch.Tensor, is_image_target, weights: tuple[float, float], like: torch.Tensor) -> LossOutput:
    """Next-token loss at labelled positions, split by target modality.

    Position t predicts labels[t + 1]. ``term(sel, image) -> summed loss`` of the positions ``sel``
    ((B, T-1) mask over the shifted targets) of one modality; ``is_image_target(targets)`` says which
    targets are images. loss = (w_text * sum_text + w_image * sum_image) / (n_text + n_image): with
    weights (1, 1) the usual token mean; text_loss / image_loss are the unweighted per-modality means.
    """
    tgt = labels[:, 1:]
    valid = tgt != IGNORE_INDEX
    img = valid & is_image_target(tgt)
    txt = valid & ~img
    sums, means, counts = [], [], []
    for sel, image in ((txt, False), (img, True)):
        n = int(sel.sum())
        counts.append(n)
        if n == 0:
            means.append(None)
            continue
        s = term(sel, image)
        sums.append(s * weights[int(image)])
        means.append(s.detach() / n)
    total = sum(counts)
    loss = sum(sums) / max(total, 1) if sums else like.sum() * 0.0
    return LossOutput(loss, means[0], means[1], counts[0], counts[1])


def split_ce(
    logits_fn, h: torch.Tensor, labels: torch.Tensor, is_image_target, weights: tuple[float, float],
    chunk: int | None = None,
) -> LossOutput:
    """split_loss with cross-entropy for both modalities. h: (B, T, D) hidden states; ``logits_fn(h_sel,
    targets, image: bool) -> (logits, targets)`` maps selected hidden rows to logits over the right
    vocabulary (and the targets into that head's index space). ``chunk``: see chunked_cross_entropy."""
    hp, tgt = h[:, :-1], labels[:, 1:]

    def term(sel: torch.Tensor, image: bool) -> torch.Tensor:
        return chunked_cross_entropy(lambda r, t: logits_fn(r, t, image), hp[sel], tgt[sel], chunk)

    return split_loss(term, labels, is_image_target, weights, h)


def chunked_cross_entropy(logits_fn, rows: torch.Tensor, targets: torch.Tensor, chunk: int | None) -> torch.Tensor:
    """Summed CE of (n, D) hidden rows against (n,) targets, ``chunk`` rows at a time.

    Each chunk's logits (fp32, n x vocab: the largest activation of a step for a 65k-185k vocabulary) are
    freed as soon as its loss is summed and recomputed in the backward pass (activation checkpointing of
    the head), so a step holds one chunk's logits instead of all of them. Same value and gradient.
    """

    def ce_sum(r: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        logits, mapped = logits_fn(r, t)
        return F.cross_entropy(logits.float(), mapped, reduction="sum")

    if chunk is None or rows.shape[0] <= chunk:
        return ce_sum(rows, targets)
    pieces = zip(rows.split(chunk), targets.split(chunk))
    if not torch.is_grad_enabled():
        return sum(ce_sum(r, t) for r, t in pieces)
    from torch.utils.checkpoint import checkpoint

    return sum(checkpoint(ce_sum, r, t, use_reentrant=False) for r, t in pieces)


def refuse_ddp(model: nn.Module) -> None:
    if isinstance(model, nn.parallel.DistributedDataParallel):
        raise TypeError(
            "spec.loss would bypass DistributedDataParallel.forward (no gradient all-reduce): wrap "
            "orchestrator.training.objective.loss_module(model, spec) in DDP and call the wrapper with the batch"
        )
