"""Which image references a record may make: the one policy every image read of the pipeline, the editing
evaluation and the InterleavedBench reader goes through, checked before anything is opened or fetched.

Local paths (after ``schema.resolve_ref``: relative to the data file's folder, or absolute) must resolve,
symlinks followed, inside the roots: ``data.image_roots``, or by default the folder of the data file.
URIs must use an allowed scheme (``data.allowed_schemes``; by default those of ``data.source``, so a local
source allows local files only); ``file://`` is a scheme like any other and, when allowed, is confined
like a local path. A reference holding ``::`` (an fsspec chain such as ``simplecache::s3://...``) is never
allowed. Embedded bytes need no policy. Refusals raise ``ImageError`` (an ``image`` reject).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from .images import ImageError


def scheme_of(ref: str) -> str:
    """"s3" for s3://..., "" for a local path."""
    return ref.split("://", 1)[0].lower() if "://" in ref else ""


@dataclass(frozen=True)
class ImagePolicy:
    """Picklable (it travels to Ray tasks in fn_kwargs); the default allows local files under the data file's
    folder only."""

    roots: tuple[str, ...] | None = None  # absolute, symlink-free folders; None: the folder of each data file
    schemes: frozenset[str] = frozenset()  # URI schemes allowed ("file" included only when listed)

    @classmethod
    def from_config(cls, data, sources: list[str] | None = None) -> ImagePolicy:
        """From a DataSection; ``sources`` stand in for data.source where another reader names its own."""
        from ..config import ConfigError

        roots = None
        if data.image_roots is not None:
            if any("://" in r for r in data.image_roots):
                raise ConfigError(f"data.image_roots {data.image_roots}: local folders only (URIs are governed by "
                                  "data.allowed_schemes)")
            roots = tuple(os.path.realpath(os.path.abspath(os.path.expanduser(r))) for r in data.image_roots)
        if data.allowed_schemes is not None:
            schemes = frozenset(s.lower().removesuffix("://") for s in data.allowed_schemes)
        else:
            schemes = frozenset(scheme_of(s) for s in (sources or data.sources())) - {""}
        return cls(roots, schemes)

    def check(self, ref: str, base: str) -> str:
        """A resolved reference of a record read from a file in ``base`` -> the path or URI to open."""
        if "::" in ref:
            raise ImageError(f"{ref}: fsspec chains ('::') are never allowed")
        scheme = scheme_of(ref)
        if scheme and scheme not in self.schemes:
            allowed = ", ".join(sorted(self.schemes)) or "none: local files only"
            raise ImageError(f"{ref}: URI scheme {scheme!r} is not allowed (data.allowed_schemes: {allowed})")
        if scheme and scheme != "file":
            return ref
        return self._confine(ref, base)

    def _confine(self, ref: str, base: str) -> str:
        path, local_base = _local(ref), _local(base) if base else None
        if path is None:
            raise ImageError(f"{ref}: a file:// URI must name a local absolute path")
        if not os.path.isabs(path):
            if not local_base:
                raise ImageError(f"{ref}: a relative path, and the data file has no local folder")
            path = os.path.join(local_base, path)
        roots = self.roots if self.roots is not None else (os.path.realpath(local_base),) if local_base else ()
        if not roots:
            raise ImageError(f"{ref}: a local path in a record of a remote data file, and data.image_roots is not set")
        try:
            real = os.path.realpath(path)
        except (OSError, ValueError) as e:
            raise ImageError(f"{ref}: cannot resolve the path: {e}") from None
        if not any(real == r or real.startswith(r.rstrip("/") + "/") for r in roots):
            where = "the data file's folder" if self.roots is None else "data.image_roots"
            raise ImageError(f"{ref}: resolves outside {where} ({', '.join(roots)})")
        return real


def _local(ref: str) -> str | None:
    """A local path, or the path of a file:// URI (None for another scheme, a host, or no absolute path)."""
    scheme = scheme_of(ref)
    if not scheme:
        return ref
    host, slash, path = ref.split("://", 1)[1].partition("/")
    return "/" + path if scheme == "file" and slash and host in ("", "localhost") else None
