"""MagicBrush-style editing metrics: (input image + instruction) -> generated image vs the target image.

As MagicBrush's evaluation/image_eval.py computes them: the generated image is resized to the
target's size, both as RGB in [0, 1]; L1 = mean |gen - target|, L2 = mean (gen - target)^2 (MSE, no
root); CLIP-I and DINO = cosine similarity of the two images' embeddings (MagicBrush uses CLIP
ViT-B/32 and DINO ViT-S/16). Those two need local checkpoints (editing.clip_model / dino_model);
without them they are skipped with a note. code_match (the share of cells whose VQ code equals the
target's, on the same grid) needs no pixels, so backbones without a pixel decoder (Chameleon/Anole)
still get a score. Image references go through the data pipeline's policy (data.image_roots,
data.allowed_schemes): a record naming an image outside it is skipped ("refused_image"), never opened.
"""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..config import ConfigError, RunConfig
from ..data.filters import Reject, parse
from ..data.images import ImageError, decode_image, read_image_bytes
from ..data.refs import ImagePolicy
from ..data.schema import Record
from ..data.shards import split_of
from ..data.sources import Limits, list_files, plan_chunks, read_chunk
from .generate import Generator, SamplingConfig

MAX_BYTES = 64 * 2**20


def file_stem(record_id: str) -> str:
    """A record id as a file name (ids may hold '/', spaces...)."""
    return re.sub(r"[^A-Za-z0-9_.-]", "_", record_id)[:200] or "_"


def load_image(ref) -> Image.Image:
    return decode_image(read_image_bytes(ref, MAX_BYTES), 10**8).convert("RGB")


def confined(rec: Record, policy: ImagePolicy, base: str) -> Record:
    """The record with every image reference checked by the policy (ImageError when one is refused)."""
    def fix(segments):
        return tuple(replace(s, image=policy.check(s.image, base)) if isinstance(s.image, str) and s.is_image else s
                     for s in segments)
    return replace(rec, input=fix(rec.input), output=fix(rec.output))


def editing_records(cfg: RunConfig) -> tuple[list, dict]:
    """Records of the editing domain and split, with exactly one output image; -> (records, skipped counts)."""
    e = cfg.editing
    sources = ([e.source] if isinstance(e.source, str) else list(e.source)) if e.source else cfg.data.sources()
    policy, limits = ImagePolicy.from_config(cfg.data, sources), Limits.from_config(cfg.data)
    records = []
    skipped = {"other_domain": 0, "other_split": 0, "unreadable": 0, "not_an_edit": 0, "refused_image": 0}
    for chunk in plan_chunks(list_files(sources), cfg.data.chunk_bytes):
        for _, raw in read_chunk(chunk, limits):
            try:
                rec = parse(raw, chunk.base, cfg.data.format)
            except Reject:
                skipped["unreadable"] += 1
                continue
            if rec.domain != e.domain:
                skipped["other_domain"] += 1
            elif e.split != "all" and split_of(rec.id, cfg.data.val_fraction) != e.split:
                skipped["other_split"] += 1
            elif rec.output_targets or rec.answer_images() != 1 or not any(s.is_image for s in rec.input):
                # (a multi-turn conversation is not one edit: its later turns would be left out of the prompt)
                skipped["not_an_edit"] += 1
            else:
                try:
                    records.append(confined(rec, policy, chunk.base))
                except ImageError:
                    skipped["refused_image"] += 1
            if e.max_records is not None and len(records) >= e.max_records:
                return records, skipped
    return records, skipped


def pixel_distances(generated: Image.Image, target: Image.Image) -> dict[str, float]:
    gen = np.asarray(generated.convert("RGB").resize(target.size), dtype=np.float64) / 255.0
    tgt = np.asarray(target.convert("RGB"), dtype=np.float64) / 255.0
    return {"l1": float(np.abs(gen - tgt).mean()), "l2": float(((gen - tgt) ** 2).mean())}


class ImageEmbedder:
    """Image embeddings from a local checkpoint: CLIP (projected image features) or a DINO ViT (CLS token)."""

    def __init__(self, path: str, kind: str):
        from transformers import AutoImageProcessor, AutoModel, CLIPModel

        if not Path(path).is_dir():
            raise ConfigError(f"editing.{kind}_model {path!r} is not a local checkpoint folder")
        self.kind = kind
        self.processor = AutoImageProcessor.from_pretrained(path, local_files_only=True)
        cls = CLIPModel if kind == "clip" else AutoModel
        self.model = cls.from_pretrained(path, local_files_only=True, use_safetensors=True).eval()

    @torch.no_grad()
    def __call__(self, image: Image.Image) -> torch.Tensor:
        px = self.processor(images=image.convert("RGB"), return_tensors="pt")["pixel_values"]
        if self.kind == "clip":
            return self.model.get_image_features(pixel_values=px).pooler_output[0]
        return self.model(pixel_values=px).last_hidden_state[0, 0]

    def similarity(self, a: Image.Image, b: Image.Image) -> float:
        return float(torch.nn.functional.cosine_similarity(self(a), self(b), dim=0))


#: what a record whose generation failed scores: each bounded metric's worst value (pixels in [0, 1], cosines
#: in [-1, 1]), so every adapter is averaged over the same records. embedding_mse has no worst value: a failed
#: record is left out of its mean (and counted in failure_rate).
WORST = {"l1": 1.0, "l2": 1.0, "clip_i": -1.0, "dino": -1.0, "code_match": 0.0, "embedding_cos": -1.0}
METRICS = ("l1", "l2", "clip_i", "dino", "code_match", "embedding_mse", "embedding_cos")


