"""`moss generate` and `moss evaluate` end to end: a saved adapter, local shards, a real sqlite MLflow store."""

from __future__ import annotations

import json

import pytest
import pyarrow.dataset as pads
import torch
from mlflow.tracking import MlflowClient
from PIL import Image

from orchestrator.cli import main
from orchestrator.config import load_config
from orchestrator.data.pipeline import output_dir, preprocess
from orchestrator.data.sample import write_sample
from orchestrator.moss import apply_moss, load_adapter, save_adapter
from orchestrator.training.data import collate_rows
from orchestrator.training.objective import adapter_loss
from tests.helpers import ADAPTERS, draw, randomize_adapter, spec_for


@pytest.fixture(scope="module")
def adapters(tmp_path_factory):
    root = tmp_path_factory.mktemp("adapters")
    for name in ("emu3", "chameleon"):
        spec = spec_for(name)
        model = apply_moss(spec.build(seed=0), ADAPTERS["moss-lowrank"], spec)
        randomize_adapter(model, std=0.05)
        save_adapter(model, root / name)
    spec = spec_for("chameleon")  # a second adapter on the same base: what `compare --paired` pairs with
    model = apply_moss(spec.build(seed=0), ADAPTERS["lora"], spec)
    randomize_adapter(model, std=0.05)
    save_adapter(model, root / "chameleon-lora")
    draw("red").save(root / "red.png")
    return root


def test_generate_writes_the_answer(adapters, tmp_path, capsys):
    out = tmp_path / "answer"
    rc = main(["generate", "--adapter", str(adapters / "emu3"), "--set", "backbone.name=emu3", "--prompt",
               "Edit <image> make it blue", "--image", str(adapters / "red.png"), "--image-first",
               "--set", "generate.max_new_tokens=3", "--set", "generate.image_size=[3,4]", "--out", str(out)])
    assert rc == 0
    answer = json.loads((out / "answer.json").read_text())
    image = answer["parts"][0]
    assert image["type"] == "image" and (image["height"], image["width"]) == (3, 4)
    assert Image.open(out / image["image"]).size == (16, 12)  # the tiny VQ upsamples 4x
    assert len(json.loads((out / image["codes"]).read_text())) == 3
    assert answer["stop"] in ("eos", "max_new_tokens") and "answer.json" in capsys.readouterr().out


def test_generate_samples_decoded_together_are_the_samples_decoded_alone(adapters, tmp_path):
    """--samples 3 --batch-size 3: seeds seed+0..2, each answer what batch 1 gives (per-record seeds)."""
    common = ["generate", "--adapter", str(adapters / "emu3"), "--set", "backbone.name=emu3", "--prompt", "Draw:",
              "--set", "generate.max_new_tokens=6", "--set", "generate.image_size=[2,3]", "--set",
              "generate.temperature=3.0", "--set", "generate.max_images=1", "--image-first"]
    assert main([*common, "--samples", "3", "--batch-size", "3", "--out", str(tmp_path / "b")]) == 0
    samples = json.loads((tmp_path / "b" / "answer.json").read_text())["samples"]
    assert len(samples) == 3 and len({s["text"] for s in samples}) > 1  # three seeds, different answers
    assert any(p["type"] == "image" for s in samples for p in s["parts"])
    for i, s in enumerate(samples):
        assert main([*common, "--set", f"generate.seed={i}", "--batch-size", "1", "--out", str(tmp_path / f"a{i}")]) == 0
        alone = json.loads((tmp_path / f"a{i}" / "answer.json").read_text())
        assert (alone["text"], alone["stop"]) == (s["text"], s["stop"])
        for p, q in zip(alone["parts"], s["parts"]):
            if p["type"] == "image":
                assert q["codes"].startswith(f"sample_{i}_") and (json.loads((tmp_path / "b" / q["codes"]).read_text())
                                                                 == json.loads((tmp_path / f"a{i}" / p["codes"]).read_text()))
    assert main([*common, "--samples", "0"]) == 2 and main([*common, "--batch-size", "0"]) == 2


