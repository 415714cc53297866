"""Small state files (markers, manifests, locks, journals) on a local disk or an object store, written so
that a crash leaves the old file or the new one, never half of one.

Locally: a temp file in the same folder, fsync, ``os.replace``. On object stores (s3://, gs://): one put
of the whole object (pyarrow sends a file this small as a single request when the stream closes; a
failed write leaves the previous object). A file that is there but cannot be parsed is ``DamagedFile``,
an exit-2 error that says what to do.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import pyarrow.fs as pafs

from .config import ConfigError


class DamagedFile(ConfigError):
    """A state file that exists but cannot be read back."""


def absolute(path: str) -> str:
    """A local path made absolute (``~`` expanded); URIs unchanged."""
    return path if "://" in path else str(Path(path).expanduser().resolve())


def arrow_fs(path: str) -> tuple[pafs.FileSystem, str]:
    if "://" in path:
        return pafs.FileSystem.from_uri(path)
    return pafs.LocalFileSystem(), path


def exists(path: str) -> bool:
    fs, p = arrow_fs(path)
    return fs.get_file_info(p).type != pafs.FileType.NotFound


def read_bytes(path: str) -> bytes | None:
    fs, p = arrow_fs(path)
    try:
        with fs.open_input_stream(p) as f:
            return f.read()
    except FileNotFoundError:
        return None


def read_json(path: str, hint: str = "") -> dict | None:
    """The JSON object at ``path``; None when there is no file; DamagedFile when it cannot be parsed."""
    data = read_bytes(path)
    if data is None:
        return None
    try:
        obj = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DamagedFile(f"{path} is damaged ({len(data)} bytes, {type(e).__name__}: {e})"
                          + (f": {hint}" if hint else "")) from None
    if not isinstance(obj, dict):
        raise DamagedFile(f"{path} is damaged (a JSON {type(obj).__name__}, not an object)" + (f": {hint}" if hint else ""))
    return obj


def write_bytes(path: str, data: bytes) -> None:
    """Write ``data`` at ``path`` atomically (see the module docstring); parent folders are created."""
    if "://" not in path:
        folder = os.path.dirname(os.path.abspath(path))
        os.makedirs(folder, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{os.path.basename(path)}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise
        return
    fs, p = arrow_fs(path)
    fs.create_dir(p.rsplit("/", 1)[0], recursive=True)
    with fs.open_output_stream(p) as f:
        f.write(data)


def create_json(path: str, payload: dict) -> bool:
    """Write ``payload`` at ``path`` only if no file is there (atomic locally: a hard link of a complete temp
    file); False when one is. Object stores have no exclusive create: there it is an existence check and a
    put (callers read back, see lease.py)."""
    data = json.dumps(payload, indent=2).encode()
    if "://" in path:
        if exists(path):
            return False
        write_bytes(path, data)
        return True
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{os.path.basename(path)}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.link(tmp, path)
        return True
    except FileExistsError:
        return False
    finally:
        os.unlink(tmp)


def write_json(path: str, payload: dict) -> None:
    write_bytes(path, json.dumps(payload, indent=2).encode())


def delete(path: str) -> None:
    fs, p = arrow_fs(path)
    try:
        fs.delete_file(p)
    except FileNotFoundError:
        pass
