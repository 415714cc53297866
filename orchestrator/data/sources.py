"""Input files -> chunks -> (file, line, raw record) triples.

A source is a path, glob or directory, local or any fsspec URL (s3://, gs://, hf://datasets/...).
JSONL files larger than ``chunk_bytes`` are cut at line boundaries into byte ranges so that one big
file is read in parallel; the planner counts lines while cutting, so every record keeps its true line
number. Parquet files are chunked by row group ("line" = row number); ``.json`` arrays and ``.gz``
files are one chunk each ("line" = element number / line number).

Work per record and per file is bounded (``Limits``, from data.max_record_bytes / data.max_file_bytes):
lines are streamed in blocks (``.gz`` decompressed as they are read), a line longer than the record limit
is one `parse` reject that is never decoded, and what must be read whole (a JSON array, a parquet row
group, the decompressed bytes of a ``.gz``) is refused as one `parse` reject above the file limit.
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
_LINE_BLOCK = 2**20
_PARQUET_BATCH = 64  # rows decoded at a time
BOM = b"\xef\xbb\xbf"


@dataclass(frozen=True)
class Limits:
    record_bytes: int = 16 * 2**20  # data.max_record_bytes
    file_bytes: int = 2**30  # data.max_file_bytes

    @classmethod
    def from_config(cls, data) -> Limits:
        return cls(data.max_record_bytes, data.max_file_bytes)


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

    Files under ``exclude`` (the output folder, which may sit inside a source folder), hidden or
    ``_``-prefixed files (``_SUCCESS``, ``.DS_Store``) and, locally, anything but regular files (a FIFO
    would block the read) are skipped.
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
            else:
                out.append(p)
        return [os.path.abspath(p) for p in out if p.endswith(EXTENSIONS) and os.path.isfile(p)]
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
    """Stands in for a record (or the rest of a chunk) that could not be read; fails the "parse" stage."""


class TooLarge(Exception):
    """What must be read whole is over data.max_file_bytes: the rest of the chunk is one reject."""


def read_chunk(chunk: Chunk, limits: Limits = Limits()) -> Iterator[tuple[int, object]]:
    """(line number, raw record) for every non-blank line / element / row of the chunk.

    A file that cannot be read (truncated gzip, corrupt parquet, permissions) or is too large to read yields
    one Unreadable record at the first line not read, so the failure is counted instead of stopping the run.
    """
    reader = {"parquet": _read_parquet, "json": _read_json_array}.get(chunk.kind, _read_lines)
    last = chunk.first_line - 1
    try:
        for line, raw in reader(chunk, limits):
            last = line
            yield line, raw
    except TooLarge as e:
        yield last + 1, Unreadable(f"{chunk.path}: {e}")
    except Exception as e:
        yield last + 1, Unreadable(f"cannot read {chunk.path}: {type(e).__name__}: {str(e)[:200]}")


class _Capped:
    """A binary stream that ends at ``limit`` bytes, and raises TooLarge if read on when more follow."""

    def __init__(self, f, limit: int, what: str):
        self.f, self.left, self.limit, self.what = f, limit, limit, what

    def read(self, n: int) -> bytes:
        if self.left == 0:
            if self.f.read(1):
                raise TooLarge(f"{self.what} more than data.max_file_bytes={self.limit} bytes: not read further")
            return b""
        data = self.f.read(min(n, self.left))
        self.left -= len(data)
        return data


def _read_whole(f, limit: int, what: str) -> bytearray:
    capped, buf = _Capped(f, limit, what), bytearray()
    while block := capped.read(_READ_BLOCK):
        buf += block
    return buf


def _read_lines(chunk: Chunk, limits: Limits):
    with _open(chunk.path) as f:
        if chunk.path.endswith(".gz"):
            stream, n = _Capped(gzip.GzipFile(fileobj=f), limits.file_bytes, "decompresses to"), -1
        else:
            f.seek(chunk.start)
            stream, n = f, (-1 if chunk.end < 0 else chunk.end - chunk.start)
        yield from split_lines(stream, n, chunk.first_line, limits.record_bytes, bom=chunk.start == 0)


def split_lines(f, n: int, first_line: int, limit: int, bom: bool = False):
    """(line number, bytes) of the non-blank lines in the next ``n`` bytes of ``f`` (-1: to the end), read in
    blocks; a line over ``limit`` bytes is skipped unread and yields one Unreadable instead."""
    line, pending, dropped = first_line, b"", 0  # the unfinished line; or, once it is too long, its size
    while n and (block := f.read(_LINE_BLOCK if n < 0 else min(_LINE_BLOCK, n))):
        n = n - len(block) if n > 0 else n
        if bom:
            block, bom = block.removeprefix(BOM), False
        *done, rest = block.split(b"\n")
        for piece in done:
            if (size := dropped + len(pending) + len(piece)) > limit:
                yield line, _too_long(size, limit)
            elif (data := pending + piece).strip():
                yield line, data
            line, pending, dropped = line + 1, b"", 0
        if dropped or len(pending) + len(rest) > limit:
            dropped, pending = dropped + len(pending) + len(rest), b""
        else:
            pending += rest
    if dropped:
        yield line, _too_long(dropped, limit)
    elif pending.strip():
        yield line, pending


def _too_long(size: int, limit: int) -> Unreadable:
    return Unreadable(f"a line of {size} bytes, more than data.max_record_bytes={limit}: not decoded")


def _read_json_array(chunk: Chunk, limits: Limits):
    """Whole-file failures (too large, not JSON) are one record at line 0."""
    what = "a JSON array of"
    try:
        if not chunk.path.endswith(".gz") and (size := _size(chunk.path)) > limits.file_bytes:
            raise TooLarge(f"{what} {size} bytes, more than data.max_file_bytes={limits.file_bytes}: not read")
        with _open(chunk.path) as f:
            stream = gzip.GzipFile(fileobj=f) if chunk.path.endswith(".gz") else f
            data = _read_whole(stream, limits.file_bytes, what).removeprefix(BOM)
    except TooLarge as e:
        yield 0, Unreadable(f"{chunk.path}: {e}")
        return
    try:
        items = json.loads(data)
    except json.JSONDecodeError as e:
        yield 0, Unreadable(f"not valid JSON: {e.msg} at line {e.lineno} column {e.colno}")
        return
    except (UnicodeDecodeError, RecursionError, ValueError) as e:
        yield 0, Unreadable(f"not valid JSON: {type(e).__name__}: {str(e)[:120]}")
        return
    for i, item in enumerate(items):
        yield i + 1, item if isinstance(item, dict) else _as_json(item)


def _as_json(item) -> str:
    """A non-object element, back to JSON text so that the schema stage names its type."""
    try:
        return json.dumps(item)
    except (RecursionError, ValueError) as e:
        return Unreadable(f"an element that cannot be re-encoded as JSON: {type(e).__name__}")


def _read_parquet(chunk: Chunk, limits: Limits):
    """The footer's uncompressed size of the row group is checked first; then it is decoded in small batches,
    and what the batches add up to is capped too (dictionary and run-length encodings expand past the footer's
    figure)."""
    import pyarrow.parquet as pq

    cap = limits.file_bytes
    with _open(chunk.path) as f:
        pf = pq.ParquetFile(f)
        group = pf.metadata.row_group(chunk.start)
        columns = sum(group.column(i).total_uncompressed_size for i in range(group.num_columns))
        size = max(group.total_byte_size, columns)
        if size > cap:
            raise TooLarge(f"row group {chunk.start} holds {size} bytes uncompressed, more than "
                           f"data.max_file_bytes={cap}: not read")
        line, held = chunk.first_line, 0
        for batch in pf.iter_batches(batch_size=_PARQUET_BATCH, row_groups=[chunk.start], use_threads=False):
            held += batch.nbytes
            if held > cap:
                raise TooLarge(f"row group {chunk.start} decodes to more than data.max_file_bytes={cap} bytes: "
                               "not read further")
            for row in batch.to_pylist():
                yield line, row
                line += 1