def scored_keys(spec, embedders: dict) -> list[str]:
    """The per-record metrics this evaluation scores."""
    keys = ["embedding_mse", "embedding_cos"] if spec.continuous_images else ["code_match"]
    if spec.has_pixel_decoder:
        keys += ["l1", "l2"] + ["clip_i" if kind == "clip" else "dino" for kind in embedders]
    return keys


def evaluate_editing(model, spec, cfg: RunConfig, out_dir: Path, cost=None) -> dict:
    """Generate an edit for each record; -> {"records": n, "metrics": {...}, "per_record": [...], "notes": [...]}.

    A record whose input or target image cannot be read is skipped (``skipped["unreadable_image"]``: the same
    for every adapter). A record whose generation fails is a failure of the adapter: it stays in ``per_record``
    with ``failed`` and the worst value of each metric (WORST), and counts in ``failure_rate``. ``cost``: an
    InferenceCost to add each answer's token times to."""
    records, skipped = editing_records(cfg)
    skipped["unreadable_image"] = 0
    notes = []
    if not records:
        return {"records": 0, "skipped": skipped, "metrics": {}, "per_record": [],
                "notes": [f"no {cfg.editing.domain!r} records in split {cfg.editing.split!r}"]}
    embedders = {}
    for kind, path in (("clip", cfg.editing.clip_model), ("dino", cfg.editing.dino_model)):
        if path:
            embedders[kind] = ImageEmbedder(path, kind)
        else:
            notes.append(f"{'CLIP-I' if kind == 'clip' else 'DINO'} skipped: set editing.{kind}_model to a local "
                         f"{'CLIP (e.g. openai/clip-vit-base-patch32)' if kind == 'clip' else 'DINO (e.g. facebook/dino-vits16)'} "
                         "checkpoint folder")
    if not spec.has_pixel_decoder:
        scored = "embedding_mse and embedding_cos are" if spec.continuous_images else "code_match is"
        notes.append(f"{spec.pixel_note}. L1/L2/CLIP-I/DINO need pixels: only {scored} scored")
    keys = scored_keys(spec, embedders)
    base = SamplingConfig.from_section(cfg.generate, max_new_tokens=0, max_images=1, open_image=True, image_size=None)
    generator = Generator(model, spec)
    images_dir = out_dir / "editing"
    images_dir.mkdir(parents=True, exist_ok=True)
    rows, failures, targets = {}, {}, {}

    def prompts():  # lazily, as rows of the batch free up
        for n, rec in enumerate(records):
            try:  # the record's own images: unreadable ones are the data's fault, not the adapter's
                prompt = ([rec.instruction] if rec.instruction else []) + [
                    load_image(s.image) if s.is_image else s.text for s in rec.input]
                target = load_image(next(s.image for s, t in zip(*rec.segments()) if t and s.is_image))
                with torch.no_grad():
                    tgrid = spec.target_grid(model, target)  # codes (h, w) or embeddings (h, w, d)
            except ImageError as e:
                skipped["unreadable_image"] += 1
                failures[n] = {"id": rec.id, "stage": "input", "reason": f"{type(e).__name__}: {e}"[:300]}
                yield e, None
                continue
            targets[n] = target, tgrid
            grid = tuple(tgrid.shape[:2])
            yield prompt, base.with_(image_size=grid if grid != tuple(spec.generation_grid()) else None)

    for n, answer in generator.generate_many(prompts(), cfg.evaluate.batch_size):
        if n not in targets:  # its input could not be read: skipped, not the adapter's failure
            continue
        rec, (target, tgrid) = records[n], targets.pop(n)
        if not isinstance(answer, Exception) and not answer.images:
            answer = ValueError(f"no image generated (stopped: {answer.stop})")
        if isinstance(answer, Exception):  # one over-long prompt or failed generation is a counted failure
            failures[n] = {"id": rec.id, "stage": "generation", "reason": f"{type(answer).__name__}: {answer}"[:300]}
            rows[n] = {"id": rec.id, "failed": True, **{k: WORST.get(k) for k in keys}}
            continue
        if cost is not None:
            cost.add(answer)
        gen = answer.images[0]
        row = {"id": rec.id, **spec.grid_scores(gen.grid.cpu(), tgrid), "seconds": round(answer.seconds, 3)}
        files = gen.save(images_dir, file_stem(rec.id))
        if gen.image is not None:
            row["image"] = f"editing/{files['image']}"
            row.update(pixel_distances(gen.image, target))
            for kind, emb in embedders.items():
                row["clip_i" if kind == "clip" else "dino"] = emb.similarity(gen.image, target)
        rows[n] = row
    if cost is not None:
        cost.retried += generator.retried
    rows, failures = [rows[n] for n in sorted(rows)], [failures[n] for n in sorted(failures)]
    metrics = {}
    for key in METRICS:
        vals = [r[key] for r in rows if r.get(key) is not None]
        if vals:
            metrics[key] = float(np.mean(vals))
    if rows:
        metrics["failure_rate"] = sum(bool(r.get("failed")) for r in rows) / len(rows)
    return {"records": len(rows), "skipped": skipped, "failures": failures, "metrics": metrics, "per_record": rows,
            "notes": notes}
