"""Input files -> chunks -> (file, line, raw record) triples.

A source is a path, glob or directory, local or any fsspec URL (s3://, gs://, hf://datasets/...).
JSONL files larger than ``chunk_bytes`` are cut at line boundaries into byte ranges so that one big
file is read in parallel; the planner counts lines while cutting, so every record keeps its true line
number. Parquet files are chunked by row group ("line" = row number); ``.json`` arrays and ``.gz``
files are one chunk each ("line" = element number / line number).
"""

from __future__ import annotations

import glob as globlib
import gzip
import json
import os
import posixpath
from collections.abc import Iterator
from dataclasses import dataclass

from ..config import ConfigError

EXTENSIONS = (".jsonl", ".json", ".parquet", ".jsonl.gz", ".json.gz")
_READ_BLOCK = 8 * 2**20
BOM = b"\xef\xbb\xbf"


@dataclass(frozen=True)
class Chunk:
    path: str  # local path or full URL
    file_index: int  # position in the sorted file list: orders records across files
    kind: str  # "lines" | "json" | "parquet"
    start: int = 0  # byte offset (lines) or row-group index (parquet)
    end: int = -1  # byte offset, exclusive (-1: to the end)
    first_line: int = 1

    @property
    def base(self) -> str:
        """The folder that relative image paths resolve against."""
        return posixpath.dirname(self.path) if "://" in self.path else os.path.dirname(os.path.abspath(self.path))


def _fs(path: str):
    import fsspec

    return fsspec.core.url_to_fs(path)


def _is_glob(path: str) -> bool:
    return any(c in path for c in "*?[")


def list_files(sources: list[str], exclude: str | None = None) -> list[str]:
    """Every data file named by the sources (sorted, deduplicated); ConfigError when one names nothing.

    Files under ``exclude`` (the output folder, which may sit inside a source folder) and hidden or
    ``_``-prefixed files (``_SUCCESS``, ``.DS_Store``) are skipped.
    """
    skip = None if exclude is None else (exclude if "://" in exclude else os.path.abspath(exclude)).rstrip("/") + "/"
    files: list[str] = []
    for src in sources:
        found = [f for f in _expand(src) if not (skip and f.startswith(skip))
                 and not os.path.basename(f).startswith((".", "_"))]
        if not found:
            raise ConfigError(f"data.source {src!r}: no {'/'.join(EXTENSIONS)} files found")
        files += found
    return sorted(dict.fromkeys(files))


def _expand(src: str) -> list[str]:
    if "://" not in src:
        paths = globlib.glob(src, recursive=True) if _is_glob(src) else [src]
        out = []
        for p in paths:
            if os.path.isdir(p):
                out += [os.path.join(r, f) for r, _, fs in os.walk(p) for f in fs]
            elif os.path.isfile(p):
                out.append(p)
        return [os.path.abspath(p) for p in out if p.endswith(EXTENSIONS)]
    try:
        fs, path = _fs(src)
        if _is_glob(path):
            paths = fs.glob(path)
        elif fs.isdir(path):
            paths = fs.find(path)
        else:
            paths = [path] if fs.exists(path) else []
    except ImportError as e:
        raise ConfigError(f"data.source {src!r}: {e} (pip install 'moss-orchestrator[cloud]' for s3:// and gs://)") from None
    except Exception as e:  # credentials, network, permissions: say so before any cluster work
        raise ConfigError(f"data.source {src!r}: cannot list it: {type(e).__name__}: {e}") from None
    return [fs.unstrip_protocol(p) for p in paths if p.endswith(EXTENSIONS)]


def _open(path: str, mode: str = "rb"):
    if "://" not in path:
        return open(path, mode)
    import fsspec

    return fsspec.open(path, mode).open()


def _size(path: str) -> int:
    if "://" not in path:
        return os.path.getsize(path)
    fs, p = _fs(path)
    return fs.size(p)


def plan_chunks(files: list[str], chunk_bytes: int) -> list[Chunk]:
    chunks: list[Chunk] = []
    for index, path in enumerate(files):
        if path.endswith(".parquet"):
            chunks += _parquet_chunks(path, index)
        elif path.endswith((".json", ".json.gz")) and _starts_with_bracket(path):
            chunks.append(Chunk(path, index, "json"))
        elif path.endswith(".gz"):
            chunks.append(Chunk(path, index, "lines"))
        elif _size(path) <= chunk_bytes:
            chunks.append(Chunk(path, index, "lines"))
        else:
            chunks += _line_chunks(path, index, chunk_bytes)
    return chunks


