"""The whole pipeline in one process (engine="local") on awkward inputs: nothing crashes, nothing is lost."""

import gzip
import json

import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from orchestrator.config import load_config
from orchestrator.data.pipeline import preprocess

GOOD = {"id": "a", "instruction": "Say hi.", "output": [{"type": "text", "text": "hi"}]}


def run(tmp_path, source, *extra):
    cfg = load_config(None, [f"data.source={source}", f"data.output={tmp_path / 'out'}", *extra])
    manifest = preprocess(cfg, engine="local")
    rejects = [json.loads(x) for x in (tmp_path / "out" / "chameleon" / "rejects.jsonl").read_text().splitlines()]
    return manifest, rejects


def test_rerun_with_the_output_inside_the_source_folder(tmp_path):
    (tmp_path / "a.jsonl").write_text(json.dumps(GOOD) + "\n")
    for _ in range(2):
        cfg = load_config(None, [f"data.source={tmp_path}", f"data.output={tmp_path / 'shards'}"])
        manifest = preprocess(cfg, engine="local")
        assert manifest["inputs"]["records"] == 1 and len(manifest["inputs"]["files"]) == 1


def test_no_records_at_all(tmp_path):
    (tmp_path / "blank.jsonl").write_text("\n   \n")
    manifest, rejects = run(tmp_path, tmp_path / "blank.jsonl")
    assert manifest["inputs"]["records"] == 0 and manifest["outputs"] == {"train": 0, "val": 0, "rejected": 0}
    assert rejects == []


def test_unreadable_files_become_rejects(tmp_path):
    lines = [json.dumps({**GOOD, "id": f"g{i}"}).encode() for i in range(50)]
    raw = gzip.compress(b"\n".join(lines) + b"\n")
    (tmp_path / "cut.jsonl.gz").write_bytes(raw[: len(raw) // 2])
    (tmp_path / "bad.parquet").write_bytes(b"PAR1 definitely not parquet")
    manifest, rejects = run(tmp_path, tmp_path)
    by_file = {r["file"].rsplit("/", 1)[1]: r for r in rejects}
    assert set(by_file) == {"cut.jsonl.gz", "bad.parquet"}
    assert all(r["stage"] == "parse" and "cannot read" in r["reason"] for r in rejects)
    assert manifest["inputs"]["records"] == manifest["outputs"]["train"] + manifest["outputs"]["val"] + 2


def test_bom_null_columns_placeholder_input_and_json_gz(tmp_path):
    Image.new("RGB", (40, 40), "red").save(tmp_path / "r.png")
    (tmp_path / "bom.jsonl").write_bytes(b"\xef\xbb\xbf" + json.dumps(GOOD).encode() + b"\n")
    rows = [{"id": "p1", "domain": None, "task_name": "vqa", "instruction": "Colour?", "input": None,
             "output": [{"type": "text", "text": "red", "image": None}], "images": None}]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "nulls.parquet")
    with gzip.open(tmp_path / "arr.json.gz", "wt") as f:
        json.dump([{"id": "z1", "input": "Look: <image>", "output": "A red square.", "images": ["r.png"]}], f)
    manifest, rejects = run(tmp_path, tmp_path)
    assert rejects == [] and manifest["inputs"]["records"] == 3
    assert set(manifest["domains"]) == {"unknown", "vqa"}


def test_schema_rejects_keep_the_id(tmp_path):
    (tmp_path / "a.jsonl").write_text(json.dumps({"id": "x1", "domain": "vqa", "output": [{"type": "audio"}]}) + "\n")
    _, rejects = run(tmp_path, tmp_path / "a.jsonl")
    assert [(r["id"], r["domain"], r["stage"]) for r in rejects] == [("x1", "vqa", "schema")]


def test_glob_override_is_a_string(tmp_path):
    cfg = load_config(None, ["data.source=*.jsonl", "data.output=2024-01-01"])
    assert cfg.data.source == "*.jsonl" and cfg.data.output == "2024-01-01"
