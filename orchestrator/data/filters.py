"""The filtering stages, each a small pure function of one record that returns or raises ``Reject``.

Order (and the stage names used in rejects.jsonl and the manifest): parse -> schema -> image -> bounds
-> image_dedupe -> dedupe -> alignment -> tokenize -> truncate. The bounds that need no pixels (text
length, image count) are checked before any image is read, still as `bounds`. Cross-set dedupe needs a
global view; its verdicts come from ``dedupe.find_duplicates`` over content keys computed by ``content_key``.
Every image read goes through ``read_images``: the reference policy first (refs.py), then the bytes.
"""

from __future__ import annotations

import hashlib
import json
import re

from PIL import Image

from ..backbones.errors import UnencodableError
from ..config import FilterSection
from .images import ImageError, decode_image, hamming, phash, read_image_bytes
from .refs import ImagePolicy
from .schema import Record, SchemaError, parse_json, to_record

STAGES = ("parse", "schema", "image", "bounds", "image_dedupe", "dedupe", "alignment", "tokenize", "truncate")


class Reject(Exception):
    """A record leaves the pipeline at ``stage`` for ``reason``."""

    def __init__(self, stage: str, reason: str):
        super().__init__(f"{stage}: {reason}")
        self.stage, self.reason = stage, reason


def run_stage(stage: str, fn, *args):
    """fn(*args), with any failure turned into Reject(stage, reason): one bad record never stops a run."""
    try:
        return fn(*args)
    except Reject:
        raise
    except (SchemaError, ImageError, UnencodableError) as e:
        raise Reject(stage, str(e)) from None
    except Exception as e:  # a bug or an input we did not foresee: counted, reported, never fatal
        raise Reject(stage, f"internal error: {type(e).__name__}: {str(e)[:200]}") from None


def parse(raw, base: str, fmt: str = "auto") -> Record:
    obj = run_stage("parse", parse_json, raw)
    return run_stage("schema", to_record, obj, base, fmt)


def read_images(record: Record, base: str, f: FilterSection, policy: ImagePolicy) -> list[bytes]:
    """The encoded bytes of every image of a record read from a file in ``base``; each reference is checked
    against the policy before it is opened or fetched."""
    return [read_image_bytes(s.image if isinstance(s.image, bytes) else policy.check(s.image, base), f.max_image_bytes)
            for s in record.images()]


def load_images(record: Record, base: str, f: FilterSection,
                policy: ImagePolicy) -> tuple[list[bytes], list[Image.Image]]:
    """Stage "image": read and fully decode every image (refused, missing, zero-size, corrupt, truncated, huge)."""
    data = read_images(record, base, f, policy)
    return data, [decode_image(raw, f.max_image_pixels, name=f"image {i}") for i, raw in enumerate(data)]


def check_record_bounds(record: Record, f: FilterSection) -> None:
    """Stage "bounds", before any image is read: text length, number of images."""
    chars = sum(len(t) for t in record.texts())
    if chars > f.max_text_chars:
        raise Reject("bounds", f"{chars} text characters > max_text_chars={f.max_text_chars}")
    segments, targets = record.segments()
    out_chars = sum(len(s.text) for s, t in zip(segments, targets) if t and not s.is_image)
    if out_chars < f.min_output_chars:
        raise Reject("bounds", f"{out_chars} output characters < min_output_chars={f.min_output_chars}")
    n = len(record.images())
    if not f.min_images <= n <= f.max_images:
        raise Reject("bounds", f"{n} images, outside min_images..max_images={f.min_images}..{f.max_images}")


def check_bounds(record: Record, images: list[Image.Image], f: FilterSection) -> None:
    """Stage "bounds" once the images are decoded: image size."""
    for i, im in enumerate(images):
        if min(im.size) < f.min_image_side:
            raise Reject("bounds", f"image {i} is {im.size[0]}x{im.size[1]} px, a side < min_image_side={f.min_image_side}")


def check_near_duplicates(record: Record, images: list[Image.Image], f: FilterSection) -> None:
    """Stage "image_dedupe": two images on the same side (input or output) with close perceptual hashes.

    Input and output are not compared with each other: an edited image is meant to resemble its source.
    (In a conversation, the user turns' images are input and the answers' images output.)
    """
    if f.phash_max_distance < 0:
        return
    segments, targets = record.segments()
    is_output = [t for s, t in zip(segments, targets) if s.is_image]
    hashes = [phash(im) for im in images]
    for side, flag in (("input", False), ("output", True)):
        members = [k for k, o in enumerate(is_output) if o == flag]
        for a, j in enumerate(members):
            for i in members[:a]:
                d = hamming(hashes[i], hashes[j])
                if d <= f.phash_max_distance:
                    raise Reject("image_dedupe", f"{side} image {j} near-duplicates image {i} (pHash distance {d})")


_WS = re.compile(r"\s+")


def content_hash(record: Record, image_bytes: list[bytes]) -> str:
    """What the model would train on: normalised text + image bytes, in order, split into prompt/answer."""
    shas = iter(hashlib.sha256(b).hexdigest() for b in image_bytes)
    segs, targets = record.segments()
    key = [[t, "img:" + next(shas) if s.is_image else _WS.sub(" ", s.text).strip()] for s, t in zip(segs, targets)]
    return hashlib.sha256(json.dumps(key).encode()).hexdigest()[:32]


def content_key(raw, base: str, f: FilterSection, policy: ImagePolicy, fmt: str = "auto") -> tuple[str, str] | None:
    """(id, content hash) for cross-set dedupe, or None when the record fails before that stage anyway."""
    try:
        record = parse(raw, base, fmt)
        run_stage("bounds", check_record_bounds, record, f)  # 5,000 image references: none is read
        data = read_images(record, base, f, policy)
    except Exception:  # parse, schema, bounds or refused / unreadable images: rejected at their stage in the main pass
        return None
    return record.id, content_hash(record, data)
