"""MagicBrush-style editing metrics on the sample set's editing domain, with tiny local CLIP / DINO checkpoints."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pytest
import torch
from PIL import Image

from orchestrator.config import ConfigError, load_config
from orchestrator.data.sample import write_sample
from orchestrator.data.shards import split_of
from orchestrator.evaluation.editing import ImageEmbedder, editing_records, evaluate_editing, pixel_distances
from orchestrator.moss import apply_moss
from tests.helpers import ADAPTERS, draw, randomize_adapter, spec_for


@pytest.fixture(scope="module")
def sample(tmp_path_factory):
    root = tmp_path_factory.mktemp("editing")
    write_sample(root / "sample", per_domain=8)
    return root / "sample"


@pytest.fixture(scope="module")
def embedders(tmp_path_factory):
    """Tiny random CLIP and ViT (DINO's architecture) checkpoints written like hub downloads."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, ViTConfig, ViTImageProcessor, ViTModel

    root = tmp_path_factory.mktemp("embedders")
    torch.manual_seed(0)
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, image_size=32,
                  patch_size=8)
    clip = CLIPModel(CLIPConfig(vision_config=vision, projection_dim=16,
                                text_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                                 num_attention_heads=2, vocab_size=99)))
    clip.save_pretrained(root / "clip")
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(root / "clip")
    ViTModel(ViTConfig(**vision), add_pooling_layer=False).save_pretrained(root / "dino")
    ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(root / "dino")
    return root


def test_pixel_distances_follow_magicbrush():
    white, black = Image.new("RGB", (8, 8), "white"), Image.new("RGB", (16, 16), "black")
    assert pixel_distances(white, white) == {"l1": 0.0, "l2": 0.0}
    assert pixel_distances(black, white) == {"l1": 1.0, "l2": 1.0}  # resized to the target's size first
    grey = Image.new("RGB", (8, 8), (51, 51, 51))  # 0.2 in [0, 1]
    d = pixel_distances(grey, black)
    assert d["l1"] == pytest.approx(0.2) and d["l2"] == pytest.approx(0.04)


def test_editing_records_take_the_domain_and_split(sample):
    cfg = load_config(None, [f"data.source={sample}", "data.val_fraction=0.5", "editing.max_records=null"])
    records, skipped = editing_records(cfg)
    assert records and all(r.domain == "editing" and split_of(r.id, 0.5) == "val" for r in records)
    assert skipped["other_domain"] == 32 and skipped["other_split"] == 8 - len(records)
    everything = load_config(None, [f"data.source={sample}", "editing.split=all", "editing.max_records=3"])
    assert len(editing_records(everything)[0]) == 3


def test_embedders_are_cosine_similarities(embedders):
    clip = ImageEmbedder(str(embedders / "clip"), "clip")
    a, b = draw("red"), draw("blue", shape="circle")
    assert clip.similarity(a, a) == pytest.approx(1.0, abs=1e-5)
    assert clip.similarity(a, b) < 1.0
    dino = ImageEmbedder(str(embedders / "dino"), "dino")
    assert dino(a).shape == (32,) and dino.similarity(a, a) == pytest.approx(1.0, abs=1e-5)
    with pytest.raises(ConfigError, match="not a local checkpoint"):
        ImageEmbedder(str(embedders / "missing"), "clip")


@pytest.mark.parametrize("name", ["emu3", "janus", "chameleon", "emu2"])
def test_evaluate_editing(name, sample, embedders, tmp_path):
    spec = spec_for(name)
    model = apply_moss(spec.build(seed=0), ADAPTERS["moss-full"], spec)
    randomize_adapter(model)
    cfg = load_config(None, [f"data.source={sample}", "editing.split=all", "editing.max_records=2",
                             f"editing.clip_model={embedders / 'clip'}", f"editing.dino_model={embedders / 'dino'}"])
    result = evaluate_editing(model.eval(), spec, cfg, tmp_path)
    assert result["records"] == 2 and len(result["per_record"]) == 2
    m = result["metrics"]
    if name == "emu2":  # regressed embeddings vs the target's own: no pixels, and it says so
        assert set(m) == {"embedding_mse", "embedding_cos", "failure_rate"} and m["embedding_mse"] > 0 and -1 <= m["embedding_cos"] <= 1
        assert any("diffusion decoder" in n for n in result["notes"])
        for row in result["per_record"]:
            assert np.load(tmp_path / "editing" / f"{row['id']}.embeddings.npy").shape == (8, 8, 32)
        return
    assert 0 <= m["code_match"] <= 1
    for row in result["per_record"]:
        codes = json.loads((tmp_path / "editing" / f"{row['id']}.codes.json").read_text())
        assert len(codes) * len(codes[0]) > 1
    if name == "chameleon":  # no pixel decoder in transformers: codes only, and it says so
        assert set(m) == {"code_match", "failure_rate"} and any("no pixel decoder" in n for n in result["notes"])
        return
    assert 0 < m["l1"] <= 1 and 0 < m["l2"] <= m["l1"] and -1 <= m["clip_i"] <= 1 and -1 <= m["dino"] <= 1
    row = result["per_record"][0]
    generated = Image.open(tmp_path / row["image"])
    assert row["l1"] == pytest.approx(pixel_distances(generated, _target(sample, row["id"]))["l1"], abs=1e-6)


