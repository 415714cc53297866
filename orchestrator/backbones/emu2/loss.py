"""Emu2's training loss: next-token CE on text targets, regression of the next visual embedding on image targets."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ...wrappers import unwrap
from ..frame import frame_positions
from ..loss import LossOutput, chunked_cross_entropy, refuse_ddp, split_loss


class Emu2Loss:
    """Inputs as embeddings (project_up of the visual embeddings at the image cells), targets split by modality."""

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
        h = self.lm(model).model(inputs_embeds=emb, attention_mask=batch.get("attention_mask")).last_hidden_state
        return h, visual

    def hidden_states(self, model, batch):
        return self._hidden(model, batch)[0]

    def is_image_target(self, targets):
        return targets == self.token_id(self.image)

    def regression_sum(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Summed per-embedding loss: mean squared error over the d dimensions, or 1 - cosine."""
        pred, target = pred.float(), target.float()
        if self.regression == "cosine":
            return (1 - F.cosine_similarity(pred, target, dim=-1)).sum()
        return (pred - target).pow(2).mean(-1).sum()

    def loss(self, model, batch, weights=(1.0, 1.0), chunk: int | None = None, per_row: bool = False) -> LossOutput:
        """Text CE (lm_head) + visual-embedding regression (project_down), weighted (text, image).

        Position t predicts position t + 1: where labels[t + 1] is ``<image>``, the target is the
        visual embedding placed there; elsewhere the usual next-token CE over the text vocabulary.
        """
        refuse_ddp(model)
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

        frame = frame_positions(self.image_frame, batch["input_ids"], batch["image_layout"])
        return split_loss(term, labels, lambda targets: is_cell[:, 1:], weights, h, frame, per_row)
