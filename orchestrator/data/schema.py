"""LeafInstruct records: the accepted input shapes, parsed into one ``Record`` type.

Our own two shapes are below; ShareGPT / LLaVA conversations and LLaMA-Factory messages are read by
formats.py (``data.format``: auto detects each record's shape by its keys, or one shape is required).

(a) segment lists::

    {"id": "howto-1", "domain": "howto", "instruction": "...",
     "input":  [{"type": "text", "text": "..."}, {"type": "image", "image": "images/a.png"}],
     "output": [{"type": "text", "text": "..."}, {"type": "image", "image": "images/b.png"}]}

(b) placeholder style (InterleavedBench / LeafInstruct-like releases)::

    {"id": "story-1", "task_name": "storytelling", "instruction": "...",
     "context": "Once <image> then <image>", "output": "Later <image>",
     "images": ["a.png", "b.png", "c.png"]}          # one per <image> in instruction, context, output order
    # or "images" for instruction + context and "output_images" for the output's placeholders

An image is a path (relative to the data file), a URI (s3://, gs://, hf://, https://), or a dict with
encoded ``bytes`` (how parquet datasets often embed images). Schema errors raise ``SchemaError`` with a
reason that names the field. Every string is checked here: a lone UTF-16 surrogate (valid JSON as
"\\ud800", but not storable as UTF-8) anywhere, and control characters in ids, domains and image paths,
are schema errors, never a failure further on.
"""

from __future__ import annotations

import json
import os
import posixpath
import re
from dataclasses import dataclass, field

PLACEHOLDER = "<image>"
MAX_ID_CHARS = 256
_MAX_INT_ID = 10**MAX_ID_CHARS
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


class SchemaError(ValueError):
    """The record does not have a shape we accept; the message is the reject reason."""


@dataclass(frozen=True)
class Segment:
    """A text piece, or an image given by a resolved reference (path / URI) or by its encoded bytes."""

    kind: str  # "text" | "image"
    text: str = ""
    image: str | bytes = ""

    @property
    def is_image(self) -> bool:
        return self.kind == "image"


@dataclass(frozen=True)
class Record:
    id: str
    domain: str
    instruction: str
    input: tuple[Segment, ...]
    output: tuple[Segment, ...]
    extra: dict = field(default_factory=dict, compare=False)
    #: which output segments are trained on (empty: all). A multi-turn conversation's output holds every turn
    #: from the first answer on: the answers are targets, the user turns between them context
    output_targets: tuple[bool, ...] = ()
    format: str = field(default="segments", compare=False)  # the shape it was read from (formats.detect)

    def segments(self) -> tuple[list[Segment], list[bool]]:
        """(segments, targets): instruction + input (not trained on), then output (trained on, but for
        the context turns of a conversation)."""
        prompt = ([Segment("text", text=self.instruction)] if self.instruction else []) + list(self.input)
        targets = list(self.output_targets) if self.output_targets else [True] * len(self.output)
        return prompt + list(self.output), [False] * len(prompt) + targets

    def answer_images(self) -> int:
        """Images the record is trained to produce (in its target segments)."""
        targets = self.output_targets or (True,) * len(self.output)
        return sum(s.is_image and t for s, t in zip(self.output, targets))

    def images(self) -> list[Segment]:
        return [s for s in (*self.input, *self.output) if s.is_image]

    def texts(self) -> list[str]:
        return [self.instruction] + [s.text for s in (*self.input, *self.output) if not s.is_image]


def parse_json(raw: bytes | str | dict) -> dict:
    """Stage "parse": one line of JSONL (or an already-decoded parquet row) -> a JSON object."""
    if isinstance(raw, dict):
        return raw
    from .sources import Unreadable

    if isinstance(raw, Unreadable):
        raise SchemaError(str(raw))
    if isinstance(raw, bytes):
        try:
            raw = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise SchemaError(f"not UTF-8 ({e.reason} at byte {e.start})") from None
    try:
        obj = json.loads(raw)
    except json.JSONDecodeError as e:
        raise SchemaError(f"not valid JSON: {e.msg} at column {e.colno}") from None
    except RecursionError:
        raise SchemaError("not valid JSON: nested too deeply") from None
    except ValueError as e:  # an integer of more than 4300 digits
        raise SchemaError(f"not valid JSON: {str(e)[:120]}") from None
    return obj


