"""Filter stages and the tokenize/truncate stage on single records (no Ray)."""

import io

import pytest
from PIL import Image, ImageDraw

from orchestrator.config import FilterSection
from orchestrator.data.dedupe import order_of
from orchestrator.data.filters import Reject, check_bounds, check_near_duplicates, check_record_bounds, run_stage
from orchestrator.data.schema import Record, Segment
from orchestrator.data.sources import Chunk
from orchestrator.data.tokenize import Tokenize, fit_pieces
from orchestrator.data.validate import validate_record
from tests.helpers import BACKBONE_NAMES


def picture(color, box=(10, 10, 40, 40), size=(64, 64)) -> Image.Image:
    im = Image.new("RGB", size, "white")
    ImageDraw.Draw(im).rectangle(box, fill=color)
    return im


def record(inp=(), out=(Segment("text", text="ok"),), instruction="Do it.") -> Record:
    return Record("r1", "test", instruction, tuple(inp), tuple(out))


def test_bounds():
    f = FilterSection(max_text_chars=20, max_images=1, min_image_side=16, min_output_chars=2)
    img = Segment("image", image="x.png")
    check_record_bounds(record(out=(Segment("text", text="ok"), img)), f)
    check_bounds(record(), [picture("red")], f)
    for rec, words in [
        (record(instruction="x" * 30), "max_text_chars"),
        (record(out=(Segment("text", text="ok"), img, img)), "max_images"),  # counted before any image is read
        (record(out=(Segment("text", text="a"),)), "min_output_chars"),
    ]:
        with pytest.raises(Reject, match=words):
            check_record_bounds(rec, f)
    with pytest.raises(Reject, match="min_image_side"):
        check_bounds(record(), [picture("red", size=(64, 8))], f)


def test_near_duplicates_only_within_one_side():
    img = Segment("image", image="x")
    f = FilterSection()
    a, a2, b = picture("red"), picture("red").resize((60, 60)).resize((64, 64)), picture("blue", (30, 5, 60, 60))
    with pytest.raises(Reject, match="output image 1 near-duplicates image 0"):
        check_near_duplicates(record(out=(img, img)), [a, a2], f)
    check_near_duplicates(record(inp=(img,), out=(img,)), [a, a2], f)  # an edit resembles its source
    check_near_duplicates(record(out=(img, img)), [a, b], f)
    check_near_duplicates(record(out=(img, img)), [a, a], FilterSection(phash_max_distance=-1))


def test_unexpected_errors_become_counted_rejects():
    with pytest.raises(Reject) as e:
        run_stage("bounds", lambda: 1 / 0)
    assert e.value.stage == "bounds" and "internal error: ZeroDivisionError" in e.value.reason


def test_fit_pieces():
    assert fit_pieces([5, 5, 5], [False, True, True], 17, 1, 1) == 3
    assert fit_pieces([5, 5, 5], [False, True, True], 16, 1, 1) == 2  # no room for EOS: the answer is cut
    with pytest.raises(Reject, match="prompt alone is 11 tokens"):
        fit_pieces([10, 5], [False, True], 10, 1, 1)
    with pytest.raises(Reject, match="first output segment"):
        fit_pieces([5, 9], [False, True], 10, 1, 1)
    with pytest.raises(Reject, match="only without its end-of-sequence token"):
        fit_pieces([5, 5], [False, True], 11, 1, 1)


def png(im):
    buf = io.BytesIO()
    im.save(buf, "PNG")
    return buf.getvalue()


@pytest.mark.parametrize("name", BACKBONE_NAMES)
def test_truncation_drops_whole_trailing_segments(tmp_path, name):
    for k, c in enumerate(["red", "blue", "green"]):
        (tmp_path / f"{k}.png").write_bytes(png(picture(c, (5 + 10 * k, 5, 60, 50 - 10 * k))))
    raw = {"id": "t", "instruction": "Show the steps.",
           "output": [{"type": "text", "text": "one " * 10}, {"type": "image", "image": "0.png"},
                      {"type": "text", "text": "two " * 10}, {"type": "image", "image": "1.png"},
                      {"type": "image", "image": "2.png"}]}
    chunk = Chunk(str(tmp_path / "d.jsonl"), 0, "lines")
    row = validate_record(raw, chunk, 1, FilterSection(), {}, 0.0)
    assert row["stage"] == "" and len(row["images"]) == 3
    tok = Tokenize(name, "tiny", max_seq_len=10_000)
    full = tok.row(row)
    assert full["truncated_segments"] == 0 and full["n_images"] == 3
    assert len(full["pixels"]) == (3 if tok.spec.continuous_images else 0)  # emu2 keeps pixels, VQ ids hold codes
    assert full["input_ids"][-1] == tok.spec.tokenizer.eos_token_id
    prompt_len = full["labels"].index(next(x for x in full["labels"] if x != -100))
    assert all(x == -100 for x in full["labels"][:prompt_len])
    cut = Tokenize(name, "tiny", max_seq_len=full["n_tokens"] - 5).row(row)
    assert cut["stage"] == "" and cut["truncated_segments"] == 1 and cut["n_images"] == 2
    assert len(cut["pixels"]) == (2 if tok.spec.continuous_images else 0)
    assert cut["input_ids"] == full["input_ids"][: cut["n_tokens"]]  # a prefix, with no EOS appended
    assert all(s["n_cells"] == s["height"] * s["width"] for s in cut["image_layout"])
    tiny = Tokenize(name, "tiny", max_seq_len=prompt_len + 3).row(row)
    assert (tiny["stage"], tiny["split"]) == ("truncate", "rejected") and "first output segment" in tiny["reason"]


def test_validate_record_reports_stage_and_source(tmp_path):
    chunk = Chunk(str(tmp_path / "d.jsonl"), 3, "lines")
    rows = [validate_record(raw, chunk, 7, FilterSection(), {order_of(3, 7): "dup!"}, 0.0) for raw in (
        b"{oops", {"id": "a", "output": []}, {"id": "b", "output": [{"type": "image", "image": "nope.png"}]},
        {"id": "c", "output": [{"type": "text", "text": "fine"}]},
    )]
    assert [(r["stage"], r["id"]) for r in rows] == [("parse", ""), ("schema", "a"), ("image", "b"), ("dedupe", "c")]
    assert "nope.png" in rows[2]["reason"] and rows[3]["reason"] == "dup!"
    assert all(r["file"] == chunk.path and r["line"] == 7 and r["split"] == "rejected" for r in rows)
