"""Both record shapes parse into the same Record; schema errors name the field."""

import json

import pytest

from orchestrator.data.schema import Record, SchemaError, parse_json, resolve_ref, to_record

SEGMENTS = {
    "id": 7, "domain": "story", "instruction": "Continue.",
    "input": [{"type": "text", "text": "A ball."}, {"type": "image", "image": "img/a.png"}],
    "output": [{"type": "text", "text": "It rolls."}, {"type": "image", "image": "img/b.png"}],
}
PLACEHOLDERS = {"id": "7", "task_name": "story", "instruction": "Continue.", "context": "A ball. <image>",
                "output": "It rolls. <image>", "images": ["img/a.png", "img/b.png"]}


def test_both_shapes_give_the_same_record():
    a, b = to_record(SEGMENTS, "/data"), to_record(PLACEHOLDERS, "/data")
    assert a == b
    segs, targets = a.segments()
    assert [s.kind for s in segs] == ["text", "text", "image", "text", "image"] and targets == [False] * 3 + [True] * 2
    assert segs[2].image == "/data/img/a.png"


def test_output_images_list_and_image_in_instruction():
    r = to_record({"id": "g", "instruction": "Draw <image> bigger", "context": "", "output": "<image>",
                   "images": ["s.png"], "output_images": ["o.png"]}, "/d")
    assert r.instruction == "" and [s.kind for s in r.input] == ["text", "image", "text"]
    assert r.output[0].image == "/d/o.png"


def test_refs_resolve_against_the_data_file_folder():
    assert resolve_ref("img/a.png", "s3://bucket/leaf/train") == "s3://bucket/leaf/train/img/a.png"
    assert resolve_ref("../img/a.png", "gs://b/leaf/x") == "gs://b/leaf/img/a.png"
    assert resolve_ref("/abs/a.png", "/data") == "/abs/a.png"
    assert resolve_ref("https://host/a.png", "/data") == "https://host/a.png"


def test_inline_image_bytes():
    r = to_record({"id": "x", "output": [{"type": "image", "image": {"bytes": b"\x89PNG...", "path": None}}]})
    assert r.output[0].image == b"\x89PNG..."


@pytest.mark.parametrize(
    "record, words",
    [
        ([1, 2], "JSON object"),
        ({"output": [{"type": "text", "text": "x"}]}, "'id'"),
        ({"id": "", "output": [{"type": "text", "text": "x"}]}, "'id'"),
        ({"id": "a", "output": []}, "'output' is empty"),
        ({"id": "a", "output": [{"type": "video"}]}, r"output\[0\]\.type"),
        ({"id": "a", "output": [{"type": "text", "text": 3}]}, r"output\[0\]\.text"),
        ({"id": "a", "output": [{"type": "image"}]}, r"output\[0\]\.image"),
        ({"id": "a", "input": "x", "output": []}, "'input' must be a list"),
        ({"id": "a", "context": "<image> <image>", "output": "x", "images": ["a.png"]}, "more <image> markers"),
        ({"id": "a", "context": "<image>", "output": "x", "images": ["a.png", "b.png"]}, "no <image> marker"),
        ({"id": "a", "instruction": 5, "output": [{"type": "text", "text": "x"}]}, "'instruction'"),
        ({"id": "a", "domain": 3, "output": [{"type": "text", "text": "x"}]}, "'domain'"),
        ({"id": "a", "foo": 1}, "neither shape"),
    ],
)
def test_schema_errors(record, words):
    with pytest.raises(SchemaError, match=words):
        to_record(record)


def test_parse_errors():
    assert parse_json(json.dumps(PLACEHOLDERS).encode()) == PLACEHOLDERS
    with pytest.raises(SchemaError, match="not valid JSON"):
        parse_json(b'{"id": 1,')
    with pytest.raises(SchemaError, match="not UTF-8"):
        parse_json(b'{"id": "\xff"}')
    assert isinstance(to_record(SEGMENTS), Record)


def test_url_joins_stay_inside_their_bucket_or_root():
    assert resolve_ref("img/a.png", "file:///data/set") == "file:///data/set/img/a.png"
    assert resolve_ref("../img/a.png", "s3://bucket") == "s3://bucket/img/a.png"
    assert resolve_ref("../../a.png", "s3://bucket/x") == "s3://bucket/a.png"


S = "\ud800"  # a lone surrogate: valid JSON as "\\ud800", not storable as UTF-8


@pytest.mark.parametrize(
    "record, words",
    [
        ({**SEGMENTS, "id": "a" + S}, "'id' is not valid Unicode text (lone surrogate at character 1)"),
        ({**SEGMENTS, "domain": S}, "'domain' is not valid Unicode text (lone surrogate at character 0)"),
        ({**PLACEHOLDERS, "task_name": "st" + S}, "'task_name' is not valid Unicode"),
        ({**SEGMENTS, "instruction": "Go" + S}, "'instruction' is not valid Unicode"),
        ({**PLACEHOLDERS, "context": S + "<image>"}, "'context' is not valid Unicode"),
        ({**PLACEHOLDERS, "output": "x <image>" + S}, "'output' is not valid Unicode"),
        ({**SEGMENTS, "output": [{"type": "text", "text": S}]}, "output[0].text is not valid Unicode"),
        ({**SEGMENTS, "input": [{"type": "image", "image": "a" + S + ".png"}]}, "input[0].image is not valid Unicode"),
        ({**SEGMENTS, "input": [{"type": "image", "image": {"path": S}}]}, "input[0].image is not valid Unicode"),
        ({**PLACEHOLDERS, "images": ["a.png", "b" + S]}, "output image 0 is not valid Unicode"),
        ({**SEGMENTS, "id": "a\x00b"}, "'id' holds a control character ('\\x00' at character 1)"),
        ({**SEGMENTS, "id": "\x1b[31mred"}, "'id' holds a control character"),
        ({**SEGMENTS, "domain": "vqa\n"}, "'domain' holds a control character"),
        ({**SEGMENTS, "input": [{"type": "image", "image": "a.png\x00"}]}, "input[0].image holds a control character"),
        ({**SEGMENTS, "id": 10**5000}, "'id' must be a non-empty string or integer, got a very large integer"),
        ({**SEGMENTS, "output": [{"type": ["x"] * 10**5}]}, "got a list"),  # no huge repr in a reason
    ],
)
def test_every_string_is_checked(record, words):
    with pytest.raises(SchemaError) as e:
        to_record(record, "/data")
    assert words in str(e.value) and len(str(e.value)) < 300
    str(e.value).encode("utf-8")  # the reason itself is storable


def test_text_may_hold_newlines_and_surrogate_pairs():
    rec = to_record({**SEGMENTS, "output": [{"type": "text", "text": "line one\nline two \U0001F600"}]})
    assert rec.output[0].text.endswith("\U0001F600")
    assert to_record(json.loads('{"id": "p", "output": [{"type": "text", "text": "\\ud83d\\ude00"}]}')).output[0].text \
        == "\U0001F600"


def test_deep_nesting_and_huge_numbers_are_parse_errors():
    with pytest.raises(SchemaError, match="nested too deeply"):
        parse_json(b'{"id": "d", "x": ' + b"[" * 100_000 + b"]" * 100_000 + b"}")
    with pytest.raises(SchemaError, match="not valid JSON"):
        parse_json(b'{"id": ' + b"9" * 5000 + b"}")
