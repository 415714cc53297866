"""Bad-record generator for tests: good records mixed with malformed ones of many kinds, with expectations.

``write_fuzz(dir)`` writes ``fuzz.jsonl`` (+ images) and returns, per line, the kind of record and the
stage that must reject it ("" for records that must reach the shards). The expectations hold under
``FUZZ_LIMITS`` (config overrides the test applies).

``write_hostile(dir, canary)`` writes the hostile set: records that attack the reader rather than fail the
schema (lone surrogates in every string field, control characters, paths and symlinks out of the roots,
FIFOs, sockets, file:// / http:// / fsspec-chain references, 5,000 images, pixel and gzip bombs, huge lines,
deep nesting, oversized arrays and row groups), mixed with good records over JSONL, .jsonl.gz, a JSON array
and parquet; expectations hold under ``HOSTILE_LIMITS``.
"""

from __future__ import annotations

import copy
import json
import os
import random
from pathlib import Path

from PIL import Image

from .sample import DOMAINS, MAKERS, _i, _t, _Writer

FUZZ_LIMITS = [
    "data.max_seq_len=1024", "data.filters.max_text_chars=4000", "data.filters.max_images=8",
    "data.filters.min_image_side=16", "data.filters.max_image_pixels=1000000", "data.chunk_bytes=65536",
]


def _noise_png(rng: random.Random, size=(64, 64)) -> bytes:
    import io

    im = Image.frombytes("RGB", size, bytes(rng.getrandbits(8) for _ in range(size[0] * size[1] * 3)))
    buf = io.BytesIO()
    im.save(buf, "PNG")
    return buf.getvalue()


