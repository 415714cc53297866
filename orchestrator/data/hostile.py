"""The hostile set for tests: records that attack the reader rather than fail the schema.

``write_hostile(dir, canary)`` writes lone surrogates in every string field, control characters, paths and
symlinks out of the roots, FIFOs, sockets, file:// / http:// / fsspec-chain references, 5,000 images, pixel
and gzip bombs, huge lines, deep nesting, oversized arrays and row groups, mixed with good records over
JSONL, .jsonl.gz, a JSON array and parquet; expectations hold under ``HOSTILE_LIMITS``.
"""

from __future__ import annotations

import gzip
import io
import json
import os
from pathlib import Path

from PIL import Image

from .fuzz import FUZZ_LIMITS, _Fuzz, declared_png
from .sample import _i

#: config overrides the hostile set's expectations hold under (on top of FUZZ_LIMITS)
HOSTILE_LIMITS = [*FUZZ_LIMITS, "data.max_record_bytes=1048576", "data.max_file_bytes=4194304"]
_RECORD_BYTES, _FILE_BYTES = 2**20, 4 * 2**20
_SURROGATE = "\ud800"


class _Hostile(_Fuzz):
    """``root/data`` holds the data files and every image a record may use; ``root/outside`` what no record may
    reach. Kinds return (record dict or line bytes, stage, words the reject reason must hold)."""

    def __init__(self, root: Path, canary: str, seed: int):
        import socket

        self.data, self.outside, self.canary = root / "data", root / "outside", canary.rstrip("/")
        super().__init__(self.data, seed, name="hostile")
        self.outside.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (32, 32), "black").save(self.outside / "secret.png")
        sp = self.bad
        os.symlink(self.outside / "secret.png", sp / "escape.png")
        os.symlink(self.outside, sp / "outdir")
        os.symlink("/dev/zero", sp / "zero.png")
        os.symlink("loop-b.png", sp / "loop-a.png")
        os.symlink("loop-a.png", sp / "loop-b.png")
        os.mkfifo(sp / "pipe.png")
        (sp / "folder.png").mkdir()
        self.has_socket = len(str(sp / "sock.png")) < 100  # AF_UNIX paths are short
        if self.has_socket:
            with socket.socket(socket.AF_UNIX) as s:
                s.bind(str(sp / "sock.png"))
        Image.new("RGB", (40, 40), "olive").save(sp / "many.png")  # only the 5,000-image record names it
        Image.new("RGB", (48, 40), "teal").save(sp / "alias-target.png")
        os.symlink("alias-target.png", sp / "alias.png")  # a symlink that stays inside: fine
        (sp / "bomb-huge.png").write_bytes(declared_png(100_000, 100_000))
        (sp / "bomb-big.png").write_bytes(declared_png(3000, 3000, rows=3000))

    def rel(self, name: str) -> str:
        return f"images/{self.name}-bad/{name}"

    def image_kind(self, ref: str, words: str):
        return self.with_output_image(ref), "image", words

    def surrogate(self, domain: str, field: str, words: str):
        r = self.fresh(domain)
        value = r[field] if isinstance(r[field], str) else r[field][0]
        if field in ("images", "output_images"):
            r[field][0] = value + _SURROGATE
        else:
            r[field] = value[:3] + _SURROGATE + value[3:]
        return r, "schema", words

    # good, in ways a reader might get wrong
    def h_good(self):
        r = self.fresh(self.rng.choice(("howto", "editing", "vqa")))
        return r, "", ""

    def h_good_placeholder(self):
        return self.fresh(self.rng.choice(("storytelling", "generation"))), "", ""

    def h_symlink_inside(self):
        r = self.fresh("vqa")
        r["input"] = [_i(self.rel("alias.png"))]
        return r, "", ""

    def h_surrogate_in_a_key(self):  # an unknown field's name: not read, not stored
        r = self.fresh("vqa")
        r["note" + _SURROGATE] = 1
        return r, "", ""

    def h_surrogate_pair(self):  # a valid escaped pair (an emoji) is text like any other
        r = self.fresh("vqa")
        r["output"][0]["text"] += " \U0001F600"
        return r, "", ""

    # every string field with a lone surrogate
    def h_surrogate_id(self):
        return self.surrogate("vqa", "id", "'id' is not valid Unicode text (lone surrogate at character 3)")

    def h_surrogate_domain(self):
        return self.surrogate("vqa", "domain", "'domain' is not valid Unicode")

    def h_surrogate_task_name(self):
        return self.surrogate("storytelling", "task_name", "'task_name' is not valid Unicode")

    def h_surrogate_instruction(self):
        return self.surrogate("vqa", "instruction", "'instruction' is not valid Unicode")

    def h_surrogate_context(self):
        return self.surrogate("storytelling", "context", "'context' is not valid Unicode")

    def h_surrogate_output_text(self):
        return self.surrogate("storytelling", "output", "'output' is not valid Unicode")

    def h_surrogate_segment_text(self):
        r = self.fresh("vqa")
        r["output"][0]["text"] += _SURROGATE
        return r, "schema", "output[0].text is not valid Unicode"

    def h_surrogate_image_path(self):
        r = self.fresh("vqa")
        r["input"][0]["image"] += _SURROGATE
        return r, "schema", "input[0].image is not valid Unicode"

    def h_surrogate_images_list(self):
        return self.surrogate("storytelling", "images", "image 0 is not valid Unicode")

    def h_surrogate_output_images(self):
        return self.surrogate("generation", "output_images", "output image 0 is not valid Unicode")

    # control characters
    def h_control_id(self):
        r = self.fresh("vqa")
        r["id"] = "\x1b[31mred" + r["id"]
        return r, "schema", "'id' holds a control character"

    def h_nul_id(self):
        r = self.fresh("vqa")
        r["id"] += "\x00"
        return r, "schema", "'id' holds a control character"

    def h_control_domain(self):
        r = self.fresh("vqa")
        r["domain"] = "vqa\n"
        return r, "schema", "'domain' holds a control character"

    def h_nul_image_path(self):
        return self.with_output_image(self.rel("many.png") + "\x00.txt"), "schema", "holds a control character"

    # image references out of the roots, or not regular files
    def h_absolute_outside(self):
        return self.image_kind(str(self.outside / "secret.png"), "resolves outside")

    def h_dotdot_outside(self):
        return self.image_kind("../outside/secret.png", "resolves outside")

    def h_symlink_out(self):
        return self.image_kind(self.rel("escape.png"), "resolves outside")

    def h_symlink_dir_out(self):
        return self.image_kind(self.rel("outdir/secret.png"), "resolves outside")

    def h_symlink_to_device(self):
        return self.image_kind(self.rel("zero.png"), "resolves outside")

    def h_symlink_loop(self):
        return self.image_kind(self.rel("loop-a.png"), "cannot read")

    def h_fifo(self):
        return self.image_kind(self.rel("pipe.png"), "not a regular file: FIFO")

    def h_socket(self):
        return self.image_kind(self.rel("sock.png"), "not a regular file: socket")

    def h_directory(self):
        return self.image_kind(self.rel("folder.png"), "not a regular file: directory")

    def h_file_uri_inside(self):  # file:// is a scheme: refused unless data.allowed_schemes lists it
        return self.image_kind(f"file://{self.bad / 'many.png'}", "URI scheme 'file' is not allowed")

    def h_file_uri_outside(self):
        return self.image_kind(f"file://{self.outside / 'secret.png'}", "URI scheme 'file' is not allowed")

    def h_http(self):
        return self.image_kind(f"{self.canary}/plain.png", "URI scheme 'http' is not allowed")

    def h_https(self):
        return self.image_kind(self.canary.replace("http://", "https://") + "/tls.png", "URI scheme 'https'")

    def h_fsspec_chain(self):
        return self.image_kind(f"simplecache::{self.canary}/chained.png", "fsspec chains")

    def h_fsspec_chain_local(self):
        return self.image_kind(f"blockcache::file://{self.outside / 'secret.png'}", "fsspec chains")

    def h_s3_uri(self):
        return self.image_kind("s3://some-bucket/x.png", "URI scheme 's3' is not allowed")

    # too much work for one record
    def h_many_images(self):
        r = self.fresh("howto")
        r["output"] += [_i(self.rel("many.png"))] * 5000
        return r, "bounds", "5003 images, outside min_images..max_images"

    def h_many_placeholders(self):
        r = self.fresh("generation")
        r["output"], r["output_images"] = "<image>" * 5000, [self.rel("many.png")] * 5000
        return r, "bounds", "5000 images"

    def h_pixel_bomb(self):
        return self.image_kind(self.rel("bomb-huge.png"), "DecompressionBomb")

    def h_decompression_bomb(self):
        return self.image_kind(self.rel("bomb-big.png"), "3000x3000 px, more than max_image_pixels")

    def h_huge_line(self):
        r = self.fresh("vqa")
        r["instruction"] = "long " * (_RECORD_BYTES // 4)
        return json.dumps(r).encode(), "parse", "more than data.max_record_bytes"

    def h_deep_nesting(self):
        return b'{"id": "deep", "output": ' + b"[" * 20000 + b"]" * 20000 + b"}", "parse", "nested too deeply"

    def h_huge_int_id(self):
        return b'{"id": ' + b"7" * 5000 + b', "output": "x"}', "parse", "not valid JSON"

    def h_not_utf8(self):
        return b'{"id": "h-\xff\xfe", "output": "x"}', "parse", "not UTF-8"

    def h_not_an_object(self):
        return 42, "schema", "must be a JSON object"


_JSON_KINDS = [k[2:] for k in vars(_Hostile) if k.startswith("h_") and not k.startswith(("h_good", "h_not_an"))]
#: kinds a parquet file can hold (no lone surrogates: Arrow strings are UTF-8; segment lists only)
_PARQUET_KINDS = ["good", "control_id", "nul_id", "dotdot_outside", "absolute_outside", "symlink_out", "fifo",
                  "socket", "http", "many_images", "symlink_inside", "pixel_bomb"]
_GZ_KINDS = ["surrogate_instruction", "surrogate_id", "http", "fifo", "control_id", "not_utf8", "deep_nesting",
             "file_uri_outside", "good_placeholder", "surrogate_pair"]
_ARRAY_KINDS = ["surrogate_id", "surrogate_segment_text", "absolute_outside", "control_domain", "not_an_object",
                "fsspec_chain", "good_placeholder", "surrogate_in_a_key"]
HOSTILE_KINDS = sorted({*_JSON_KINDS, *_PARQUET_KINDS, *_GZ_KINDS, *_ARRAY_KINDS, "gzip_bomb", "json_array_too_large",
                        "row_group_too_large", "embedded_pixel_bomb", "embedded_good"} - {"good"})


def write_hostile(out_dir: str | Path, canary: str, seed: int = 0) -> tuple[Path, list[dict]]:
    """The hostile set under out_dir/data (the data files' folder: the default image root) and out_dir/outside
    (never to be opened); ``canary``: an http://127.0.0.1:PORT URL that must receive no request.

    Returns (data folder, [{"file", "line", "kind", "stage", "words", "id"}]): stage "" means the record must be
    kept; otherwise the reject must be at that stage, with ``words`` in its reason. Holds under HOSTILE_LIMITS.
    """
    hz = _Hostile(Path(out_dir), canary, seed)
    expect: list[dict] = []
    _write_kinds(hz, expect)
    _write_over_file_limits(hz, expect)
    _write_embedded(hz.data, expect)
    return hz.data, expect


def _build(hz: _Hostile, expect: list[dict], name: str, kinds: list[str]) -> list:
    """Records of ``kinds``, each between good ones; their expectations go to ``expect``."""
    plan = [k for kind in kinds for k in ("good", kind)] + ["good"]
    if not hz.has_socket:
        plan = [k for k in plan if k != "socket"]
    out = []
    for kind in plan:
        record, stage, words = getattr(hz, f"h_{kind}")()
        out.append(record)
        rid = record.get("id") if isinstance(record, dict) else None
        expect.append({"file": name, "line": len(out), "kind": kind, "stage": stage, "words": words, "id": rid})
    return out


def _line(r) -> bytes:
    return r if isinstance(r, bytes) else json.dumps(r).encode()  # lone surrogates become \\ud800 escapes


def _write_kinds(hz: _Hostile, expect: list[dict]) -> None:
    """The record kinds over JSONL, .jsonl.gz, a JSON array and parquet."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    d = hz.data
    jsonl = _build(hz, expect, "hostile.jsonl", _JSON_KINDS)
    (d / "hostile.jsonl").write_bytes(b"\n".join(_line(r) for r in jsonl) + b"\n")
    gz = b"\n".join(_line(r) for r in _build(hz, expect, "hostile.jsonl.gz", _GZ_KINDS))
    (d / "hostile.jsonl.gz").write_bytes(gzip.compress(gz))
    (d / "hostile.json").write_text(json.dumps(_build(hz, expect, "hostile.json", _ARRAY_KINDS), indent=1))
    rows = _build(hz, expect, "hostile.parquet", _PARQUET_KINDS)
    pq.write_table(pa.Table.from_pylist([_full_segments(r) for r in rows]), d / "hostile.parquet", row_group_size=7)


def _write_over_file_limits(hz: _Hostile, expect: list[dict]) -> None:
    """Whole-file limits: the parts before them are kept, the part over them is one reject."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    d = hz.data
    good = [hz.h_good()[0] for _ in range(2)]
    member = gzip.compress(b"a" * 2**24, 9)  # 16 MiB of one endless line per member, 512 members: 8 GiB unpacked
    head = gzip.compress(b"\n".join(_line(r) for r in good) + b'\n{"id": "bomb", "output": "')
    (d / "bomb.jsonl.gz").write_bytes(head + member * 512)
    expect += [_keep("bomb.jsonl.gz", i + 1, r) for i, r in enumerate(good)]
    expect.append(_reject("bomb.jsonl.gz", 3, "gzip_bomb", "decompresses to more than data.max_file_bytes"))

    pad = {**hz.h_good()[0], "id": "too-large", "pad": "p" * (_FILE_BYTES + 1024)}
    (d / "big.json").write_text(json.dumps([pad]))
    expect.append(_reject("big.json", 0, "json_array_too_large", "more than data.max_file_bytes"))

    good = [_full_segments(hz.h_good()[0]) for _ in range(3)]
    table = pa.Table.from_pylist([{**r, "pad": None} for r in good] + [{**_full_segments(pad), "id": "big-group"}])
    pq.write_table(table, d / "big.parquet", row_group_size=3)
    expect += [_keep("big.parquet", i + 1, r) for i, r in enumerate(good)]
    expect.append(_reject("big.parquet", 4, "row_group_too_large", "bytes uncompressed, more than data.max_file_bytes"))


def _write_embedded(d: Path, expect: list[dict]) -> None:
    """Parquet with image bytes inline: a good image and a pixel bomb."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    buf = io.BytesIO()
    Image.new("RGB", (40, 32), "navy").save(buf, "PNG")
    embedded = [{"id": "embedded-good", "domain": "vqa", "instruction": "What colour is it?",
                 "input": [{"type": "image", "image": {"bytes": buf.getvalue(), "path": None}}],
                 "output": [{"type": "text", "image": None, "text": "Navy."}]},
                {"id": "embedded-bomb", "domain": "vqa", "instruction": "And this one?",
                 "input": [{"type": "image", "image": {"bytes": declared_png(3000, 3000, rows=3000), "path": None}}],
                 "output": [{"type": "text", "image": None, "text": "Black."}]}]
    pq.write_table(pa.Table.from_pylist(embedded), d / "embedded.parquet")
    expect += [_keep("embedded.parquet", 1, embedded[0]) | {"kind": "embedded_good"},
               _reject("embedded.parquet", 2, "embedded_pixel_bomb", "more than max_image_pixels", "image")]


def _keep(file: str, line: int, record: dict) -> dict:
    return {"file": file, "line": line, "kind": "good", "stage": "", "words": "", "id": record["id"]}


def _reject(file: str, line: int, kind: str, words: str, stage: str = "parse") -> dict:
    return {"file": file, "line": line, "kind": kind, "stage": stage, "words": words, "id": None}


def _full_segments(record: dict) -> dict:
    """Segments with all of type / text / image (null where unused), so that Arrow gives them one struct type."""
    if not isinstance(record.get("output"), list):
        return record
    def full(segs):
        return [{"type": s["type"], "text": s.get("text"), "image": s.get("image")} for s in segs]

    return {**record, "input": full(record.get("input", [])), "output": full(record["output"])}
