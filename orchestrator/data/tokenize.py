"""Stages "tokenize" and "truncate": the backbone's text tokenizer + image tokenizer (VQ) per record.

``Tokenize`` is a callable class for ``map_batches`` with an actor pool: each actor loads the
tokenizer and VQ once. Labels are -100 everywhere except the output segments (``spec.encode``'s
targets). Truncation drops whole trailing segments, never part of an image; a record whose prompt
and first output segment do not fit is rejected.
"""

from __future__ import annotations

import io
import json

import pyarrow as pa
import torch
from PIL import Image

from ..backbones import get_backbone
from .filters import Reject, run_stage
from .shards import SHARD_SCHEMA, TOKEN_STATS, build_table, layout_to_rows


def fit_pieces(lengths: list[int], targets: list[bool], max_len: int, n_bos: int, n_eos: int) -> int:
    """How many leading pieces fit in max_len tokens (all, or a prefix that keeps an output piece)."""
    full = n_bos + sum(lengths) + (n_eos if targets and targets[-1] else 0)
    if full <= max_len:
        return len(lengths)
    used, keep = n_bos, 0
    for n in lengths[:-1]:  # at least the last piece goes; a truncated answer gets no EOS (it did not end)
        if used + n > max_len:
            break
        used, keep = used + n, keep + 1
    if not any(targets[:keep]):
        prompt = n_bos + sum(n for n, t in zip(lengths, targets) if not t)
        first_out = next(n for n, t in zip(lengths, targets) if t)
        if prompt > max_len:
            raise Reject("truncate", f"prompt alone is {prompt} tokens > max_seq_len={max_len}")
        if prompt + first_out <= max_len:
            raise Reject("truncate", f"the {first_out}-token answer fits after the {prompt}-token prompt only without "
                                     f"its end-of-sequence token (max_seq_len={max_len})")
        raise Reject("truncate", f"first output segment ({first_out} tokens) does not fit after a {prompt}-token "
                                 f"prompt (max_seq_len={max_len})")
    return keep


def decode_segments(segments_json: str, images: list[bytes]) -> tuple[list, list[bool]]:
    """The transport form of a validated record -> (str | PIL.Image segments, target flags)."""
    segs, targets = [], []
    for kind, value, target in json.loads(segments_json):
        segs.append(Image.open(io.BytesIO(images[value])).convert("RGB") if kind == "image" else value)
        targets.append(bool(target))
    return segs, targets


class Tokenize:
    """map_batches UDF: validated rows (pyarrow) -> shard rows; already-rejected rows pass through."""

    def __init__(self, backbone: str, checkpoint: str, max_seq_len: int, threads: int | None = 1,
                 options: dict | None = None):
        if threads:
            torch.set_num_threads(threads)
        self.spec = get_backbone(backbone, checkpoint, **(options or {}))
        self.spec.tokenizer  # noqa: B018  # loaded once per actor, with the VQ (Emu2 embeds pixels in the model)
        if not self.spec.continuous_images:
            self.spec.vq  # noqa: B018
        self.max_seq_len = max_seq_len

    def __call__(self, batch: pa.Table) -> pa.Table:
        return build_table([self.row(r) for r in batch.to_pylist()], SHARD_SCHEMA, "tokenize")

    def row(self, row: dict) -> dict:
        out = {k: row[k] for k in SHARD_SCHEMA.names if k in row}
        out.update(input_ids=[], labels=[], image_layout=[], pixels=[], **dict.fromkeys(TOKEN_STATS, 0))
        if row["stage"]:
            return out
        try:
            out.update(self.encode(row["segments"], row["images"]))
        except Reject as r:
            out.update(stage=r.stage, reason=r.reason, split="rejected", input_ids=[], labels=[], image_layout=[],
                       pixels=[], **dict.fromkeys(TOKEN_STATS, 0))
        return out

    def encode(self, segments_json: str, images: list[bytes]) -> dict:
        segs, targets = run_stage("tokenize", decode_segments, segments_json, images)
        pieces = run_stage("tokenize", self.spec.encode_pieces, segs)
        tok = self.spec.tokenizer
        n_bos, n_eos = int(tok.bos_token_id is not None), int(tok.eos_token_id is not None)
        keep = fit_pieces([len(p) for p in pieces], targets, self.max_seq_len, n_bos, n_eos)
        enc = run_stage("tokenize", self.spec.assemble, pieces[:keep], targets[:keep], True, keep == len(pieces))
        if "images" in enc and len(enc["images"]) != len(enc["image_layout"]):
            raise Reject("tokenize", f"{len(enc['image_layout'])} images in the token layout but {len(enc['images'])} "
                                     "pixel images: the text holds the backbone's image tokens")
        labels = enc["labels"]
        return {
            "input_ids": enc["input_ids"].tolist(), "labels": labels.tolist(),
            "image_layout": layout_to_rows(enc["image_layout"]), "n_tokens": int(labels.numel()),
            "pixels": [self.spec.png(im) for im in enc.get("images", ())],
            "n_target_tokens": int((labels != -100).sum()), "n_image_tokens": sum(s.n_cells for s in enc["image_layout"]),
            "n_images": len(enc["image_layout"]), "truncated_segments": len(pieces) - keep,
            "answer_images_kept": sum(t and not isinstance(s, str) for s, t in zip(segs[:keep], targets[:keep])),
        }
