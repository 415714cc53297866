"""Bad-record generator for tests: good records mixed with malformed ones of many kinds, with expectations.

``write_fuzz(dir)`` writes ``fuzz.jsonl`` (+ images) and returns, per line, the kind of record and the
stage that must reject it ("" for records that must reach the shards). The expectations hold under
``FUZZ_LIMITS`` (config overrides the test applies). The hostile set, records that attack the reader, is
in ``hostile.py``.
"""

from __future__ import annotations

import copy
import json
import os
import random
from pathlib import Path

from PIL import Image

from .formats import to_conversation

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

    def conversation(self, fmt: str | None = None, domain: str | None = None) -> dict:
        """A fresh record as a ShareGPT or messages conversation (formats.py)."""
        return to_conversation(self.fresh(domain), fmt or self.rng.choice(["sharegpt", "messages"]))

    # each kind: () -> (line bytes, expected stage, id or None)
    def k_good(self):  # in any of the four shapes
        r = self.fresh() if self.rng.random() < 0.6 else self.conversation()
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

    def k_conversation_unknown_role(self):
        r = self.conversation("sharegpt")
        r["conversations"][-1]["from"] = "narrator"
        return r, "schema"

    def k_conversation_ends_with_user(self):
        r = self.conversation("messages")
        r["messages"].append({"role": "user", "content": "And then?"})
        return r, "schema"

    def k_conversation_unmarked_image(self):
        r = self.conversation(domain="vqa")
        r["images"].append(r["images"][0])  # one image more than <image> markers
        return r, "schema"

    def k_conversation_bad_content(self):
        r = self.conversation("messages")
        r["messages"][-1]["content"] = {"text": 42}
        return r, "schema"

    def k_conversation_missing_image(self):
        r = self.conversation("sharegpt", domain="vqa")
        r["images"] = [f"images/{self.name}-bad/missing-{self.n}.png"]
        return r, "image"

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