def _target(sample, record_id):
    return Image.open(sample / "images" / "editing" / f"{record_id}_out.png").convert("RGB")


def test_an_unreadable_record_is_counted_not_fatal(sample, tmp_path):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(sample, broken)
    spec = spec_for("emu3")
    cfg = load_config(None, [f"data.source={broken / 'editing.parquet'}", "editing.split=all", "editing.max_records=2"])
    first = editing_records(cfg)[0][0]
    (broken / "images" / "editing" / f"{first.id}_src.png").unlink()
    result = evaluate_editing(apply_moss(spec.build(seed=0), ADAPTERS["lora"], spec).eval(), spec, cfg, tmp_path / "o")
    assert result["records"] == 1 and result["failures"][0]["id"] == first.id
    assert "missing file" in result["failures"][0]["reason"] and result["failures"][0]["stage"] == "input"
    assert result["skipped"]["unreadable_image"] == 1 and result["metrics"]["failure_rate"] == 0


def test_a_failed_generation_is_scored_worst_not_dropped(sample, tmp_path):
    """A record the adapter cannot answer (here: a prompt longer than the model's context) stays in the mean at
    each metric's worst value, so two adapters are always averaged over the same records."""
    import shutil

    import pyarrow.parquet as pq

    table = pq.read_table(sample / "editing.parquet")
    rows = table.to_pylist()[:2]
    rows[0]["instruction"] = "make it red " * 3000
    pq.write_table(pa.Table.from_pylist(rows, schema=table.schema), tmp_path / "editing.parquet")
    shutil.copytree(sample / "images" / "editing", tmp_path / "images" / "editing")
    spec = spec_for("janus")
    cfg = load_config(None, [f"data.source={tmp_path / 'editing.parquet'}", "editing.split=all"])
    model = apply_moss(spec.build(seed=0), ADAPTERS["lora"], spec).eval()
    result = evaluate_editing(model, spec, cfg, tmp_path / "o")
    assert len(result["per_record"]) == 2, result["skipped"]
    failed, ok = result["per_record"]
    assert failed["failed"] and failed["id"] == rows[0]["id"] and not ok.get("failed")
    assert result["failures"][0]["stage"] == "generation" and "exceeds" in result["failures"][0]["reason"]
    assert (failed["l1"], failed["l2"], failed["code_match"]) == (1.0, 1.0, 0.0)
    m = result["metrics"]
    assert m["failure_rate"] == 0.5 and result["records"] == 2
    assert m["l1"] == pytest.approx((1.0 + ok["l1"]) / 2) and m["code_match"] == pytest.approx(ok["code_match"] / 2)


def test_similarity_metrics_are_skipped_with_a_note(sample, tmp_path):
    spec = spec_for("janus")
    cfg = load_config(None, [f"data.source={sample}", "editing.split=all", "editing.max_records=1"])
    result = evaluate_editing(apply_moss(spec.build(seed=0), ADAPTERS["lora"], spec).eval(), spec, cfg, tmp_path)
    assert "clip_i" not in result["metrics"] and "dino" not in result["metrics"] and "l1" in result["metrics"]
    assert any("CLIP-I skipped" in n for n in result["notes"]) and any("DINO skipped" in n for n in result["notes"])


def test_editing_records_naming_images_outside_the_roots_are_skipped_unopened(tmp_path):
    import os

    data = tmp_path / "data"
    data.mkdir()
    for name, color in (("src.png", "red"), ("out.png", "blue")):
        draw(color).save(data / name)
    draw("green").save(tmp_path / "secret.png")
    os.symlink(tmp_path / "secret.png", data / "link.png")

    def edit(rid, src, out):
        return {"id": rid, "domain": "editing", "instruction": "Make it blue.",
                "input": [{"type": "image", "image": src}], "output": [{"type": "image", "image": out}]}

    recs = [edit("ok", "src.png", "out.png"), edit("up", "../secret.png", "out.png"),
            edit("link", "src.png", "link.png"), edit("http", "http://127.0.0.1:9/a.png", "out.png"),
            edit("abs", "src.png", str(tmp_path / "secret.png"))]
    (data / "edits.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    cfg = load_config(None, [f"data.source={data}", "editing.split=all", "editing.max_records=null"])
    records, skipped = editing_records(cfg)
    assert [r.id for r in records] == ["ok"] and skipped["refused_image"] == 4
    assert records[0].input[0].image == str((data / "src.png").resolve())
    allowed = load_config(None, [f"data.source={data}", "editing.split=all", f"data.image_roots=[{tmp_path}]"])
    assert [r.id for r in editing_records(allowed)[0]] == ["ok", "up", "link", "abs"]
