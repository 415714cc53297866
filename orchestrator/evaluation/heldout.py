"""Held-out scoring: per-modality loss and perplexity of a model on one shard split.

The same sums and formulas as the training loop's eval (training/metrics.py), over every row of
the split, so an adapter scores here what its training run logged at the end (unless that run set
train.eval_max_batches, which scores a prefix of the split).
"""

from __future__ import annotations

import pyarrow.dataset as pads
import torch

from ..config import ConfigError, RunConfig
from ..data.pipeline import output_dir
from ..files import absolute
from ..training.data import collate_rows, train_columns
from ..training.metrics import N_SUMS, add_loss, loss_metrics, use_bf16
from ..training.objective import adapter_loss, loss_weights


def split_table(cfg: RunConfig, split: str, spec):
    """The split's training columns as one Arrow table in record order (rows become Python objects one
    micro-batch at a time: Emu2's PNG bytes stay compact until then)."""
    path = f"{absolute(output_dir(cfg))}/split={split}"
    try:
        table = pads.dataset(path, format="parquet").to_table(columns=train_columns(spec))
    except (FileNotFoundError, OSError) as e:
        raise ConfigError(f"no {split} shards at {path}: run `moss preprocess` with this config first ({e})"[:400]) from None
    return table.sort_by("order")


@torch.no_grad()
def heldout_metrics(model, spec, cfg: RunConfig, split: str = "val") -> dict:
    """{"rows": n, "metrics": {"<split>/loss", "<split>/text_loss", "<split>/text_ppl", ...}}."""
    table = split_table(cfg, split, spec)
    if not table.num_rows:
        raise ConfigError(f"the {split} split of {output_dir(cfg)} is empty (data.val_fraction=0?)")
    device = next(model.parameters()).device
    bf16 = use_bf16(cfg, device)  # what training's eval ran under
    weights = loss_weights(cfg.train, spec)
    sums = [0.0] * N_SUMS
    step = cfg.train.micro_batch
    for start in range(0, table.num_rows, step):
        batch = collate_rows(spec, table.slice(start, step).to_pylist())
        batch = {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in batch.items()}
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            out = adapter_loss(model, spec, batch, weights, cfg.train.loss_chunk_tokens)
        add_loss(sums, out, batch)
    return {"split": split, "rows": table.num_rows, "metrics": loss_metrics(sums, split, weights, ppl=True, image_ppl=spec.image_loss_is_ce)}
