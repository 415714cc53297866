"""InterleavedBench (Liu et al., EMNLP 2024): read its records, generate answers, write predictions.

Records (interleaved_bench.json, a JSON list; JSON lines are accepted too)::

    {"id": "wikihow_next_step_0_489157", "task_name": "wikihow_next_step",
     "instruction": "...", "context": "text <image> text <image>", "image": ["wiki_images_test/a.png", ...]}

``context`` holds one ``<image>`` placeholder per entry of ``image`` (paths relative to the file's
folder); a LLaVA-style ``conversations[0].value`` stands in for instruction + context when those are
absent. Predictions keep each record's fields and add ``output`` (the answer's text, an ``<image>``
placeholder where each generated image sits) and ``output_image`` (their paths, relative to the
predictions file), mirroring ``context`` / ``image``. The benchmark's own judge script was not
available when this was written (see docs/evaluation.md): check its expected field names before submitting.

Image paths follow the data pipeline's policy (``data.refs``): by default they must resolve, symlinks
followed, inside the bench file's folder, and no URI is fetched. A record naming anything else is
rejected, so its images are never opened, nor sent to a judge.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from ..config import ConfigError
from ..data.images import ImageError
from ..data.refs import ImagePolicy
from ..data.schema import checked, resolve_ref
from ..data.shards import storable
from .editing import file_stem, load_image
from .generate import interleave

PLACEHOLDER = "<image>"
PREDICTIONS = "predictions.json"


@dataclass
class BenchItem:
    id: str
    task_name: str
    instruction: str
    context: str
    images: list[str]  # resolved paths, in placeholder order
    raw: dict = field(repr=False, default_factory=dict)

    def prompt(self) -> list:
        """Instruction, then the context with its images in place: str | PIL.Image segments."""
        head = [self.instruction] if self.instruction.strip() else []
        return head + interleave(self.context, [load_image(p) for p in self.images])


def _records(path: Path) -> list:
    text = path.read_text(encoding="utf-8")
    try:
        data = json.loads(text)
        return data if isinstance(data, list) else [data]
    except RecursionError:
        raise ConfigError(f"{path}: JSON nested too deeply") from None
    except json.JSONDecodeError:
        try:
            return [json.loads(line) for line in text.splitlines() if line.strip()]
        except (json.JSONDecodeError, RecursionError) as e:
            raise ConfigError(f"{path}: neither a JSON list nor JSON lines ({type(e).__name__}: {e})") from None


def parse_item(obj, base: Path, policy: ImagePolicy = ImagePolicy()) -> BenchItem:
    """One record -> BenchItem; ValueError(reason) when it cannot be used."""
    if not isinstance(obj, dict):
        raise ValueError(f"a record must be an object, got {type(obj).__name__}")
    rid, task = obj.get("id"), obj.get("task_name")
    if not isinstance(rid, (str, int)) or isinstance(rid, bool) or str(rid) == "":
        raise ValueError(f"'id' must be a non-empty string, got {rid!r}"[:200])
    if not isinstance(task, str) or not task:
        raise ValueError(f"'task_name' must be a non-empty string, got {task!r}"[:200])
    instruction, context = obj.get("instruction", ""), obj.get("context")
    if context is None:
        conv = obj.get("conversations")
        if isinstance(conv, list) and conv and isinstance(conv[0], dict) and isinstance(conv[0].get("value"), str):
            context = conv[0]["value"]
        else:
            raise ValueError("no 'context' (nor conversations[0].value)")
    if not isinstance(instruction, str) or not isinstance(context, str):
        raise ValueError("'instruction' and 'context' must be strings")
    for name, val in (("id", str(rid)), ("task_name", task), ("instruction", instruction), ("context", context)):
        checked(val, f"'{name}'", control=name in ("id", "task_name"))
    images = obj.get("image", obj.get("images", []))
    images = [images] if isinstance(images, str) else images
    if not isinstance(images, list) or not all(isinstance(p, str) for p in images):
        raise ValueError("'image' must be a list of paths")
    n = context.count(PLACEHOLDER)
    if n != len(images):
        raise ValueError(f"{n} {PLACEHOLDER} placeholder(s) in 'context' but {len(images)} image(s)")
    resolved = [policy.check(resolve_ref(checked(p, "'image'", control=True), str(base)), str(base)) for p in images]
    return BenchItem(str(rid), task, instruction, context, resolved, obj)


def read_bench(path: str | Path, max_records: int | None = None,
               policy: ImagePolicy = ImagePolicy()) -> tuple[list[BenchItem], list[dict]]:
    """-> (items, rejects [{"index", "id", "reason"}]); a bad record is rejected, never fatal. ``policy``:
    which image references are allowed (by default local files under the bench file's folder)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"interleavedbench.path {str(path)!r} is not a file")
    items, rejects, seen = [], [], set()
    for i, obj in enumerate(_records(path)):
        try:
            item = parse_item(obj, path.parent, policy)
            if file_stem(item.id) in seen:
                raise ValueError(f"id {item.id!r} repeats an earlier record's (as a file name)")
            seen.add(file_stem(item.id))
            items.append(item)
        except ValueError as e:
            rid = obj.get("id") if isinstance(obj, dict) else None
            rejects.append({"index": i, "id": storable(rid) if isinstance(rid, str) else rid, "reason": str(e)})
        if max_records is not None and len(items) >= max_records:
            break
    return items, rejects


def answer_fields(answer, item: BenchItem, out_dir: Path) -> dict:
    """Save the answer's images; -> output / output_image (the PNG, or without a pixel decoder the codes
    JSON / embeddings .npy)."""
    paths = []
    (out_dir / "images").mkdir(parents=True, exist_ok=True)
    for k, im in enumerate(answer.images):
        files = im.save(out_dir / "images", f"{file_stem(item.id)}_{k}")
        paths.append("images/" + (files.get("image") or files.get("codes") or files["embeddings"]))
    return {"output": answer.text, "output_image": paths}


def write_predictions(items: list[BenchItem], outputs: list[dict], out_dir: Path) -> Path:
    preds = [{**item.raw, **out} for item, out in zip(items, outputs)]
    path = out_dir / PREDICTIONS
    # a lone surrogate in a field we pass through is written as its JSON escape (what it was read from)
    path.write_text(json.dumps(preds, indent=2, ensure_ascii=False), encoding="utf-8", errors="backslashreplace")
    return path


def prediction_images(pred: dict, out_dir: Path) -> list[Image.Image]:
    images = []
    for p in pred.get("output_image", []):
        if p.endswith(".png"):
            try:
                images.append(load_image(str(out_dir / p)))
            except ImageError:
                pass
    return images
