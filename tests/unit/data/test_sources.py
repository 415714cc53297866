"""Input listing and chunking: every record read exactly once, with its true line number."""

import gzip
import json
import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from orchestrator.config import ConfigError
from orchestrator.data.sources import Limits, Unreadable, list_files, plan_chunks, read_chunk


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


def reasons(chunks, limits):
    return [(c.path.rsplit("/", 1)[1], line, str(raw) if isinstance(raw, Unreadable) else "ok")
            for c in chunks for line, raw in read_chunk(c, limits)]


LIMITS = Limits(record_bytes=2048, file_bytes=65536)


@pytest.mark.parametrize("chunk_bytes", [1024, 10**6])
def test_a_line_over_max_record_bytes_is_one_reject_and_the_next_lines_keep_their_numbers(tmp_path, chunk_bytes):
    lines = [json.dumps({"id": i}) for i in range(5)]
    lines[2] = json.dumps({"id": "huge", "pad": "x" * 5000})
    (tmp_path / "a.jsonl").write_text("\n".join(lines) + "\n\n" + json.dumps({"id": "last"}))  # no final newline
    got = reasons(plan_chunks(list_files([str(tmp_path / "a.jsonl")]), chunk_bytes), LIMITS)
    assert [(line, r) for _, line, r in got] == [
        (1, "ok"), (2, "ok"),
        (3, f"a line of {len(lines[2])} bytes, more than data.max_record_bytes=2048: not decoded"),
        (4, "ok"), (5, "ok"), (7, "ok")]


def test_gzip_is_streamed_and_capped(tmp_path):
    """An endless line in a .jsonl.gz (a gzip bomb) is read up to max_file_bytes, never whole."""
    good = "".join(json.dumps({"id": i}) + "\n" for i in range(3)).encode()
    (tmp_path / "bomb.jsonl.gz").write_bytes(gzip.compress(good + b'{"id": "') + gzip.compress(b"a" * 2**20) * 64)
    (tmp_path / "fine.jsonl.gz").write_bytes(gzip.compress(good * 100))
    got = reasons(plan_chunks(list_files([str(tmp_path)]), 1024), LIMITS)
    bomb = [g for g in got if g[0] == "bomb.jsonl.gz"]
    assert bomb[:3] == [("bomb.jsonl.gz", i, "ok") for i in (1, 2, 3)]
    assert len(bomb) == 4 and bomb[3][1] == 4
    assert "bomb.jsonl.gz: decompresses to more than data.max_file_bytes=65536 bytes: not read further" in bomb[3][2]
    assert [r for f, _, r in got if f == "fine.jsonl.gz"] == ["ok"] * 300


def test_json_arrays_and_parquet_row_groups_over_max_file_bytes_are_one_reject(tmp_path):
    rows = [{"id": str(i), "pad": os.urandom(500).hex()} for i in range(100)]
    (tmp_path / "big.json").write_text(json.dumps(rows))
    with gzip.open(tmp_path / "big.json.gz", "wt") as f:
        json.dump(rows, f)
    (tmp_path / "small.json").write_text(json.dumps(rows[:3]))
    with pq.ParquetWriter(tmp_path / "p.parquet", pa.Table.from_pylist(rows).schema) as w:
        w.write_table(pa.Table.from_pylist(rows[:3]))  # a row group of 3 rows, then one of 100 (~100 KB)
        w.write_table(pa.Table.from_pylist(rows))
    # the same 100 rows with one repeated value: dictionary-encoded, small in the footer, ~100 KB decoded
    same = pa.Table.from_pylist([{**r, "pad": "p" * 1000} for r in rows])
    pq.write_table(same, tmp_path / "dict.parquet")
    got = reasons(plan_chunks(list_files([str(tmp_path)]), 1024), Limits(2048, 65536))
    by_file = {}
    for f, line, r in got:
        by_file.setdefault(f, []).append((line, r))
    assert by_file["small.json"] == [(1, "ok"), (2, "ok"), (3, "ok")]
    (line, r), = by_file["big.json"]
    assert line == 0 and "a JSON array of 102" in r and "more than data.max_file_bytes=65536: not read" in r
    (line, r), = by_file["big.json.gz"]
    assert line == 0 and "a JSON array of more than data.max_file_bytes=65536 bytes" in r
    assert by_file["p.parquet"][:3] == [(1, "ok"), (2, "ok"), (3, "ok")]
    (line, r), *more = by_file["p.parquet"][3:]
    assert not more and line == 4 and "row group 1 holds" in r and "bytes uncompressed, more than" in r
    *kept, (line, r) = by_file["dict.parquet"]
    assert kept == [(i + 1, "ok") for i in range(len(kept))] and line == len(kept) + 1
    assert len(kept) <= 64  # at most one batch decoded past the cap
    assert "row group 0 decodes to more than data.max_file_bytes=65536 bytes" in r


def test_deeply_nested_json_array_is_one_parse_failure(tmp_path):
    (tmp_path / "deep.json").write_text("[" * 100_000 + "]" * 100_000)
    ((_, line, raw),) = read_all(plan_chunks(list_files([str(tmp_path / "deep.json")]), 1024))
    assert line == 0 and isinstance(raw, Unreadable) and "RecursionError" in raw


def test_fifos_in_a_source_folder_are_not_read(tmp_path):
    (tmp_path / "a.jsonl").write_text("{}\n")
    os.mkfifo(tmp_path / "pipe.jsonl")
    assert list_files([str(tmp_path)]) == [str(tmp_path / "a.jsonl")]
