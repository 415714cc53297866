"""The whole pipeline in one process (engine="local") on awkward inputs: nothing crashes, nothing is lost."""

import gzip
import json

import pyarrow as pa
import pytest
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


def test_size_limits_are_counted_and_a_run_refuses_lossy_shards(tmp_path):
    """Records (and answer images) dropped by `bounds` / `truncate` are counted in the manifest; train refuses
    shards that lost more than data.max_dropped_fraction of them."""
    from orchestrator.config import ConfigError
    from orchestrator.training.driver import load_manifest

    image = tmp_path / "img.png"
    Image.new("RGB", (32, 32), "red").save(image)
    picture = {"type": "image", "image": str(image)}
    records = ([{**GOOD, "id": f"t{i}", "instruction": f"Say hi {i}."} for i in range(6)]
               # the answer's text fits and its image is cut off: the record is kept without it
               + [{"id": f"c{i}", "instruction": f"Draw {i}.", "output": [{"type": "text", "text": "Here:"}, picture]}
                  for i in range(2)]
               # an image-first answer cannot fit at all: the record is dropped
               + [{"id": f"d{i}", "instruction": f"Paint {i}.", "output": [picture]} for i in range(2)])
    (tmp_path / "a.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    # 60 tokens: a text record fits; an image (66 tokens in the tiny grid) does not
    manifest, rejects = run(tmp_path, tmp_path / "a.jsonl", "data.max_seq_len=60", "data.val_fraction=0")
    d = manifest["dropped"]
    assert d["records_in"] == 10 and d["records"] == {"bounds": 0, "truncate": 2}
    assert d["answer_images_in"] == 4 and d["answer_images"] == {"bounds": 0, "truncate": 4}
    assert sorted(r["id"] for r in rejects) == ["d0", "d1"] and {r["stage"] for r in rejects} == {"truncate"}
    out = [f"data.output={tmp_path / 'out'}"]
    with pytest.raises(ConfigError, match=r"4 of 4 answer images \(100%\) were dropped by the size limits "
                                          r"\(4 at `truncate`\), more than data.max_dropped_fraction=0.2"):
        load_manifest(load_config(None, out))
    with pytest.raises(ConfigError, match=r"2 of 10 records \(20%\)"):
        load_manifest(load_config(None, [*out, "data.max_dropped_fraction=0.1"]))
    assert load_manifest(load_config(None, [*out, "data.max_dropped_fraction=1"]))
    # a bounds reject counts its answer images too
    manifest, _ = run(tmp_path, tmp_path / "a.jsonl", "data.filters.max_images=0", "data.val_fraction=0")
    assert manifest["dropped"]["records"]["bounds"] == 4 and manifest["dropped"]["answer_images"]["bounds"] == 4


def test_lone_surrogates_are_counted_rejects_and_an_empty_split_still_gets_its_summary(tmp_path):
    """The issue's two crashes: a lone surrogate ("\\ud800" in JSON) stopped the run when rows were built, and a
    split left empty stopped the summary (KeyError 'n_tokens') after the shards were written."""
    from orchestrator.data.manifest import format_summary

    lines = [json.dumps({**GOOD, "id": "a\ud800"}), json.dumps(GOOD),
             json.dumps({**GOOD, "id": "b", "output": [{"type": "text", "text": "x\ud800"}]})]
    (tmp_path / "a.jsonl").write_text("\n".join(lines) + "\n")
    manifest, rejects = run(tmp_path, tmp_path / "a.jsonl", "data.val_fraction=0")
    assert manifest["outputs"] == {"train": 1, "val": 0, "rejected": 2}
    assert [(r["line"], r["id"], r["stage"], r["reason"]) for r in rejects] == [
        (1, "a\\ud800", "schema", "'id' is not valid Unicode text (lone surrogate at character 1)"),
        (3, "b", "schema", "output[0].text is not valid Unicode text (lone surrogate at character 1)")]
    summary = format_summary(manifest, "out")
    assert "val: 0 records, 0 tokens (0 trained on" in summary and "train: 1 records" in summary
    (tmp_path / "a.jsonl").write_text(lines[0] + "\n")  # everything rejected: both splits empty
    manifest, _ = run(tmp_path, tmp_path / "a.jsonl")
    assert manifest["tokens"]["train"]["n_tokens"] == 0 and "train: 0 records" in format_summary(manifest, "out")
