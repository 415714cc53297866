"""Next-token loss split by target modality: the one definition every backbone's ``loss`` builds on."""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

IGNORE_INDEX = -100


class LossWeights(NamedTuple):
    """How the two modalities' summed losses make the one loss that is minimised (``train.text_weight``,
    ``train.image_weight``, ``train.loss_normalization``).

    - ``tokens``: (w_t * sum text + w_i * sum image) / (targets of the modalities whose weight is not 0). At
      weights (1, 1) the usual token mean; a modality at weight 0 neither adds to the loss nor dilutes it.
    - ``per_modality``: w_t * mean text loss + w_i * mean image loss, so each weight scales its modality's mean
      whatever the token counts (the means over a training step's targets on all workers, or over the split
      in evaluation). Emu2 adds a cross-entropy and a regression loss: only this makes its weights mean what
      they say.
    """

    text: float = 1.0
    image: float = 1.0
    normalization: str = "tokens"

    def scales(self, n_text: int, n_image: int) -> tuple[float, float]:
        """(a, b) with loss = a * sum text + b * sum image, for these target counts."""
        if self.normalization == "per_modality":
            return (self.text / n_text if n_text else 0.0, self.image / n_image if n_image else 0.0)
        d = max((n_text if self.text else 0) + (n_image if self.image else 0), 1)
        return self.text / d, self.image / d

    def combine(self, text_sum, n_text: int, image_sum, n_image: int):
        """The loss from per-modality sums and target counts (tensors or floats; a modality with 0 targets
        is left out)."""
        a, b = self.scales(n_text, n_image)
        return sum(c * s for c, s, n in ((a, text_sum, n_text), (b, image_sum, n_image)) if n)


@dataclass
class LossOutput:
    """Total loss plus per-kind means (None when a batch has no target of that kind), and the sums that
    still carry the graph (for a step that normalises over many micro-batches).

    Three kinds of target: text, image cells, and the frame tokens around each image (begin/end of image,
    Emu3's size header, end-of-line and end-of-frame). The objective weighs frame tokens as text; the
    metrics keep them apart, so ``text_loss`` is the loss of the text alone."""

    loss: torch.Tensor
    text_loss: torch.Tensor | None
    image_loss: torch.Tensor | None
    n_text: int
    n_image: int
    text_sum: torch.Tensor | None = None
    image_sum: torch.Tensor | None = None
    frame_loss: torch.Tensor | None = None
    n_frame: int = 0
    frame_sum: torch.Tensor | None = None
    #: per batch row, when asked for (split_loss's ``per_row``): (text sum, n text, image sum, n image, frame sum,
    #: n frame) as floats and ints, for per-record scores
    rows: list[tuple[float, int, float, int, float, int]] | None = None

    @property
    def n_targets(self) -> int:
        return self.n_text + self.n_frame + self.n_image

    def weighted_sum(self, scales: tuple[float, float]) -> torch.Tensor:
        """a * (text + frame sum) + b * image sum: this micro-batch's part of a loss normalised elsewhere."""
        parts = [scales[0] * s for s in (self.text_sum, self.frame_sum) if s is not None]
        parts += [scales[1] * self.image_sum] if self.image_sum is not None else []
        return sum(parts) if parts else self.loss * 0.0

    def metrics(self) -> dict[str, float]:
        out = {"loss": float(self.loss.detach()), "n_text_tokens": self.n_text, "n_image_tokens": self.n_image,
               "n_frame_tokens": self.n_frame}
        for k in ("text_loss", "image_loss", "frame_loss"):
            v = getattr(self, k)
            if v is not None:
                out[k] = float(v.detach())
        return out


def split_loss(term, labels: torch.Tensor, is_image_target, weights: tuple[float, float] | LossWeights,
               like: torch.Tensor, frame: torch.Tensor | None = None, per_row: bool = False) -> LossOutput:
    """Next-token loss at labelled positions, split by target kind.

    Position t predicts labels[t + 1]. ``term(sel, image) -> summed loss`` of the positions ``sel``
    ((B, T-1) mask over the shifted targets) of one kind; ``is_image_target(targets)`` says which targets
    are images, ``frame`` ((B, T) over labels, frame_positions) which non-image targets frame an image. The
    loss combines the sums by ``weights`` (LossWeights; a plain (text, image) pair normalises by tokens),
    frame tokens on the text side: with weights (1, 1) the usual token mean. text_loss / frame_loss /
    image_loss are the unweighted means of each kind. ``per_row``: each kind's sum is taken row by row (the
    same forward; ``term`` called once per row and kind) and the rows' sums are returned in ``rows``.
    """
    weights = LossWeights(*weights)
    tgt = labels[:, 1:]
    valid = tgt != IGNORE_INDEX
    img = valid & is_image_target(tgt)
    frm = valid & ~img & frame[:, 1:] if frame is not None else torch.zeros_like(img)
    txt = valid & ~img & ~frm
    kinds = ((txt, False), (img, True), (frm, False))
    row_sums = [[(0.0, 0)] * 3 for _ in range(tgt.shape[0])] if per_row else None
    sums, means, counts = [], [], []
    for k, (sel, image) in enumerate(kinds):
        n = int(sel.sum())
        counts.append(n)
        if n and per_row:
            parts = []
            for b in range(sel.shape[0]):
                only = torch.zeros_like(sel)
                only[b] = sel[b]
                nb = int(only.sum())
                if nb:
                    parts.append(term(only, image))
                    row_sums[b][k] = (float(parts[-1].detach()), nb)
            s = sum(parts)
        else:
            s = term(sel, image) if n else None
        sums.append(s)
        means.append(s.detach() / n if n else None)
    other = [s for s in (sums[0], sums[2]) if s is not None]
    loss = (weights.combine(sum(other) if other else 0.0, counts[0] + counts[2], sums[1], counts[1])
            if any(counts) else like.sum() * 0.0)
    rows = [tuple(x for pair in r for x in pair) for r in row_sums] if per_row else None
    return LossOutput(loss, means[0], means[1], counts[0], counts[1], sums[0], sums[1], means[2], counts[2], sums[2],
                      rows)


def target_counts(labels: torch.Tensor, is_image_target) -> tuple[int, int]:
    """(text and frame, image) targets of a batch's labels: the two sides LossWeights combines."""
    tgt = labels[:, 1:]
    valid = tgt != IGNORE_INDEX
    n_image = int((valid & is_image_target(tgt)).sum())
    return int(valid.sum()) - n_image, n_image


def split_ce(
    logits_fn, h: torch.Tensor, labels: torch.Tensor, is_image_target, weights: tuple[float, float] | LossWeights,
    chunk: int | None = None, frame: torch.Tensor | None = None, per_row: bool = False,
) -> LossOutput:
    """split_loss with cross-entropy for both modalities. h: (B, T, D) hidden states; ``logits_fn(h_sel,
    targets, image: bool) -> (logits, targets)`` maps selected hidden rows to logits over the right
    vocabulary (and the targets into that head's index space). ``chunk``: see chunked_cross_entropy."""
    hp, tgt = h[:, :-1], labels[:, 1:]

    def term(sel: torch.Tensor, image: bool) -> torch.Tensor:
        return chunked_cross_entropy(lambda r, t: logits_fn(r, t, image), hp[sel], tgt[sel], chunk)

    return split_loss(term, labels, is_image_target, weights, h, frame, per_row)


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