def test_chameleon_saves_codes_and_says_why(adapters, tmp_path):
    out = tmp_path / "c"
    assert main(["generate", "--adapter", str(adapters / "chameleon"), "--prompt", "Draw:", "--image-first",
                 "--set", "generate.max_new_tokens=0", "--out", str(out)]) == 0
    image = json.loads((out / "answer.json").read_text())["parts"][0]
    assert "image" not in image and "no pixel decoder" in image["note"] and (out / image["codes"]).is_file()


@pytest.mark.parametrize("argv, message", [
    (["--adapter", "{emu3}", "--prompt", "hi"], "holds a 'emu3' adapter, not 'chameleon'"),
    (["--adapter", "{missing}", "--prompt", "hi"], "is not a folder"),
    (["--prompt", "two <image> <image>", "--image", "{red}"], "2 <image> placeholder(s) but only 1"),
    (["--prompt", "hi", "--image", "{missing}"], "--image"),
    (["--prompt", "hi", "--set", "generate.image_size=[3,4]"], "generates 8x8 code grids only"),
    (["--prompt", "hi", "--set", "generate.top_p=0"], "top_p"),
])
def test_generate_refuses_bad_input_with_exit_2(adapters, argv, message, capsys):
    paths = {"emu3": adapters / "emu3", "missing": adapters / "nope", "red": adapters / "red.png"}
    assert main(["generate", *[a.format(**paths) for a in argv]]) == 2
    assert message in capsys.readouterr().err


