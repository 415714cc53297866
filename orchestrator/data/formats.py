"""Conversation formats most multimodal instruction sets ship in, read as Records without a conversion step.

- ``sharegpt`` (ShareGPT / LLaVA, Lumina-mGPT's training format)::

    {"id": "...", "conversations": [{"from": "human", "value": "<image>\\nWhat is shown?"},
                                    {"from": "gpt", "value": "A red square."}], "image": "a.png"}

- ``messages`` (LLaMA-Factory; OpenAI-style)::

    {"messages": [{"role": "system", "content": "..."}, {"role": "user", "content": "<image>Edit it"},
                  {"role": "assistant", "content": "<image>"}], "images": ["a.png", "b.png"]}

  ``content`` may also be a list of parts, ``{"type": "text", "text": ...}`` and ``{"type": "image"}``
  (the next entry of ``images``, or its own ``image`` reference).

Images: ``image`` / ``images`` (a path, or a list), one per ``<image>`` marker in turn order; an entry
may be a path or URI, or a HF-datasets image struct ``{"bytes": ..., "path": ...}`` (how parquet exports
embed them). Roles: a top-level ``system`` (LLaMA-Factory) or ``instruction``, and system turns at the
start, become the instruction; every turn before the first
assistant turn is context; from there on every assistant turn is a target and the user turns between
them are context again. No chat template is applied (as for the native shapes), so a single-turn record
gives exactly the tokens of the same record in the native ``segments`` shape (text is stripped at its
edges, as the placeholder shape does). A multi-turn conversation is one sequence of its turns' segments,
with no separator or end-of-turn token between them and EOS after the last answer only. A record without ``id``
gets one from its content (``sha1-`` + 16 hex digits), so the same record always lands in the same split.
"""

from __future__ import annotations

import hashlib
import json

from .schema import PLACEHOLDER, Segment, SchemaError, _image_ref, _show, _split_placeholders, checked

CONVERSATIONS = {"sharegpt": ("conversations", "from", "value"), "messages": ("messages", "role", "content")}
SYSTEM, USER, ASSISTANT = "system", "user", "assistant"
ROLES = {"system": SYSTEM, "human": USER, "user": USER, "gpt": ASSISTANT, "assistant": ASSISTANT, "model": ASSISTANT,
         "bot": ASSISTANT}


def detect(obj: dict) -> str | None:
    """A record's format by its keys (None when it has none of them)."""
    for fmt, (key, _, _) in CONVERSATIONS.items():
        if key in obj:
            return fmt
    if isinstance(obj.get("output"), list) or isinstance(obj.get("input"), list):
        return "segments"
    if "context" in obj or isinstance(obj.get("output"), str) or isinstance(obj.get("input"), str):
        return "placeholders"
    return None


def content_id(obj: dict) -> str:
    """A stable id for a record that has none: a hash of its content."""
    blob = json.dumps(obj, sort_keys=True, ensure_ascii=False, default=lambda b: hashlib.sha1(b).hexdigest())
    return "sha1-" + hashlib.sha1(blob.encode("utf-8", "surrogatepass")).hexdigest()[:16]


def _image_list(obj: dict) -> list:
    images = obj.get("images", obj.get("image", []))
    if isinstance(images, (str, dict)):
        images = [images]
    if not isinstance(images, list):
        raise SchemaError(f"'images' must be a list of images, got {type(images).__name__}")
    return list(images)


def _turn_segments(content, queue: list, where: str, base: str) -> list[Segment]:
    if isinstance(content, str):
        return _split_placeholders(checked(content, where), queue, where, base)
    if not isinstance(content, list):
        raise SchemaError(f"{where} must be text or a list of parts, got {type(content).__name__}")
    out: list[Segment] = []
    for j, part in enumerate(content):
        at = f"{where}[{j}]"
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text":
            if not isinstance(part.get("text"), str):
                raise SchemaError(f"{at}.text must be a string")
            out += _split_placeholders(checked(part["text"], f"{at}.text"), queue, at, base)
        elif kind == "image":
            if "image" in part:
                out.append(Segment("image", image=_image_ref(part["image"], f"{at}.image", base)))
            elif queue:
                out.append(Segment("image", image=_image_ref(queue.pop(0), f"{at} image", base)))
            else:
                raise SchemaError(f"{at} is an image part but no image is left in 'images'")
        else:
            raise SchemaError(f"{at}.type must be 'text' or 'image', got {_show(kind)}")
    return out


def conversation(obj: dict, fmt: str, base: str) -> tuple[str, list[Segment], list[Segment], tuple[bool, ...]]:
    """-> (instruction, input, output, output_targets) of a sharegpt / messages record."""
    key, role_key, text_key = CONVERSATIONS[fmt]
    turns = obj.get(key)
    if not isinstance(turns, list) or not turns:
        raise SchemaError(f"'{key}' must be a non-empty list of turns")
    queue = _image_list(obj)
    system = [checked(obj[k], f"'{k}'").strip() for k in ("system", "instruction") if isinstance(obj.get(k), str)]
    inp: list[Segment] = []
    out: list[Segment] = []
    targets: list[bool] = []
    for i, turn in enumerate(turns):
        where = f"{key}[{i}]"
        if not isinstance(turn, dict):
            raise SchemaError(f"{where} must be an object, got {type(turn).__name__}")
        role = ROLES.get(turn.get(role_key)) if isinstance(turn.get(role_key), str) else None
        if role is None:
            raise SchemaError(f"{where}.{role_key} must be one of {sorted(ROLES)}, got {_show(turn.get(role_key))}")
        if role == SYSTEM:
            if inp or out:
                raise SchemaError(f"{where}: a system turn after the conversation started")
            if not isinstance(turn.get(text_key), str):
                raise SchemaError(f"{where}.{text_key} must be text")
            system.append(checked(turn[text_key], f"{where}.{text_key}").strip())
            continue
        segments = _turn_segments(turn.get(text_key), queue, f"{where}.{text_key}", base)
        if role == ASSISTANT or out:
            out += segments
            targets += [role == ASSISTANT] * len(segments)
        else:
            inp += segments
    if queue:
        raise SchemaError(f"{len(queue)} image(s) in 'images' have no {PLACEHOLDER} marker")
    if not any(targets):
        raise SchemaError(f"no assistant turn with content in '{key}': nothing to train on")
    if not targets[-1]:  # user turns after the last answer: nothing follows them to learn
        raise SchemaError(f"'{key}' does not end with an assistant turn with content")
    return "\n".join(s for s in system if s), inp, out, tuple(targets)


def to_conversation(record: dict, fmt: str) -> dict:
    """A native record (either shape, image references as written) -> the same record in ``fmt`` (the sample
    generator's copies): instruction as a system turn, input as the user turn, output as the answer."""
    from .schema import to_record

    rec = to_record(record)
    images: list = []

    def text_of(segments) -> str:
        parts = []
        for s in segments:
            if s.is_image:
                images.append(s.image)
                parts.append(PLACEHOLDER)
            else:
                parts.append(s.text)
        return "".join(parts)

    key, role_key, text_key = CONVERSATIONS[fmt]
    names = {"sharegpt": ("system", "human", "gpt"), "messages": ("system", "user", "assistant")}[fmt]
    turns = ([{role_key: names[0], text_key: rec.instruction}] if rec.instruction else [])
    turns += [{role_key: names[1], text_key: text_of(rec.input)}, {role_key: names[2], text_key: text_of(rec.output)}]
    return {"id": rec.id, "domain": rec.domain, key: turns, "images": images}
