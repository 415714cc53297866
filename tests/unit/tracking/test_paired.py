"""compare --paired on evaluation results: token-mean differences per record, refusal of unpaired scores."""

from __future__ import annotations

import json

import pytest

from orchestrator.tracking.paired import compare_paired, heldout_rows


def _eval(records, split="val", editing=None):
    out = {"adapter": "x", "heldout": {"split": split, "per_record": [
        {"id": i, "domain": d, "tokens": 10, "text_sum": ts, "n_text": nt, "image_sum": is_, "n_image": ni,
         "frame_sum": 0.0, "n_frame": 0} for i, d, ts, nt, is_, ni in records]}}
    if editing is not None:
        out["editing"] = {"metrics": {"failure_rate": 0.0}, "per_record": editing}
    return out


A = [("r1", "x", 2.0, 2, 30.0, 10), ("r2", "y", 3.0, 3, 0.0, 0), ("r3", "y", 1.0, 1, 20.0, 10), ("r4", "x", 4.0, 4, 8.0, 4)]
B = [("r1", "x", 4.0, 2, 40.0, 10), ("r2", "y", 3.0, 3, 0.0, 0), ("r3", "y", 2.0, 1, 20.0, 10), ("r5", "x", 1.0, 1, 1.0, 1)]


def test_heldout_pairs_are_token_means_over_shared_records_and_domains():
    rows, notes = heldout_rows(_eval(A), _eval(B), reps=500, seed=0)
    by = {(r["scope"], r["metric"]): r for r in rows}
    image = by[("(all)", "heldout/val/image_loss")]  # r4 and r5 are unpaired; r2 has no image target
    assert image["records"] == 2 and image["a"] == pytest.approx(50 / 20) and image["b"] == pytest.approx(60 / 20)
    assert image["diff"] == pytest.approx(-0.5)
    assert by[("(all)", "heldout/val/text_loss")]["diff"] == pytest.approx((6 - 9) / 6)
    assert by[("y", "heldout/val/image_loss")]["diff"] == 0.0 and ("x", "heldout/val/text_loss") in by
    assert not any(r["metric"].endswith("frame_loss") for r in rows)  # no frame targets anywhere
    assert "1 record(s) only in A and 1 only in B" in notes[0]


def test_scores_on_different_targets_or_splits_do_not_pair(tmp_path):
    other = [("r1", "x", 2.0, 3, 30.0, 9)]
    with pytest.raises(ValueError, match="different shards or backbones"):
        heldout_rows(_eval(A), _eval(other), reps=100, seed=0)
    with pytest.raises(ValueError, match="split"):
        heldout_rows(_eval(A), _eval(B, split="train"), reps=100, seed=0)
    for name, data in (("a", _eval(A, editing=[{"id": "e1", "code_match": 0.5}, {"id": "e2", "failed": True,
                                                                                   "code_match": 0.0}])),
                       ("b", _eval(B, editing=[{"id": "e1", "code_match": 0.25}, {"id": "e2", "code_match": 0.75}]))):
        (tmp_path / name).mkdir()
        (tmp_path / name / "results.json").write_text(json.dumps(data))
    result = compare_paired(str(tmp_path / "a"), str(tmp_path / "b" / "results.json"), reps=200)
    edit = next(r for r in result["rows"] if r["metric"] == "editing/code_match")
    assert (edit["records"], edit["diff"]) == (2, pytest.approx((0.5 - 0.25 + 0.0 - 0.75) / 2))


def test_domain_metric_names_are_valid_mlflow_names_and_never_collide():
    from mlflow.utils.validation import _validate_metric_name

    from orchestrator.evaluation.heldout import metric_name

    domains = ["howto", "图像编辑", "文本生成", "image editing", "image_editing", ".", "..", "", "a/b", "x" * 300]
    names = [metric_name(d) for d in domains]
    assert names[0] == "howto" and names[4] == "image_editing"  # plain names stay as they are
    assert len(set(names)) == len(names)
    for n in names:
        _validate_metric_name(f"heldout/by_domain/{n}/val/image_loss")  # raises on a bad or path-like name
