"""ShareGPT / LLaVA and LLaMA-Factory messages records: read without conversion, to the same shards as ours."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.dataset as pads
import pytest

from orchestrator.config import load_config
from orchestrator.data.formats import content_id
from orchestrator.data.pipeline import output_dir, preprocess
from orchestrator.data.sample import write_sample
from orchestrator.data.schema import SchemaError, to_record
from tests.helpers import draw, spec_for

TOKEN_COLUMNS = ["id", "domain", "input_ids", "labels", "image_layout", "n_tokens", "n_target_tokens"]


def shards(cfg, splits=("train", "val")) -> pa.Table:
    return pa.concat_tables([pads.dataset(f"{output_dir(cfg)}/split={s}", format="parquet").to_table(columns=TOKEN_COLUMNS)
                             for s in splits]).sort_by("id")


def test_sharegpt_and_messages_copies_of_the_sample_set_give_the_same_shards(tmp_path):
    """The sample set written natively, as ShareGPT and as messages (its parquet file with HF-datasets image
    structs, bytes embedded): identical token sequences, labels and image layouts, record by record."""
    tables, manifests = {}, {}
    for fmt in ("native", "sharegpt", "messages"):
        write_sample(tmp_path / fmt, per_domain=4, fmt=fmt)
        cfg = load_config(None, [f"data.source={tmp_path / fmt}", f"data.output={tmp_path / ('shards-' + fmt)}"])
        manifests[fmt] = preprocess(cfg, engine="local")
        tables[fmt] = shards(cfg)
    assert tables["native"].num_rows == 20 and manifests["native"]["outputs"]["rejected"] == 0
    assert tables["sharegpt"].equals(tables["native"]) and tables["messages"].equals(tables["native"])
    assert manifests["native"]["formats"] == {"placeholders": {"kept": 8, "rejected": 0},
                                              "segments": {"kept": 12, "rejected": 0}}
    assert manifests["messages"]["formats"] == {"messages": {"kept": 20, "rejected": 0}}
    import pyarrow.parquet as pq

    images = pq.read_table(tmp_path / "sharegpt" / "editing.parquet").column("images").to_pylist()
    assert all(len(r) == 2 and r[0]["bytes"][:4] == b"\x89PNG" for r in images)  # embedded, HF-datasets style


def _multi_turn(last_answer_separate: bool) -> dict:
    if last_answer_separate:  # ShareGPT, two answers
        turns = [{"from": "human", "value": "<image>What colour is the square?"}, {"from": "gpt", "value": "Red."},
                 {"from": "human", "value": "Now draw it blue."}, {"from": "gpt", "value": "<image>"}]
        return {"id": "conv", "conversations": turns, "image": ["red.png", "blue.png"]}
    # the same segments as messages, all in one answer (content parts): only the targets differ
    turns = [{"role": "user", "content": "<image>What colour is the square?"},
             {"role": "assistant", "content": [{"type": "text", "text": "Red."},
                                               {"type": "text", "text": "Now draw it blue."}, {"type": "image"}]}]
    return {"id": "conv", "messages": turns, "images": ["red.png", "blue.png"]}


def test_in_a_conversation_every_answer_is_a_target_and_user_turns_between_are_context(tmp_path):
    draw("red").save(tmp_path / "red.png")
    draw("blue").save(tmp_path / "blue.png")
    rec = to_record(_multi_turn(True), str(tmp_path))
    segments, targets = rec.segments()
    assert [s.text if not s.is_image else "IMG" for s in segments] == ["IMG", "What colour is the square?", "Red.",
                                                                    "Now draw it blue.", "IMG"]
    assert targets == [False, False, True, False, True] and rec.answer_images() == 1 and rec.format == "sharegpt"
    rows = {}
    for separate in (True, False):
        d = tmp_path / ("multi" if separate else "single")
        d.mkdir()
        for name in ("red.png", "blue.png"):
            (d / name).write_bytes((tmp_path / name).read_bytes())
        (d / "c.jsonl").write_text(json.dumps(_multi_turn(separate)) + "\n")
        cfg = load_config(None, [f"data.source={d}", f"data.output={d / 'out'}", "data.val_fraction=0"])
        assert preprocess(cfg, engine="local")["outputs"]["train"] == 1
        rows[separate] = shards(cfg, ("train",)).to_pylist()[0]
    multi, single = rows[True], rows[False]
    assert multi["input_ids"] == single["input_ids"]  # the same tokens ...
    differ = [i for i, (a, b) in enumerate(zip(multi["labels"], single["labels"])) if a != b]
    assert differ and all(multi["labels"][i] == -100 for i in differ)  # ... but the user turn is not trained on
    assert differ == list(range(differ[0], differ[-1] + 1))  # one run: the tokens of "Now draw it blue."
    text = spec_for("chameleon").tokenizer.decode([single["input_ids"][i] for i in differ])
    assert text.strip() == "Now draw it blue."


@pytest.mark.parametrize("record,reason", [
    ({"id": "a", "conversations": [{"from": "narrator", "value": "x"}]}, "must be one of"),
    ({"id": "a", "messages": [{"role": "user", "content": "hi"}]}, "no assistant turn"),
    ({"id": "a", "messages": [{"role": "assistant", "content": "hi"}, {"role": "user", "content": "and?"}]},
     "does not end with an assistant turn"),
    ({"id": "a", "messages": [{"role": "user", "content": "hi"}, {"role": "system", "content": "x"},
                              {"role": "assistant", "content": "yo"}]}, "system turn after"),
    ({"id": "a", "messages": [{"role": "assistant", "content": "hi"}], "images": ["x.png"]}, "have no <image> marker"),
    ({"id": "a", "messages": [{"role": "assistant", "content": "<image>"}]}, "more <image> markers than images"),
    ({"id": "a", "messages": [{"role": "assistant", "content": 42}]}, "text or a list of parts"),
    ({"id": "a", "messages": [{"role": "assistant", "content": [{"type": "video"}]}]}, "'text' or 'image'"),
    ({"id": "a", "conversations": []}, "non-empty list of turns"),
])
def test_malformed_conversations_are_schema_rejects_with_a_reason(record, reason):
    with pytest.raises(SchemaError, match=reason):
        to_record(record)


def test_content_parts_ids_and_a_required_format():
    parts = {"messages": [{"role": "system", "content": "Be brief."},
                          {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Name it."}]},
                          {"role": "assistant", "content": [{"type": "text", "text": "A square."}]}],
             "images": [{"bytes": b"\x89PNG...", "path": "a.png"}]}
    rec = to_record(parts)
    assert rec.instruction == "Be brief." and rec.input[0].image == b"\x89PNG..." and rec.output[0].text == "A square."
    assert rec.id == content_id(parts) == to_record(dict(parts)).id and rec.id.startswith("sha1-")  # stable
    with pytest.raises(SchemaError, match="a messages record, but data.format is sharegpt"):
        to_record(parts, fmt="sharegpt")
    assert to_record(parts, fmt="messages").format == "messages"
    with pytest.raises(SchemaError, match="'id' must be"):  # our own shapes still need their id
        to_record({"instruction": "x", "output": [{"type": "text", "text": "y"}]})


def test_data_format_rejects_other_shapes_and_the_manifest_counts_them(tmp_path):
    write_sample(tmp_path / "mixed", per_domain=2)  # native: segments + placeholders
    write_sample(tmp_path / "conv", per_domain=2, fmt="messages")
    for name in ("howto.jsonl", "vqa.jsonl"):
        (tmp_path / "mixed" / f"m-{name}").write_text((tmp_path / "conv" / name).read_text().replace('"id": "', '"id": "m-'))
    off = "data.filters.dedupe=false"
    cfg = load_config(None, [f"data.source={tmp_path / 'mixed'}", f"data.output={tmp_path / 'o1'}", off])
    auto = preprocess(cfg, engine="local")
    assert auto["formats"] == {"messages": {"kept": 4, "rejected": 0}, "placeholders": {"kept": 4, "rejected": 0},
                               "segments": {"kept": 6, "rejected": 0}}
    cfg = load_config(None, [f"data.source={tmp_path / 'mixed'}", f"data.output={tmp_path / 'o3'}"])
    deduped = preprocess(cfg, engine="local")  # the same records in two shapes are duplicates
    assert deduped["outputs"]["rejected"] == 4 and deduped["stages"]
    assert sum(v["kept"] for v in deduped["formats"].values()) == 10
    cfg = load_config(None, [f"data.source={tmp_path / 'mixed'}", f"data.output={tmp_path / 'o2'}", off,
                             "data.format=messages"])
    only = preprocess(cfg, engine="local")
    assert only["outputs"]["rejected"] == 10 and only["formats"]["segments"] == {"kept": 0, "rejected": 6}
    rejects = (tmp_path / "o2" / "chameleon" / "rejects.jsonl").read_text()
    assert "data.format is messages" in rejects
