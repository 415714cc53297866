"""The CPU stages before tokenization, composed per record; and the per-chunk functions both engines run.

``validate_record`` runs parse -> schema -> bounds (text, image count) -> image -> bounds (image sides) ->
image_dedupe -> dedupe and returns one row (VALIDATED_SCHEMA) whatever happens: a record that fails carries
its stage and reason. Tables are built so that a row Arrow cannot store becomes a reject, not a failed block.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator

import pyarrow as pa

from ..config import FilterSection
from .dedupe import KEY_SCHEMA, order_of
from .filters import (Reject, check_bounds, check_near_duplicates, check_record_bounds, content_key, load_images,
                      run_stage)
from .formats import detect
from .refs import ImagePolicy
from .schema import Record, parse_json, to_record
from .shards import REJECTED, VALIDATED_SCHEMA, build_table, split_of, storable
from .sources import Chunk, Limits, read_chunk

_DEFAULT_POLICY = ImagePolicy()


def _row(chunk: Chunk, line: int, **kw) -> dict:
    row = dict(order=order_of(chunk.file_index, line), file=chunk.path, line=line, id="", domain="", split=REJECTED,
               stage="", reason="", content_hash="", alignment=math.nan, n_answer_images=0, format="", segments="",
               images=[])
    row.update(kw)
    for k in ("file", "id", "domain", "reason"):  # what a reject names may hold what the schema refuses
        row[k] = storable(row[k])
    return row


def _segments_json(record: Record) -> str:
    segs, targets = record.segments()
    out, n = [], 0
    for s, t in zip(segs, targets):
        if s.is_image:
            out.append(["image", n, t])
            n += 1
        else:
            out.append(["text", s.text, t])
    return json.dumps(out)


def _known(obj) -> dict:
    """id, domain and shape of a record that may fail the schema, where they are plain values."""
    if not isinstance(obj, dict):
        return {}
    fields = {"id": obj.get("id"), "domain": obj.get("domain") or obj.get("task_name")}
    known = {k: str(v)[:256] for k, v in fields.items()  # (str() refuses ints of more than 4300 digits)
             if isinstance(v, str) or (isinstance(v, int) and not isinstance(v, bool) and abs(v) < 10**256)}
    return {**known, "format": detect(obj) or ""}


def validate_record(
    raw, chunk: Chunk, line: int, f: FilterSection, verdicts: dict[int, str], val_fraction: float,
    policy: ImagePolicy = _DEFAULT_POLICY, fmt: str = "auto",
) -> dict:
    known: dict = {}  # id / domain as soon as they are known, so rejects can name them
    try:
        obj = run_stage("parse", parse_json, raw)
        known = _known(obj)
        record = run_stage("schema", to_record, obj, chunk.base, fmt)
        known = dict(id=record.id, domain=record.domain, n_answer_images=record.answer_images(), format=record.format)
        run_stage("bounds", check_record_bounds, record, f)
        data, images = run_stage("image", load_images, record, chunk.base, f, policy)
        run_stage("bounds", check_bounds, record, images, f)
        run_stage("image_dedupe", check_near_duplicates, record, images, f)
        reason = verdicts.get(order_of(chunk.file_index, line)) if f.dedupe else None
        if reason:
            raise Reject("dedupe", reason)
    except Reject as r:
        return _row(chunk, line, stage=r.stage, reason=r.reason, **known)
    return _row(chunk, line, **known, split=split_of(record.id, val_fraction), segments=_segments_json(record),
                images=data)


def validate_chunk(
    chunk: Chunk, f: FilterSection, verdicts: dict[int, str], val_fraction: float, rows_per_table: int = 16,
    policy: ImagePolicy = _DEFAULT_POLICY, limits: Limits = Limits(), fmt: str = "auto",
) -> Iterator[pa.Table]:
    """Validated rows of a chunk, handed on in tables of rows_per_table (bounded memory per task)."""
    rows = []
    for line, raw in read_chunk(chunk, limits):
        rows.append(validate_record(raw, chunk, line, f, verdicts, val_fraction, policy, fmt))
        if len(rows) == rows_per_table:
            yield build_table(rows, VALIDATED_SCHEMA, "schema")
            rows = []
    if rows:
        yield build_table(rows, VALIDATED_SCHEMA, "schema")


def chunk_keys(chunk: Chunk, f: FilterSection, policy: ImagePolicy = _DEFAULT_POLICY,
               limits: Limits = Limits(), fmt: str = "auto") -> pa.Table:
    """Dedupe keys of a chunk: one row per input record (content_hash "" where it fails earlier)."""
    rows = []
    for line, raw in read_chunk(chunk, limits):
        key = content_key(raw, chunk.base, f, policy, fmt) if f.dedupe else None
        rid, h = key or ("", "")
        rows.append(dict(order=order_of(chunk.file_index, line), id=rid, content_hash=h))
    return build_table(rows, KEY_SCHEMA, "dedupe")


# ---- map_batches UDFs over a dataset of chunk descriptors (this module stays free of torch imports) ----


def _chunks_of(batch: pa.Table) -> list[Chunk]:
    return [Chunk(**row) for row in batch.to_pylist()]


def keys_udf(batch: pa.Table, filters: FilterSection, policy: ImagePolicy, limits: Limits, fmt: str) -> pa.Table:
    return pa.concat_tables([chunk_keys(c, filters, policy, limits, fmt) for c in _chunks_of(batch)])


def validate_udf(batch: pa.Table, filters: FilterSection, verdicts: dict[int, str], val_fraction: float, rows: int,
                 policy: ImagePolicy, limits: Limits, fmt: str):
    for c in _chunks_of(batch):
        yield from validate_chunk(c, filters, verdicts, val_fraction, rows, policy, limits, fmt)