def checked(value: str, where: str, control: bool = False) -> str:
    """A string Arrow can store (no lone surrogate); with ``control``, one without control characters too."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as e:
        raise SchemaError(f"{where} is not valid Unicode text (lone surrogate at character {e.start})") from None
    if control and (m := _CONTROL.search(value)):
        raise SchemaError(f"{where} holds a control character ({m.group()!r} at character {m.start()})")
    return value


def _show(value) -> str:
    """A bad value, short and safe to put in a reason (no huge or deeply nested repr)."""
    if isinstance(value, str):
        return repr(value[:80]) + ("..." if len(value) > 80 else "")
    if value is None or isinstance(value, (bool, int, float)):
        try:
            return repr(value)[:80]
        except ValueError:  # int -> str of more than 4300 digits
            return "a very large integer"
    return f"a {type(value).__name__}"


def resolve_ref(ref: str, base: str) -> str:
    """An image path relative to the data file's folder ``base`` -> a path or URI that can be opened."""
    if "://" in ref or os.path.isabs(ref) or not base:
        return ref
    if "://" in base:  # "../" never climbs out of the bucket (s3://bucket/...) or the root (file:///...)
        proto, rest = base.split("://", 1)
        bucket, _, key = rest.partition("/")
        return f"{proto}://{bucket}{posixpath.normpath(posixpath.join('/' + key, ref))}"
    return os.path.normpath(os.path.join(base, ref))


FORMATS = ("auto", "segments", "placeholders", "sharegpt", "messages")


def to_record(obj, base: str = "", fmt: str = "auto") -> Record:
    """Stage "schema": a JSON object in an accepted shape -> Record, or SchemaError(reason). ``fmt``: the
    shape required (data.format), or auto: each record's own, by its keys."""
    from .formats import CONVERSATIONS, content_id, conversation, detect

    if not isinstance(obj, dict):
        raise SchemaError(f"a record must be a JSON object, got {type(obj).__name__}")
    obj = {k: v for k, v in obj.items() if v is not None}  # parquet stores absent fields as null
    found = detect(obj)
    if fmt != "auto" and found is not None and found != fmt:
        raise SchemaError(f"a {found} record, but data.format is {fmt}")
    rid = obj.get("id")
    if rid is None and found in CONVERSATIONS:  # LLaMA-Factory and many ShareGPT sets carry no id
        rid = content_id(obj)
    if isinstance(rid, int) and not isinstance(rid, bool):
        rid = str(rid) if abs(rid) < _MAX_INT_ID else None  # (str() refuses ints of more than 4300 digits)
    if not isinstance(rid, str) or rid.strip() == "":
        raise SchemaError(f"'id' must be a non-empty string or integer, got {_show(obj.get('id'))}")
    if len(rid) > MAX_ID_CHARS:
        raise SchemaError(f"'id' is {len(rid)} characters (at most {MAX_ID_CHARS})")
    checked(rid, "'id'", control=True)
    name = "domain" if "domain" in obj else "task_name"
    domain = obj.get(name, "unknown")
    if not isinstance(domain, str) or not domain:
        raise SchemaError(f"'{name}' must be a non-empty string, got {_show(domain)}")
    checked(domain, f"'{name}'", control=True)
    instruction = obj.get("instruction", "")
    if not isinstance(instruction, str):
        raise SchemaError(f"'instruction' must be a string, got {type(instruction).__name__}")
    checked(instruction, "'instruction'")
    if found is None:
        raise SchemaError("neither shape: expected 'input'/'output' segment lists, 'context'/'output' text with "
                          "'images', 'conversations' (ShareGPT) or 'messages'")
    targets: tuple[bool, ...] = ()
    if found in CONVERSATIONS:
        instruction, inp, out, targets = conversation(obj, found, base)
    elif found == "segments":
        inp, out = _segment_list(obj, "input", base), _segment_list(obj, "output", base)
    else:
        instruction, inp, out = _placeholder_form(obj, instruction, base)
    if not out:
        raise SchemaError("'output' is empty: nothing to train on")
    targets = () if all(targets) else targets  # all trained on: as the native shapes say it
    return Record(rid, domain, instruction, tuple(inp), tuple(out), output_targets=targets, format=found)


