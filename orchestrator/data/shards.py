"""The row formats between stages and in the shards, and the way back from a shard row to training input.

Shards live in ``<output>/<backbone>/split=train|val/part-*.parquet`` (hive partitioning, so
``ray.data.read_parquet(<output>/<backbone>/split=train)`` reads one split).
"""

from __future__ import annotations

import hashlib
import math
import re

import pyarrow as pa

SPLITS = ("train", "val")
REJECTED = "rejected"

_META = [
    ("order", pa.int64()), ("file", pa.string()), ("line", pa.int64()), ("id", pa.string()),
    ("domain", pa.string()), ("split", pa.string()), ("stage", pa.string()), ("reason", pa.string()),
    ("content_hash", pa.string()), ("alignment", pa.float64()),
    ("n_answer_images", pa.int32()),  # images in the record's answers (known once it parses; 0 before)
    ("format", pa.string()),  # the shape it was read in (schema.FORMATS; "" before it parses)
]
#: rows leaving the CPU validation stages: metadata + segments (JSON: [[kind, text | image index, target]])
#: + the images' encoded bytes. Rejected rows carry stage/reason and no segments or images.
VALIDATED_SCHEMA = pa.schema(_META + [("segments", pa.string()), ("images", pa.list_(pa.large_binary()))])

LAYOUT_TYPE = pa.struct([
    ("offset", pa.int32()), ("height", pa.int32()), ("width", pa.int32()), ("row_stride", pa.int32()),
    ("n_cells", pa.int32()), ("is_input", pa.bool_()),
])
TOKEN_STATS = ("n_tokens", "n_target_tokens", "n_image_tokens", "n_images", "truncated_segments", "answer_images_kept")
#: rows written to shards (the "split" column becomes the partition folder). ``pixels``: for backbones that
#: embed images themselves (Emu2), one PNG per image in layout order, resized to the visual encoder's
#: input (lossless: training sees exactly the preprocessed pixels); empty for VQ backbones, whose codes
#: are in input_ids.
SHARD_SCHEMA = pa.schema(
    _META
    + [("input_ids", pa.list_(pa.int32())), ("labels", pa.list_(pa.int32())), ("image_layout", pa.list_(LAYOUT_TYPE))]
    + [("pixels", pa.list_(pa.large_binary()))]
    + [(k, pa.int32()) for k in TOKEN_STATS]
)


_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def storable(text: str) -> str:
    """A string Arrow can store and a terminal can print: lone surrogates and control characters become
    backslash escapes (reject rows must always build; their ids and domains reach the summary)."""
    text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", text) if _CONTROL.search(text) else text


def _empty(t: pa.DataType):
    if pa.types.is_string(t):
        return ""
    if pa.types.is_floating(t):
        return math.nan
    return [] if pa.types.is_list(t) else 0


def reject_row(row: dict, schema: pa.Schema, stage: str, reason: str) -> dict:
    """``row`` turned into a reject of ``schema``: its position and names kept (made storable), the rest empty."""
    out = {f.name: _empty(f.type) for f in schema}
    out.update({k: row.get(k, 0) for k in ("order", "line")}, split=REJECTED, stage=stage, reason=storable(reason))
    out.update({k: storable(row[k]) if isinstance(row.get(k), str) else "" for k in ("file", "id", "domain")})
    return {k: v for k, v in out.items() if k in schema.names}


def build_table(rows: list[dict], schema: pa.Schema, stage: str) -> pa.Table:
    """Rows -> a table; if one row cannot be built, row by row, each failing row becoming a reject at ``stage``
    (so no single record fails a block)."""
    try:
        return pa.Table.from_pylist(rows, schema=schema)
    except Exception:
        pass
    fixed = []
    for row in rows:
        try:
            pa.Table.from_pylist([row], schema=schema)
            fixed.append(row)
        except Exception as e:
            fixed.append(reject_row(row, schema, stage, f"cannot be stored: {type(e).__name__}: {str(e)[:200]}"))
    return pa.Table.from_pylist(fixed, schema=schema)


def split_of(record_id: str, val_fraction: float) -> str:
    """train / val by a stable hash of the id (the same on every machine and run)."""
    h = int.from_bytes(hashlib.sha256(record_id.encode()).digest()[:8], "big") / 2**64
    return "val" if h < val_fraction else "train"


def layout_to_rows(layout) -> list[dict]:
    return [
        dict(offset=s.offset, height=s.height, width=s.width, row_stride=s.row_stride, n_cells=s.n_cells, is_input=s.is_input)
        for s in layout
    ]


def example_from_row(row: dict) -> dict:
    """A shard row -> the dict ``spec.encode`` returns (input_ids, labels, image_layout, and for Emu2 the
    images), ready for collate."""
    import io

    import torch
    from PIL import Image

    from ..layout import ImageSegment

    out = {} if row.get("pixels") is None else {"images": [Image.open(io.BytesIO(b)).convert("RGB") for b in row["pixels"]]}
    return out | {
        "input_ids": torch.as_tensor(row["input_ids"], dtype=torch.long),
        "labels": torch.as_tensor(row["labels"], dtype=torch.long),
        "image_layout": tuple(ImageSegment(**{k: (bool(v) if k == "is_input" else int(v)) for k, v in s.items()})
                              for s in row["image_layout"]),
    }