def _starts_with_bracket(path: str) -> bool:
    """A JSON array (else JSON lines: many ``.json`` releases hold one object per line)."""
    try:
        with _open(path) as f:
            head = (gzip.GzipFile(fileobj=f) if path.endswith(".gz") else f).read(4096)
    except (OSError, EOFError):
        return False  # unreadable: read as lines, where the failure becomes a reject
    return head.removeprefix(BOM).lstrip()[:1] == b"["


def _parquet_chunks(path: str, index: int) -> list[Chunk]:
    import pyarrow.parquet as pq

    try:
        with _open(path) as f:
            meta = pq.ParquetFile(f).metadata
    except Exception:  # unreadable footer: one chunk whose read fails and becomes a reject
        return [Chunk(path, index, "parquet", start=-1)]
    chunks, line = [], 1
    for g in range(meta.num_row_groups):
        chunks.append(Chunk(path, index, "parquet", start=g, first_line=line))
        line += meta.row_group(g).num_rows
    return chunks


def _line_chunks(path: str, index: int, chunk_bytes: int) -> list[Chunk]:
    """Cut at the first newline after every chunk_bytes, counting lines on the way (one streaming read)."""
    chunks: list[Chunk] = []
    start, first_line, pos, lines, target = 0, 1, 0, 0, chunk_bytes
    with _open(path) as f:
        while block := f.read(_READ_BLOCK):
            offset = 0
            while pos + len(block) > target:
                nl = block.find(b"\n", max(target - pos, offset))
                if nl < 0:
                    break
                lines += block.count(b"\n", offset, nl + 1)
                end = pos + nl + 1
                chunks.append(Chunk(path, index, "lines", start, end, first_line))
                start, first_line, offset, target = end, lines + 1, nl + 1, end + chunk_bytes
            lines += block.count(b"\n", offset)
            pos += len(block)
    if start < pos:
        chunks.append(Chunk(path, index, "lines", start, -1, first_line))
    return chunks


class Unreadable(str):
    """Stands in for the records of a chunk that could not be read; fails the "parse" stage."""


def read_chunk(chunk: Chunk) -> Iterator[tuple[int, object]]:
    """(line number, raw record) for every non-blank line / element / row of the chunk.

    A file that cannot be read (truncated gzip, corrupt parquet, permissions) yields one Unreadable
    record at the first line not read, so the failure is counted instead of stopping the run.
    """
    reader = {"parquet": _read_parquet, "json": _read_json_array}.get(chunk.kind, _read_lines)
    last = chunk.first_line - 1
    try:
        for line, raw in reader(chunk):
            last = line
            yield line, raw
    except Exception as e:
        yield last + 1, Unreadable(f"cannot read {chunk.path}: {type(e).__name__}: {str(e)[:200]}")


def _read_lines(chunk: Chunk):
    with _open(chunk.path) as f:
        if chunk.path.endswith(".gz"):
            data = gzip.GzipFile(fileobj=f).read()
        else:
            f.seek(chunk.start)
            data = f.read() if chunk.end < 0 else f.read(chunk.end - chunk.start)
    if chunk.start == 0:
        data = data.removeprefix(BOM)
    for i, line in enumerate(data.split(b"\n")):
        if line.strip():
            yield chunk.first_line + i, line


def _read_json_array(chunk: Chunk):
    with _open(chunk.path) as f:
        data = (gzip.GzipFile(fileobj=f) if chunk.path.endswith(".gz") else f).read().removeprefix(BOM)
    try:
        items = json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError):
        yield 0, data  # the whole file fails "parse" as one record, with the decoder's message
        return
    for i, item in enumerate(items):
        yield i + 1, item if isinstance(item, dict) else json.dumps(item)


def _read_parquet(chunk: Chunk):
    import pyarrow.parquet as pq

    with _open(chunk.path) as f:
        table = pq.ParquetFile(f).read_row_group(chunk.start)
    for i, row in enumerate(table.to_pylist()):
        yield chunk.first_line + i, row
