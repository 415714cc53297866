"""Input listing and chunking: every record read exactly once, with its true line number."""

import gzip
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from orchestrator.config import ConfigError
from orchestrator.data.sources import list_files, plan_chunks, read_chunk


def read_all(chunks):
    return [(c.path, line, raw) for c in chunks for line, raw in read_chunk(c)]


@pytest.mark.parametrize("chunk_bytes", [1024, 1500, 4096, 10**6])
def test_big_jsonl_is_cut_at_lines_with_true_line_numbers(tmp_path, chunk_bytes):
    lines = [json.dumps({"id": i, "pad": "x" * (i % 97)}) if i % 13 else "" for i in range(1, 400)]
    path = tmp_path / "a.jsonl"
    path.write_text("\n".join(lines) + "\n")
    chunks = plan_chunks(list_files([str(path)]), chunk_bytes)
    assert (len(chunks) > 1) == (chunk_bytes < path.stat().st_size)
    got = read_all(chunks)
    want = [(i + 1, ln.encode()) for i, ln in enumerate(lines) if ln]
    assert [(line, raw) for _, line, raw in got] == want


def test_parquet_json_array_and_gzip(tmp_path):
    rows = [{"id": str(i), "output": "x"} for i in range(10)]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "p.parquet", row_group_size=3)
    (tmp_path / "arr.json").write_text(json.dumps(rows[:4]))
    with gzip.open(tmp_path / "z.jsonl.gz", "wt") as f:
        f.write("\n".join(json.dumps(r) for r in rows[:5]) + "\n")
    (tmp_path / "notes.txt").write_text("ignored")
    files = list_files([str(tmp_path)])
    assert [f.rsplit("/", 1)[1] for f in files] == ["arr.json", "p.parquet", "z.jsonl.gz"]
    chunks = plan_chunks(files, 1024)
    assert sum(c.kind == "parquet" for c in chunks) == 4
    got = read_all(chunks)
    by_file = {}
    for path, line, raw in got:
        by_file.setdefault(path.rsplit("/", 1)[1], []).append(line)
    assert by_file == {"arr.json": [1, 2, 3, 4], "p.parquet": list(range(1, 11)), "z.jsonl.gz": [1, 2, 3, 4, 5]}
    assert [raw["id"] for p, _, raw in got if p.endswith("parquet")] == [str(i) for i in range(10)]


def test_broken_json_array_is_one_parse_failure(tmp_path):
    (tmp_path / "bad.json").write_text('[{"id": 1}, {"id": ')
    got = read_all(plan_chunks(list_files([str(tmp_path / "bad.json")]), 1024))
    assert len(got) == 1 and got[0][1] == 0


def test_globs_and_missing_sources(tmp_path):
    (tmp_path / "a.jsonl").write_text("{}\n")
    (tmp_path / "b.jsonl").write_text("{}\n")
    assert len(list_files([str(tmp_path / "*.jsonl"), str(tmp_path / "a.jsonl")])) == 2
    with pytest.raises(ConfigError, match="no .jsonl"):
        list_files([str(tmp_path / "missing")])
