"""Property: the schema stage raises nothing but SchemaError on any JSON-like value (lone surrogates, control
characters, odd types and nesting included), and the row a record leads to always builds as an Arrow table."""

import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from orchestrator.config import FilterSection
from orchestrator.data.schema import Record, SchemaError, to_record
from orchestrator.data.shards import VALIDATED_SCHEMA
from orchestrator.data.sources import Chunk
from orchestrator.data.validate import validate_record

ANY_CHAR = st.characters(exclude_categories=())  # surrogates (category Cs) included
text = st.one_of(
    st.text(ANY_CHAR, max_size=12),
    st.lists(st.sampled_from(["<image>", "\ud800", "\udfff", "\x00", "\n", "a.png", "../x.png", "::", "file://",
                              "http://127.0.0.1:9/", " ", "é"]), max_size=5).map("".join),
)
scalar = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True), text)
json_like = st.recursive(scalar, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(text, inner, max_size=4),
                         max_leaves=12)
segment = st.fixed_dictionaries({}, optional={
    "type": st.sampled_from(["text", "image", "video"]) | json_like,
    "text": text | json_like,
    "image": text | st.fixed_dictionaries({}, optional={"path": text | json_like, "bytes": st.binary(max_size=8)}),
})
field = st.one_of(text, json_like, st.lists(segment, max_size=4), st.lists(text, max_size=4))
record = st.fixed_dictionaries({}, optional={
    k: field for k in ("id", "domain", "task_name", "instruction", "input", "output", "context", "images",
                       "output_images", "image")
}) | json_like

SETTINGS = settings(max_examples=200, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


@pytest.fixture(scope="module")
def chunk(tmp_path_factory):
    return Chunk(str(tmp_path_factory.mktemp("prop") / "d.jsonl"), 0, "lines")


@SETTINGS
@given(obj=record)
def test_to_record_raises_only_schema_errors(obj, chunk):
    try:
        rec = to_record(obj, chunk.base)
    except SchemaError as e:
        str(e).encode("utf-8")  # a reason is always storable
        return
    assert isinstance(rec, Record)
    for t in rec.texts() + [rec.id, rec.domain] + [s.image for s in rec.images() if isinstance(s.image, str)]:
        t.encode("utf-8")


@SETTINGS
@given(obj=record)
def test_the_row_of_any_record_builds(obj, chunk):
    row = validate_record(obj, chunk, 1, FilterSection(), {}, 0.0)
    table = pa.Table.from_pylist([row], schema=VALIDATED_SCHEMA)
    assert table.num_rows == 1 and (row["stage"] != "") == (row["split"] == "rejected")
