"""Held-out scoring: per-modality loss and perplexity of a model on one shard split, overall, per domain
and per record.

The same sums and formulas as the training loop's eval (training/metrics.py), over every row of
the split, so an adapter scores here what its training run logged at the end (unless that run set
train.eval_max_batches, which scores a prefix of the split). Each record's sums are kept
(``per_record``), so two adapters scored on the same split can be compared record by record
(``moss compare --paired``, tracking/paired.py).
"""

from __future__ import annotations

import hashlib
import re

import pyarrow.dataset as pads
import torch

from ..config import ConfigError, RunConfig
from ..data.pipeline import output_dir
from ..files import absolute
from ..training.data import collate_rows, train_columns
from ..training.metrics import FRAME_SUM, IMAGE_SUM, N_FRAME, N_IMAGE, N_SUMS, N_TEXT, TEXT_SUM, TOKENS, loss_metrics, use_bf16
from ..training.objective import adapter_loss, loss_weights


def split_table(cfg: RunConfig, split: str, spec):
    """The split's training columns as one Arrow table in record order (rows become Python objects one
    micro-batch at a time: Emu2's PNG bytes stay compact until then)."""
    path = f"{absolute(output_dir(cfg))}/split={split}"
    try:
        table = pads.dataset(path, format="parquet").to_table(columns=train_columns(spec) + ["id", "domain"])
    except (FileNotFoundError, OSError) as e:
        raise ConfigError(f"no {split} shards at {path}: run `moss preprocess` with this config first ({e})"[:400]) from None
    return table.sort_by("order")


#: a record's sums in LossOutput.rows order, as stored per record
ROW_KEYS = ("text_sum", "n_text", "image_sum", "n_image", "frame_sum", "n_frame")
_SLOTS = (TEXT_SUM, N_TEXT, IMAGE_SUM, N_IMAGE, FRAME_SUM, N_FRAME)


def metric_name(domain: str) -> str:
    """A domain as one MLflow metric-name component: letters, digits, _ - . kept; anything else (and a name
    that is only dots) replaced, with a hash of the domain appended so two domains never share a name."""
    name = re.sub(r"[^A-Za-z0-9_.-]", "_", domain)[:100]
    if name.strip(".") == "":
        name = "_"
    return name if name == domain else f"{name}-{hashlib.sha1(domain.encode('utf-8', 'surrogatepass')).hexdigest()[:6]}"


def add_record(sums: list[float], record: dict) -> None:
    for key, slot in zip(ROW_KEYS, _SLOTS):
        sums[slot] += record[key]
    sums[TOKENS] += record["tokens"]


@torch.no_grad()
def heldout_metrics(model, spec, cfg: RunConfig, split: str = "val") -> dict:
    """{"split", "rows", "metrics": {"<split>/loss", "<split>/text_loss", ...}, "domains": {domain: metrics},
    "per_record": [{"id", "domain", "tokens", "text_sum", "n_text", "image_sum", ...}]}."""
    table = split_table(cfg, split, spec)
    if not table.num_rows:
        raise ConfigError(f"the {split} split of {output_dir(cfg)} is empty (data.val_fraction=0?)")
    device = next(model.parameters()).device
    bf16 = use_bf16(cfg, device)  # what training's eval ran under
    weights = loss_weights(cfg.train, spec)
    sums = [0.0] * N_SUMS
    by_domain: dict[str, list[float]] = {}
    records = []
    step = cfg.train.micro_batch
    for start in range(0, table.num_rows, step):
        rows = table.slice(start, step).to_pylist()
        batch = collate_rows(spec, rows)
        batch = {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in batch.items()}
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            out = adapter_loss(model, spec, batch, weights, cfg.train.loss_chunk_tokens, per_row=True)
        tokens = batch["attention_mask"].sum(dim=1).tolist()
        for row, row_sums, n_tokens in zip(rows, out.rows, tokens):
            record = {"id": row["id"], "domain": row["domain"], "tokens": int(n_tokens), **dict(zip(ROW_KEYS, row_sums))}
            records.append(record)
            add_record(sums, record)
            add_record(by_domain.setdefault(row["domain"], [0.0] * N_SUMS), record)
    image_ppl = spec.image_loss_is_ce
    domains = {d: loss_metrics(s, split, weights, ppl=True, image_ppl=image_ppl) for d, s in sorted(by_domain.items())}
    return {"split": split, "rows": table.num_rows, "metrics": loss_metrics(sums, split, weights, ppl=True, image_ppl=image_ppl),
            "domains": domains, "per_record": records}
