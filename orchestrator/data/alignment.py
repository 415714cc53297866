"""Stage "alignment" (optional): text-image agreement scored by a CLIP model loaded from a local path.

Score of a record = the mean over its images of cos(CLIP text embedding of the record's text, CLIP
image embedding). Records below ``min_score`` are rejected. Runs as an actor pool (one model load per
actor), on GPUs when the cluster has them.
"""

from __future__ import annotations

import io
import json

import pyarrow as pa
import torch
from PIL import Image


class AlignmentScore:
    """map_batches UDF over validated rows (pyarrow): fills ``alignment``; rejects low scores."""

    def __init__(self, model_path: str, min_score: float, device: str | None = None):
        from transformers import AutoImageProcessor, AutoTokenizer, CLIPModel

        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.model = CLIPModel.from_pretrained(model_path, use_safetensors=True).to(self.device).eval()
        self.tokenizer = AutoTokenizer.from_pretrained(model_path)
        self.processor = AutoImageProcessor.from_pretrained(model_path)
        self.min_score = min_score
        self.max_text = self.model.config.text_config.max_position_embeddings

    @torch.no_grad()
    def score(self, text: str, images: list[Image.Image]) -> float:
        tok = self.tokenizer([text], truncation=True, max_length=self.max_text, return_tensors="pt").to(self.device)
        t = self.model.get_text_features(input_ids=tok["input_ids"], attention_mask=tok.get("attention_mask"))
        px = self.processor(images=images, return_tensors="pt")["pixel_values"].to(self.device, self.model.dtype)
        v = self.model.get_image_features(pixel_values=px)
        t, v = _features(t), _features(v)
        return float(torch.nn.functional.cosine_similarity(v, t, dim=-1).mean())

    def __call__(self, batch: pa.Table) -> pa.Table:
        rows = batch.to_pylist()
        for row in rows:
            if row["stage"] or not row["images"]:
                continue
            segs = json.loads(row["segments"])
            text = " ".join(v for kind, v, _ in segs if kind == "text")
            try:
                images = [Image.open(io.BytesIO(b)).convert("RGB") for b in row["images"]]
                row["alignment"] = s = self.score(text, images)
            except Exception as e:  # counted like every other stage failure, never fatal
                row.update(stage="alignment", reason=f"internal error: {type(e).__name__}: {str(e)[:200]}")
                continue
            if not s >= self.min_score:  # NaN fails too
                row.update(stage="alignment", reason=f"CLIP score {s:.3f} < min_score={self.min_score}")
        for row in rows:
            if row["stage"]:
                row.update(split="rejected", segments="", images=[])
        return pa.Table.from_pylist(rows, schema=batch.schema)


def _features(x) -> torch.Tensor:
    """transformers 5 returns a ModelOutput from get_*_features; older versions a tensor."""
    return x if isinstance(x, torch.Tensor) else x.pooler_output
