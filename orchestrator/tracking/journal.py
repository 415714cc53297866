"""Writes that could not reach MLflow, kept in the run's folder until sent: ``<run dir>/journal/``.

One small JSON file per write, ``<time ns>-<writer>.json``: a listing sorts them in the order they were made
(one writer's strictly, several writers' by clock); an artifact folder goes beside its entry
(``<name>.files/``). Entries are written like every small state file (files.py: one put on object stores,
locally a temp file renamed), so the journal lives wherever the checkpoints do, s3:// included. An entry
the server refused is set aside as ``<name>.rejected``.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
import socket
import tempfile

import pyarrow.fs as pafs

from ..files import arrow_fs, write_bytes

FOLDER = "journal"
ENTRY, FILES, REJECTED = ".json", ".files", ".rejected"
SCHEMES = {"gcs": "gs"}  # pyarrow's type name -> URI scheme, where they differ


def writer_id() -> str:
    host = re.sub(r"[^A-Za-z0-9]", "", socket.gethostname())[:16] or "host"
    return f"{host}.{os.getpid()}.{secrets.token_hex(2)}"


class Journal:
    def __init__(self, run_dir: str):
        """``run_dir``: the run's (or sweep's) folder, a local path or a URI."""
        self.local = "://" not in run_dir
        #: the folder as `moss tracking replay` takes it
        self.run_dir = os.path.abspath(os.path.expanduser(run_dir)) if self.local else run_dir.rstrip("/")
        self.uri = f"{self.run_dir}/{FOLDER}"  # what write_bytes takes
        self.fs, self.path = arrow_fs(self.uri)
        self.writer = writer_id()

    @classmethod
    def on(cls, fs: pafs.FileSystem, run_dir: str) -> "Journal":
        """The journal of a folder given as a pyarrow filesystem and a path (Ray's storage context)."""
        if isinstance(fs, pafs.LocalFileSystem):
            return cls(run_dir)
        return cls(f"{SCHEMES.get(fs.type_name, fs.type_name)}://{run_dir.lstrip('/')}")

    def name(self, stamp_ns: int) -> str:
        return f"{stamp_ns:020d}-{self.writer}"

    def write(self, name: str, entry: dict, files: str | None = None) -> None:
        """The entry (and a local folder of files beside it); the entry last, so a listed entry is whole."""
        if files is not None:
            if self.local:
                shutil.copytree(files, f"{self.path}/{name}{FILES}", dirs_exist_ok=True)
            else:
                pafs.copy_files(files, f"{self.path}/{name}{FILES}", source_filesystem=pafs.LocalFileSystem(),
                                destination_filesystem=self.fs)
        write_bytes(f"{self.uri}/{name}{ENTRY}", json.dumps(entry).encode())

    def names(self) -> list[str]:
        """Entries waiting to be sent, oldest first."""
        found = self.fs.get_file_info(pafs.FileSelector(self.path, allow_not_found=True))
        return sorted(i.base_name[: -len(ENTRY)] for i in found if i.base_name.endswith(ENTRY))

    def read(self, name: str) -> dict:
        with self.fs.open_input_stream(f"{self.path}/{name}{ENTRY}") as f:
            return json.loads(f.read())

    @contextlib.contextmanager
    def files(self, name: str):
        """A local folder holding the entry's files (downloaded from remote storage)."""
        if self.local:
            yield f"{self.path}/{name}{FILES}"
            return
        with tempfile.TemporaryDirectory(prefix="moss-journal-") as tmp:
            pafs.copy_files(f"{self.path}/{name}{FILES}", tmp, source_filesystem=self.fs,
                            destination_filesystem=pafs.LocalFileSystem())
            yield tmp

    def delete(self, name: str) -> None:
        """The entry first: its files alone are never sent again (``sweep`` removes them). Gone already: fine."""
        try:
            self.fs.delete_file(f"{self.path}/{name}{ENTRY}")
        except FileNotFoundError:
            pass
        self._delete_files(name)

    def reject(self, name: str) -> str:
        """Set aside an entry the server refused (not listed again); -> where it went."""
        self.fs.move(f"{self.path}/{name}{ENTRY}", f"{self.path}/{name}{REJECTED}")
        return f"{self.uri}/{name}{REJECTED}"

    def sweep(self) -> None:
        """Remove artifact folders whose entry is gone (a delete interrupted between the two)."""
        found = self.fs.get_file_info(pafs.FileSelector(self.path, allow_not_found=True))
        entries = {i.base_name for i in found}
        for info in found:
            if info.base_name.endswith(FILES) and info.base_name[: -len(FILES)] + ENTRY not in entries:
                self._delete_files(info.base_name[: -len(FILES)])

    def _delete_files(self, name: str) -> None:
        path = f"{self.path}/{name}{FILES}"
        if self.fs.get_file_info(path).type != pafs.FileType.NotFound:
            self.fs.delete_dir(path)