def _segment_list(obj: dict, key: str, base: str) -> list[Segment]:
    items = obj.get(key, [])
    if not isinstance(items, list):
        raise SchemaError(f"'{key}' must be a list of segments, got {type(items).__name__}")
    return [_segment(item, f"{key}[{i}]", base) for i, item in enumerate(items)]


def _segment(item, where: str, base: str) -> Segment:
    if not isinstance(item, dict):
        raise SchemaError(f"{where} must be an object, got {type(item).__name__}")
    kind = item.get("type")
    if kind == "text":
        text = item.get("text")
        if not isinstance(text, str):
            raise SchemaError(f"{where}.text must be a string, got {type(text).__name__}")
        return Segment("text", text=checked(text, f"{where}.text"))
    if kind == "image":
        return Segment("image", image=_image_ref(item.get("image"), where + ".image", base))
    raise SchemaError(f"{where}.type must be 'text' or 'image', got {_show(kind)}")


def _image_ref(ref, where: str, base: str) -> str | bytes:
    if isinstance(ref, dict) and isinstance(ref.get("bytes"), (bytes, bytearray)) and ref["bytes"]:
        return bytes(ref["bytes"])
    if isinstance(ref, dict) and isinstance(ref.get("path"), str):
        ref = ref["path"]
    if not isinstance(ref, str) or not ref.strip():
        raise SchemaError(f"{where} must be a path, URI or {{'bytes': ...}}, got {type(ref).__name__}")
    return resolve_ref(checked(ref, where, control=True), base)


def _split_placeholders(text: str, images: list, where: str, base: str) -> list[Segment]:
    pieces = text.split(PLACEHOLDER)
    if len(pieces) - 1 > len(images):
        raise SchemaError(f"{where} has more {PLACEHOLDER} markers than images left ({len(images)})")
    out: list[Segment] = []
    for i, piece in enumerate(pieces):
        if piece.strip():
            out.append(Segment("text", text=piece.strip()))
        if i < len(pieces) - 1:
            out.append(Segment("image", image=_image_ref(images.pop(0), f"{where} image {i}", base)))
    return out


def _placeholder_form(obj: dict, instruction: str, base: str):
    images = obj.get("images", obj.get("image", []))
    images = [images] if isinstance(images, str) else images
    out_images = obj.get("output_images")
    for name, val in (("images", images), ("output_images", out_images)):
        if val is not None and not isinstance(val, list):
            raise SchemaError(f"'{name}' must be a list of image paths, got {type(val).__name__}")
    context, output = obj.get("context", obj.get("input", "")), obj.get("output", "")
    for name, val in (("context", context), ("output", output)):
        if not isinstance(val, str):
            raise SchemaError(f"'{name}' must be a string in the placeholder form, got {type(val).__name__}")
        checked(val, f"'{name}'")
    queue = list(images)
    instr = _split_placeholders(instruction, queue, "instruction", base)
    inp = _split_placeholders(context, queue, "context", base)
    if out_images is not None:
        if queue:
            raise SchemaError(f"{len(queue)} image(s) in 'images' have no {PLACEHOLDER} marker")
        queue = list(out_images)
    out = _split_placeholders(output, queue, "output", base)
    if queue:
        raise SchemaError(f"{len(queue)} image(s) have no {PLACEHOLDER} marker")
    # an instruction with images becomes the first input segments
    if any(s.is_image for s in instr):
        return "", instr + inp, out
    return " ".join(s.text for s in instr), inp, out
