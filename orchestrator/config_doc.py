"""docs/configuration.md, generated from the run config schema: every key, its type, default and meaning.

The meaning of a key is the ``#:`` comment above its field in its section (orchestrator/sections/), or the
``#`` comment after it.
``python -m orchestrator.config_doc docs/configuration.md`` (``make docs``) rewrites the file; a test fails
when it is stale, or when a key has no meaning.
"""

from __future__ import annotations

import inspect
import re
import sys
import textwrap
import typing
from pathlib import Path

from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from . import config

HEADER = """# Configuration reference

Generated from the schema (`orchestrator/config.py` and `orchestrator/sections/`) by `make docs` (`python -m orchestrator.config_doc docs/configuration.md`);
a test fails when this file is stale. Set any key in a run config YAML or with `--set section.key=value`
(YAML-parsed). Search spaces (docs/sweeps.md) search over the same dotted keys.
"""

_FIELD = re.compile(r"^    (\w+): ")


def field_comments(cls: type) -> dict[str, str]:
    """{field: meaning} from the comments of ``cls``'s own source lines."""
    out: dict[str, str] = {}
    above: list[str] = []
    for line in textwrap.dedent(inspect.getsource(cls)).splitlines():
        stripped = line.strip()
        if stripped.startswith("#:"):
            above.append(stripped[2:].strip())
            continue
        m = _FIELD.match(line)
        if m and "(" not in m.group(1):
            trailing = line.split("  # ", 1)[1].strip() if "  # " in line else ""
            out[m.group(1)] = " ".join(above + ([trailing] if trailing else []))
        above = []
    return out


def _type_name(annotation) -> str:
    origin = typing.get_origin(annotation)
    if origin is typing.Literal:
        return " \\| ".join(f"`{a}`" for a in typing.get_args(annotation))
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        return " or ".join(_type_name(a) for a in typing.get_args(annotation))
    if origin is not None:
        args = ", ".join(_type_name(a) for a in typing.get_args(annotation))
        return f"{getattr(origin, '__name__', str(origin))}[{args}]"
    if annotation is type(None):
        return "null"
    return getattr(annotation, "__name__", str(annotation))


def _bounds(field) -> str:
    parts = []
    for m in field.metadata:
        for attr, sym in (("ge", "≥"), ("gt", ">"), ("le", "≤"), ("lt", "<"), ("min_length", "length ≥")):
            if getattr(m, attr, None) is not None:
                parts.append(f"{sym} {getattr(m, attr)}")
        if getattr(m, "pattern", None):
            parts.append("pattern `" + m.pattern.replace("|", "\\|") + "`")
    return ", ".join(parts)


def _default(field) -> str:
    value = field.default
    if value is PydanticUndefined and field.default_factory is not None:
        value = field.default_factory()
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, tuple):
        return str(list(value))
    return repr(value)


def rows(cls: type[BaseModel], prefix: str) -> list[tuple[str, str, str, str]]:
    """(key, type, default, meaning) for every leaf key under ``cls``, nested sections flattened."""
    meaning = field_comments(getattr(cls, "doc_source", cls))
    out = []
    for name, field in cls.model_fields.items():
        key = f"{prefix}.{name}"
        if isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel):
            out += rows(field.annotation, key)
            continue
        kind = _type_name(field.annotation)
        bounds = _bounds(field)
        out.append((key, kind + (f" ({bounds})" if bounds else ""), _default(field), meaning.get(name, "")))
    return out


def render() -> str:
    parts = [HEADER]
    for name, field in config.RunConfig.model_fields.items():
        section = field.annotation
        parts.append(f"## `{name}`\n")
        doc = inspect.getdoc(section)
        if doc and section.__doc__ not in (config.Section.__doc__, BaseModel.__doc__):
            parts.append(doc.replace("\n", " ") + "\n")
        parts.append("| key | type | default | meaning |\n|---|---|---|---|")
        for key, kind, default, meaning in rows(section, name):
            cell = meaning.replace("|", "\\|")
            parts.append(f"| `{key}` | {kind} | `{default}` | {cell} |")
        parts.append("")
    return "\n".join(parts)


def main(argv: list[str]) -> int:
    text = render()
    if not argv:
        sys.stdout.write(text)
        return 0
    Path(argv[0]).write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