def test_evaluate_scores_logs_and_links(adapters, tmp_path, capsys):
    write_sample(tmp_path / "sample", per_domain=6)
    sets = [f"data.source={tmp_path / 'sample'}", f"data.output={tmp_path / 'shards'}", "data.val_fraction=0.3",
            f"tracking.tracking_uri=sqlite:///{tmp_path / 'mlflow.db'}", "editing.split=all",
            "editing.max_records=2", "train.micro_batch=3"]
    cfg = load_config(None, sets)
    preprocess(cfg, engine="local")
    argv = ["evaluate", "--adapter", str(adapters / "chameleon"), "--out", str(tmp_path / "eval")]
    assert main([*argv, *[x for s in sets for x in ("--set", s)]]) == 0
    results = json.loads((tmp_path / "eval" / "results.json").read_text())
    # held-out: the token-weighted CE over the whole val split, computed here independently
    spec = spec_for("chameleon")
    model = load_adapter(spec.build(seed=0), adapters / "chameleon", spec)
    rows = pads.dataset(f"{output_dir(cfg)}/split=val", format="parquet").to_table().to_pylist()
    total = n = 0
    per_record = {r["id"]: r for r in results["heldout"]["per_record"]}
    domains: dict = {}
    with torch.no_grad():
        for row in rows:
            out = adapter_loss(model, spec, collate_rows(spec, [row]))
            total, n = total + float(out.loss) * out.n_targets, n + out.n_targets
            mine = per_record[row["id"]]  # each record's own sums, though scored in micro-batches of 3
            assert (mine["n_text"], mine["n_image"], mine["n_frame"]) == (out.n_text, out.n_image, out.n_frame)
            image_sum = float(out.image_loss) * out.n_image if out.n_image else 0.0
            text_sum = float(out.text_loss) * out.n_text if out.n_text else 0.0
            assert mine["text_sum"] == pytest.approx(text_sum, rel=1e-4, abs=1e-6)
            assert mine["image_sum"] == pytest.approx(image_sum, rel=1e-4, abs=1e-6)
            assert mine["domain"] == row["domain"]
            d = domains.setdefault(row["domain"], [0.0, 0])
            d[0], d[1] = d[0] + image_sum, d[1] + out.n_image
    m = results["metrics"]
    assert results["heldout"]["rows"] == len(rows) == len(per_record) > 0
    assert m["heldout/val/loss"] == pytest.approx(total / n, rel=1e-5)
    assert len(domains) > 1
    for domain, (s, k) in domains.items():
        if k:
            assert m[f"heldout/by_domain/{domain}/val/image_loss"] == pytest.approx(s / k, rel=1e-5)
    assert {"heldout/val/text_ppl", "heldout/val/image_ppl", "editing/code_match"} <= set(m)
    # inference cost: every generated image cell timed (2 edits of an 8x8 grid), on the device named
    assert results["cost"]["image_tokens"] == 2 * 64 and results["cost"]["device"] == "cpu"
    assert m["cost/ms_per_image_token"] > 0 and m["editing/failure_rate"] == 0
    mlc = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    run = mlc.search_runs([mlc.get_experiment_by_name("moss").experiment_id])[0]
    assert run.data.tags["moss.kind"] == "evaluation" and run.info.status == "FINISHED"
    assert run.data.metrics["heldout/val/loss"] == pytest.approx(m["heldout/val/loss"])
    assert run.data.params["editing.max_records"] == "2"
    arts = {f.path for f in mlc.list_artifacts(run.info.run_id, "evaluation")}
    assert {"evaluation/results.json", "evaluation/editing"} <= arts
    printed = capsys.readouterr().out
    assert "heldout/val/loss" in printed and run.info.run_id in printed and "no pixel decoder" in printed
    assert main(argv) == 2 and "is not empty" in capsys.readouterr().err  # never mixes two evaluations' files
    fresh = ["evaluate", "--adapter", str(adapters / "chameleon"), "--out", str(tmp_path / "eval-2")]
    off = ["--set", "evaluate.heldout=false", "--set", "evaluate.editing=false"]
    assert main([*fresh, *off]) == 2 and "nothing to evaluate" in capsys.readouterr().err
    assert main([*fresh, "--judge"]) == 2 and "--judge scores InterleavedBench" in capsys.readouterr().err
    assert main([*fresh, "--into-run"]) == 2 and "--into-run" in capsys.readouterr().err
    assert main([*fresh, "--set", "generate.image_size=[2,2]"]) == 2  # before any model is built
    assert "generates 8x8 code grids only" in capsys.readouterr().err

    # compare --paired: the same records scored by a second adapter, read back from its MLflow run
    other = ["evaluate", "--adapter", str(adapters / "chameleon-lora"), "--out", str(tmp_path / "eval-b")]
    assert main([*other, *[x for s in sets for x in ("--set", s)]]) == 0
    b = json.loads((tmp_path / "eval-b" / "results.json").read_text())
    b_run = next(r.info.run_id for r in mlc.search_runs([run.info.experiment_id]) if r.info.run_id != run.info.run_id)
    capsys.readouterr()
    uri = ["--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}", "--reps", "500"]
    assert main(["compare", "--paired", str(tmp_path / "eval"), b_run, *uri, "--out", str(tmp_path / "paired")]) == 0
    assert "heldout/val/image_loss" in capsys.readouterr().out
    paired = json.loads((tmp_path / "paired" / "paired.json").read_text())
    rows = {(r["scope"], r["metric"]): r for r in paired["rows"]}
    image = rows[("(all)", "heldout/val/image_loss")]
    assert image["a"] == pytest.approx(m["heldout/val/image_loss"], rel=1e-6)
    assert image["b"] == pytest.approx(b["metrics"]["heldout/val/image_loss"], rel=1e-6)
    assert image["diff"] == pytest.approx(image["a"] - image["b"], rel=1e-6) and image["low"] <= image["diff"] <= image["high"]
    assert image["records"] == sum(1 for r in results["heldout"]["per_record"] if r["n_image"])
    for domain in domains:  # per domain too, and the editing records
        assert ("(all)", "heldout/val/text_loss") in rows and any(k[0] == domain for k in rows)
    assert rows[("(all)", "editing/code_match")]["records"] == 2
    assert main(["compare", "--paired", str(tmp_path / "eval"), str(tmp_path / "nowhere"), *uri]) == 2
    assert "no results.json" in capsys.readouterr().err
