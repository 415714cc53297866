"""The comparison report from a real MLflow sqlite store holding a sweep's parent and child runs."""

import json

import pytest
from mlflow.tracking import MlflowClient

from orchestrator.cli import main
from orchestrator.tracking.compare import build_report, collect

RUNS = [  # variant, rank, kernel, conv_space, trainable, final val/image_loss, status
    ("lora", 4, None, None, 100, 2.0, "finished"),
    ("lora", 8, None, None, 200, 1.8, "finished"),
    ("moe_lora", 4, None, None, 200, 1.9, "finished"),
    ("moss", 4, 3, "full", 500, 1.5, "finished"),
    ("moss", 8, 3, "full", 1000, 1.6, "finished"),
    ("moss", 4, 1, "full", 200, 2.5, "early_stopped"),
]


@pytest.fixture
def store(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    mlc = MlflowClient(uri)
    exp = mlc.create_experiment("moss", artifact_location=(tmp_path / "mlruns").as_uri())
    parent = mlc.create_run(exp, run_name="sw", tags={"moss.kind": "sweep", "moss.sweep": "sw",
                                                      "moss.metric": "val/image_loss", "moss.mode": "min"}).info.run_id
    for i, (variant, rank, k, conv, n, value, status) in enumerate(RUNS):
        run = mlc.create_run(exp, run_name=f"sw-{i}", tags={"mlflow.parentRunId": parent, "moss.run_name": f"sw-{i}",
                                                            "moss.status": status}).info.run_id
        mlc.log_param(run, "backbone.name", "chameleon")
        mlc.log_param(run, "adapter.variant", variant)
        mlc.log_param(run, "adapter.rank", rank)
        mlc.log_param(run, "adapter.kernel_size", k or 3)
        mlc.log_param(run, "adapter.conv_space", conv or "full")
        mlc.log_param(run, "trainable_parameters", n)
        last = 2 if status == "early_stopped" else 4
        for step in range(2, last + 1, 2):
            mlc.log_metric(run, "val/image_loss", value + (last - step) * 0.1, step=step)
        mlc.set_terminated(run, "FINISHED" if status == "finished" else "KILLED")
    mlc.create_run(exp, run_name="other", tags={"moss.run_name": "other"})  # a plain training run
    return uri, parent


def test_tables_best_and_lora_gaps(store):
    uri, parent = store
    c = collect(uri, parent_run_id=parent)
    assert c.metric == "val/image_loss" and c.mode == "min"
    assert [r.value for r in c.rows] == sorted(r[5] for r in RUNS)
    assert {(r.label, r.value) for r in c.best_per_variant()} == {("moss/full", 1.5), ("moe_lora", 1.9), ("lora", 1.8)}
    gaps = {(g["label"], g["rank"], g["kernel_size"]): g for g in c.lora_gaps()}
    assert gaps[("moss/full", 4, 3)]["gap"] == pytest.approx(-0.5)
    assert gaps[("moss/full", 8, 3)]["gap"] == pytest.approx(-0.2)
    assert gaps[("moss/full", 4, 3)]["params_ratio"] == 5.0
    assert gaps[("moe_lora", 4, None)]["gap_pct"] == pytest.approx(-5.0)
    early = gaps[("moss/full", 4, 1)]  # stopped at step 2: compared with LoRA's value at step 2
    assert early["step"] == 2 and early["lora_value"] == pytest.approx(2.2) and early["gap"] == pytest.approx(0.3)
    stopped = next(r for r in c.rows if r.status == "early_stopped")
    assert stopped.step == 2 and stopped.kernel_size == 1
    for latest in (collect(uri), collect(uri, experiment="moss")):  # the latest sweep of experiment "moss"
        assert latest.parent_run_id == parent and len(latest.rows) == len(RUNS)


def test_report_files_and_parent_artifacts(store, tmp_path):
    uri, parent = store
    report = build_report(uri, parent_run_id=parent, out_dir=tmp_path / "out")
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert [r["value"] for r in results["rows"]] == [r.value for r in report["comparison"].rows]
    md = (tmp_path / "out" / "report.md").read_text()
    assert "## Best per variant" in md and "![" in md
    names = {p.split("/")[-1] for p in report["plots"]}
    assert {"curves.png", "metric_vs_params.png", "heatmap_chameleon_moss_full.png", "heatmap_chameleon_lora.png"} <= names
    for p in report["plots"]:
        assert (tmp_path / "out" / p.split("/")[-1]).read_bytes()[:4] == b"\x89PNG"
    logged = {a.path for a in MlflowClient(uri).list_artifacts(parent, "report")}
    assert "report/report.md" in logged and "report/curves.png" in logged


def test_compare_cli(store, tmp_path, capsys):
    uri, parent = store
    assert main(["compare", "--tracking-uri", uri, "--parent-run", parent, "--out", str(tmp_path / "c")]) == 0
    out = capsys.readouterr().out
    assert "6 runs of sweep 'sw'" in out and (tmp_path / "c" / "report.md").exists()
    assert main(["compare", "--tracking-uri", uri, "--experiment", "nope", "--out", str(tmp_path / "d")]) == 2


def test_the_report_leads_with_the_method_table(tmp_path):
    """Rows: methods over seeds; columns: image and text loss (mean ± t CI at the common step), params, and the
    cost of their evaluation runs (linked by moss.source_run_id)."""
    from orchestrator.tracking.stats import mean_ci

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    mlc = MlflowClient(uri)
    exp = mlc.create_experiment("moss", artifact_location=(tmp_path / "mlruns").as_uri())
    parent = mlc.create_run(exp, run_name="sw", tags={"moss.kind": "sweep", "moss.metric": "val/image_loss",
                                                      "moss.mode": "min"}).info.run_id
    losses = {"lora": ([2.0, 2.2, 2.1], [1.0, 1.1, 1.2]), "moss": ([1.5, 1.7, 1.6], [1.05, 1.1, 1.15])}
    for variant, (image, text) in losses.items():
        for seed in range(3):
            run = mlc.create_run(exp, run_name=f"{variant}-{seed}", tags={"mlflow.parentRunId": parent}).info.run_id
            for k, v in (("backbone.name", "chameleon"), ("adapter.variant", variant), ("adapter.rank", 8),
                         ("adapter.kernel_size", 3), ("adapter.conv_space", "full"), ("train.seed", seed),
                         ("train.max_steps", 10), ("trainable_parameters", 100 if variant == "lora" else 300)):
                mlc.log_param(run, k, v)
            for step in (5, 10):  # the table reads step 10 (every seed reached it)
                mlc.log_metric(run, "val/image_loss", image[seed] + (10 - step), step=step)
                mlc.log_metric(run, "val/text_loss", text[seed] + (10 - step), step=step)
            mlc.set_terminated(run, "FINISHED")
            if variant == "moss":  # one evaluation run per seed, with its generation cost
                ev = mlc.create_run(exp, tags={"moss.kind": "evaluation", "moss.source_run_id": run}).info.run_id
                mlc.log_metric(ev, "cost/ms_per_image_token", 2.0 + seed)
    report = build_report(uri, parent_run_id=parent, out_dir=tmp_path / "out")
    md = (tmp_path / "out" / "report.md").read_text()
    assert md.index("## Methods") < md.index("## All runs")
    methods = json.loads((tmp_path / "out" / "results.json").read_text())["methods"]
    assert [m["label"] for m in methods] == ["moss/full", "lora"]  # best first
    moss, lora = methods
    assert moss["val/image_loss"]["mean"] == pytest.approx(1.6) and moss["seeds"] == 3 and moss["step"] == 10
    assert moss["val/image_loss"]["half_width"] == pytest.approx(mean_ci([1.5, 1.7, 1.6]).half_width)
    assert lora["val/text_loss"]["mean"] == pytest.approx(1.1)
    assert moss["cost/ms_per_image_token"]["mean"] == pytest.approx(3.0) and lora["cost/ms_per_image_token"] is None
    assert moss["trainable_parameters"] == 300
    assert "1.600 ± " in md and "moss/full r8 k3" in report["table_text"]
