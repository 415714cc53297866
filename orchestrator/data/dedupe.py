"""Cross-set dedupe: which records repeat an earlier record's content, or reuse an earlier id.

Rule: records are ordered by (file, line); among records with equal content the first wins; among the
remaining, a reused id loses to its first use. Only records that parse, pass the schema and the bounds
checked before images (text length, image count) and have readable images take part (the others are
rejected at their own earlier stage).

The input is the small key table (order, id, content hash: ~70 bytes a record, never the records or
images), gathered from the workers; the answer holds the losers only: ``order -> reject reason``.
"""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc

KEY_SCHEMA = pa.schema([("order", pa.int64()), ("id", pa.string()), ("content_hash", pa.string())])


def order_of(file_index: int, line: int) -> int:
    return (file_index << 32) | line


def where(order: int, files: list[str]) -> str:
    return f"{files[order >> 32]}:{order & 0xFFFFFFFF}"


def find_duplicates(keys: pa.Table, files: list[str]) -> dict[int, str]:
    df = keys.filter(pc.not_equal(keys["content_hash"], "")).to_pandas().sort_values("order", kind="stable")
    first = ~df.duplicated("content_hash", keep="first")
    owner = df[first].set_index("content_hash")
    out: dict[int, str] = {}
    for order, h in zip(df.loc[~first, "order"].tolist(), df.loc[~first, "content_hash"].tolist()):
        w = owner.loc[h]
        out[order] = f"same content as id {w['id']!r} ({where(int(w['order']), files)})"
    kept = df[first]
    reused = kept.duplicated("id", keep="first")
    first_use = kept[~reused].set_index("id")["order"]
    for order, rid in zip(kept.loc[reused, "order"].tolist(), kept.loc[reused, "id"].tolist()):
        out[order] = f"id {rid!r} already used at {where(int(first_use[rid]), files)}"
    return out