class _Fuzz:
    def __init__(self, root: Path, seed: int, name: str = "fuzz"):
        self.root, self.rng, self.name = root, random.Random(f"{name}-{seed}"), name
        self.w = {d: _Writer(root, f"{name}-{d}") for d in DOMAINS}
        self.bad = root / "images" / f"{name}-bad"
        self.bad.mkdir(parents=True, exist_ok=True)
        self.good: list[dict] = []
        self.n = 0

    def fresh(self, domain: str | None = None) -> dict:
        domain = domain or self.rng.choice(DOMAINS)
        self.n += 1
        return MAKERS[domain](self.rng, self.w[domain], f"{self.name}-{domain}-{self.n:05d}")

    def file(self, name: str, data: bytes) -> str:
        (self.bad / name).write_bytes(data)
        return f"images/{self.name}-bad/{name}"

    def with_output_image(self, path: str) -> dict:
        r = self.fresh("vqa")
        r["output"] = [_t("Here it is:"), _i(path)]
        return r

    # each kind: () -> (line bytes, expected stage, id or None)
    def k_good(self):
        r = self.fresh()
        self.good.append(r)
        return r, ""

    def k_truncated_json(self):
        text = json.dumps(self.fresh())
        return text[: len(text) // 2].encode(), "parse"

    def k_not_utf8(self):
        return b'{"id": "bad-\xff\xfe", "output": []}', "parse"

    def k_not_object(self):
        return self.rng.choice([b"[1, 2, 3]", b"42", b'"a string"', b"null"]), "schema"

    def k_missing_id(self):
        r = self.fresh()
        r.pop("id")
        return r, "schema"

    def k_empty_output(self):
        r = self.fresh("howto")
        r["output"] = []
        return r, "schema"

    def k_bad_segment_type(self):
        r = self.fresh("howto")
        r["output"][0]["type"] = "video"
        return r, "schema"

    def k_placeholder_mismatch(self):
        r = self.fresh("storytelling")
        r["images"].append(r["images"][0])
        return r, "schema"

    def k_missing_image(self):
        return self.with_output_image(f"images/{self.name}-bad/missing-{self.n}.png"), "image"

    def k_corrupt_image(self):
        return self.with_output_image(self.file(f"corrupt-{self.n}.png", os.urandom(200))), "image"

    def k_truncated_image(self):
        data = _noise_png(self.rng)
        return self.with_output_image(self.file(f"truncated-{self.n}.png", data[: len(data) * 3 // 5])), "image"

    def k_zero_size_image(self):
        return self.with_output_image(self.file(f"empty-{self.n}.png", b"")), "image"

    def shared_image(self, name: str, size: tuple[int, int], color: str) -> str:
        """A plain image written once and referenced by every record of its kind."""
        if not (self.bad / name).exists():
            Image.new("RGB", size, color).save(self.bad / name)
        return f"images/{self.name}-bad/{name}"

    def k_huge_image(self):
        return self.with_output_image(self.shared_image("huge.png", (1200, 1000), "white")), "image"

    def k_text_too_long(self):
        r = self.fresh("vqa")
        r["instruction"] = "why " * 1250
        return r, "bounds"

    def k_too_many_images(self):
        r = self.fresh("howto")
        extra = [self.fresh("generation")["output_images"][0] for _ in range(6)]
        r["output"] += [_i(p) for p in extra]
        return r, "bounds"

    def k_tiny_image(self):
        return self.with_output_image(self.shared_image("tiny.png", (8, 8), "red")), "bounds"

    def k_duplicate_image_in_record(self):
        r = self.fresh("howto")
        r["output"][3] = copy.deepcopy(r["output"][1])  # step 2 shows step 1's picture again
        return r, "image_dedupe"

    def k_duplicate_content(self):
        r = copy.deepcopy(self.rng.choice(self.good))
        self.n += 1
        r["id"] = f"fuzz-copy-{self.n:05d}"
        return r, "dedupe"

    def k_reused_id(self):
        r = self.fresh()
        r["id"] = self.rng.choice(self.good)["id"]
        return r, "dedupe"

    def k_prompt_too_long(self):
        r = self.fresh("vqa")
        r["instruction"] = "Look closely. " * 110  # 1540 characters: inside the text bound, past max_seq_len
        return r, "truncate"

    def k_long_output(self):  # good, but only a prefix of the answer fits: kept with trailing segments dropped
        r = self.fresh("howto")
        r["output"] = [_t("a" * 350), r["output"][1], _t("b" * 350), r["output"][3], _t("c" * 350), r["output"][5]]
        self.good.append(r)
        return r, ""


BAD_KINDS = [k[2:] for k in vars(_Fuzz) if k.startswith("k_") and k not in ("k_good", "k_long_output")]


def write_fuzz(out_dir: str | Path, n_bad: int = 1000, n_good: int = 300, seed: int = 0) -> tuple[Path, list[dict]]:
    """fuzz.jsonl with n_bad malformed records (every kind in BAD_KINDS) among n_good good ones.

    Returns (path, [{"line", "kind", "stage", "id"}]); stage "" means the record must be kept.
    """
    root = Path(out_dir)
    fz = _Fuzz(root, seed)
    plan = ["good"] * 5 + [BAD_KINDS[i % len(BAD_KINDS)] for i in range(n_bad)] + ["good"] * (n_good - 5 - 20) + ["long_output"] * 20
    head, rest = plan[:5], plan[5:]
    fz.rng.shuffle(rest)
    lines, expect = [], []
    for kind in head + rest:
        record, stage = getattr(fz, f"k_{kind}")()
        line = record if isinstance(record, bytes) else json.dumps(record).encode()
        lines.append(line)
        rid = record.get("id") if isinstance(record, dict) else None
        expect.append({"line": len(lines), "kind": kind, "stage": stage, "id": rid})
    path = root / "fuzz.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path, expect


# ---- the hostile set: inputs that attack the reader rather than fail the schema ---------------------------

#: config overrides the hostile set's expectations hold under (on top of FUZZ_LIMITS)
HOSTILE_LIMITS = [*FUZZ_LIMITS, "data.max_record_bytes=1048576", "data.max_file_bytes=4194304"]
_RECORD_BYTES, _FILE_BYTES = 2**20, 4 * 2**20
_SURROGATE = "\ud800"


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    import struct
    import zlib

    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def declared_png(width: int, height: int, rows: int = 1) -> bytes:
    """A PNG whose header declares width x height RGB pixels, with ``rows`` rows of zeros actually compressed
    (a pixel bomb: tiny on disk, width * height * 3 bytes once decoded)."""
    import struct
    import zlib

    z = zlib.compressobj(9)
    idat = b"".join(z.compress(b"\0" * (1 + 3 * width)) for _ in range(rows)) + z.flush()
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + _png_chunk(b"IDAT", idat) + _png_chunk(b"IEND", b""))


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
    import gzip

    import pyarrow as pa
    import pyarrow.parquet as pq

    hz = _Hostile(Path(out_dir), canary, seed)
    expect: list[dict] = []

    def build(name: str, kinds: list[str]) -> list:
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

    def line(r) -> bytes:
        return r if isinstance(r, bytes) else json.dumps(r).encode()  # lone surrogates become \\ud800 escapes

    d = hz.data
    (d / "hostile.jsonl").write_bytes(b"\n".join(line(r) for r in build("hostile.jsonl", _JSON_KINDS)) + b"\n")
    gz = b"\n".join(line(r) for r in build("hostile.jsonl.gz", _GZ_KINDS))
    (d / "hostile.jsonl.gz").write_bytes(gzip.compress(gz))
    (d / "hostile.json").write_text(json.dumps(build("hostile.json", _ARRAY_KINDS), indent=1))
    rows = build("hostile.parquet", _PARQUET_KINDS)
    pq.write_table(pa.Table.from_pylist([_full_segments(r) for r in rows]), d / "hostile.parquet", row_group_size=7)

    # whole-file limits: the parts before them are kept, the part over them is one reject
    good = [hz.h_good()[0] for _ in range(2)]
    member = gzip.compress(b"a" * 2**24, 9)  # 16 MiB of one endless line per member, 512 members: 8 GiB unpacked
    head = gzip.compress(b"\n".join(line(r) for r in good) + b'\n{"id": "bomb", "output": "')
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

    import io

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
    return d, expect


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
