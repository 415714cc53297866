"""No single record can fail a block: rows Arrow cannot store become counted rejects, reject rows always build,
and per-record work is bounded before any image is read."""

import json
import math

import pyarrow as pa
import pytest
from PIL import Image

from orchestrator.config import FilterSection
from orchestrator.data import filters
from orchestrator.data.dedupe import KEY_SCHEMA
from orchestrator.data.shards import SHARD_SCHEMA, VALIDATED_SCHEMA, build_table, reject_row, storable
from orchestrator.data.sources import Chunk
from orchestrator.data.validate import chunk_keys, validate_chunk, validate_record

S = "\ud800"
GOOD = {"id": "g", "instruction": "Say hi.", "output": [{"type": "text", "text": "hi"}]}


def row(**kw) -> dict:
    base = dict(order=1, file="/d/a.jsonl", line=1, id="a", domain="vqa", split="train", stage="", reason="",
                content_hash="", alignment=math.nan, n_answer_images=0, segments="[]", images=[])
    return base | kw


def test_a_row_arrow_cannot_store_becomes_a_reject_and_the_others_are_kept():
    rows = [row(order=1), row(order=2, id="bad" + S, segments="x" + S, file="/d/f" + S), row(order=3)]
    table = build_table(rows, VALIDATED_SCHEMA, "schema")
    got = table.to_pylist()
    assert [r["order"] for r in got] == [1, 2, 3] and [r["split"] for r in got] == ["train", "rejected", "train"]
    bad = got[1]
    assert (bad["stage"], bad["id"], bad["file"], bad["segments"]) == ("schema", "bad\\ud800", "/d/f\\ud800", "")
    assert bad["reason"].startswith("cannot be stored: UnicodeEncodeError")
    keys = build_table([{"order": 5, "id": "k" + S, "content_hash": "h"}, {"order": 6, "id": "k", "content_hash": "h"}],
                       KEY_SCHEMA, "dedupe").to_pylist()
    assert keys == [{"order": 5, "id": "k\\ud800", "content_hash": ""}, {"order": 6, "id": "k", "content_hash": "h"}]


@pytest.mark.parametrize("schema", [VALIDATED_SCHEMA, SHARD_SCHEMA, KEY_SCHEMA])
def test_reject_rows_always_build(schema):
    r = reject_row({"order": 3, "line": 9, "id": S * 3, "domain": "d" + S, "file": S}, schema, "parse", "why " + S)
    (got,) = pa.Table.from_pylist([r], schema=schema).to_pylist()
    assert got["order"] == 3 and got["id"] == "\\ud800" * 3
    assert storable("ok \U0001F600") == "ok \U0001F600" and storable("\x1b[2Jx\n") == "\\x1b[2Jx\\x0a"  # printable


def test_surrogates_from_both_engines_stages_are_schema_rejects(tmp_path):
    """The crash of the issue: a lone surrogate in an id killed the whole block (and the Ray run)."""
    lines = [json.dumps({**GOOD, "id": "a" + S}), json.dumps(GOOD), json.dumps({**GOOD, "id": "c", "domain": S}),
             b'{"id": "\\ud800", "domain": "\\udfff"}'.decode()]
    (tmp_path / "d.jsonl").write_text("\n".join(lines) + "\n")
    chunk = Chunk(str(tmp_path / "d.jsonl"), 0, "lines")
    (table,) = validate_chunk(chunk, FilterSection(), {}, 0.0)
    got = [(r["stage"], r["id"], r["reason"]) for r in table.to_pylist()]
    assert got == [("schema", "a\\ud800", "'id' is not valid Unicode text (lone surrogate at character 1)"),
                   ("", "g", ""), ("schema", "c", "'domain' is not valid Unicode text (lone surrogate at character 0)"),
                   ("schema", "\\ud800", "'id' is not valid Unicode text (lone surrogate at character 0)")]
    keys = chunk_keys(chunk, FilterSection()).to_pylist()
    assert [k["content_hash"] != "" for k in keys] == [False, True, False, False]


def test_the_image_count_is_checked_before_any_image_is_read(tmp_path, monkeypatch):
    Image.new("RGB", (32, 32), "red").save(tmp_path / "a.png")
    many = {"id": "m", "output": [{"type": "image", "image": "a.png"}] * 5000}
    chunk = Chunk(str(tmp_path / "d.jsonl"), 0, "lines")
    reads = []
    real = filters.read_image_bytes
    monkeypatch.setattr(filters, "read_image_bytes", lambda ref, n: reads.append(ref) or real(ref, n))
    r = validate_record(many, chunk, 1, FilterSection(max_images=8), {}, 0.0)
    assert (r["stage"], r["reason"]) == ("bounds", "5000 images, outside min_images..max_images=0..8")
    assert filters.content_key(many, chunk.base, FilterSection(max_images=8), filters.ImagePolicy()) is None
    assert reads == []
    assert validate_record({**many, "output": many["output"][:2]}, chunk, 1, FilterSection(), {}, 0.0)["stage"] == \
        "image_dedupe" and len(reads) == 2  # the count allowed: read


def test_refused_images_are_image_rejects_in_both_passes(tmp_path):
    (tmp_path / "data").mkdir()
    Image.new("RGB", (32, 32), "red").save(tmp_path / "secret.png")
    chunk = Chunk(str(tmp_path / "data" / "d.jsonl"), 0, "lines")
    rec = {"id": "x", "output": [{"type": "text", "text": "see"}, {"type": "image", "image": "../secret.png"}]}
    r = validate_record(rec, chunk, 1, FilterSection(), {}, 0.0)
    assert r["stage"] == "image" and "secret.png: resolves outside the data file's folder" in r["reason"]
    assert filters.content_key(rec, chunk.base, FilterSection(), filters.ImagePolicy()) is None
