"""MoSS fine-tuning on a real local Ray cluster (2 CPU workers) with a real MLflow sqlite store."""

import json
import os
import signal
import threading
import time
from pathlib import Path

import psutil
import pyarrow.dataset as pads
import pytest
import torch
from mlflow.tracking import MlflowClient

from orchestrator.backbones import get_backbone
from orchestrator.config import ConfigError, load_config
from orchestrator.data.pipeline import output_dir, preprocess
from orchestrator.data.shards import example_from_row
from orchestrator.data.sample import write_sample
from orchestrator.moss import load_adapter
from orchestrator.training.data import collate_rows
from orchestrator.training.driver import plan_run, run_training
from orchestrator.training.objective import adapter_loss

from .secrets_scan import store_texts

pytestmark = pytest.mark.slow
SECRET = "tok-5f1d9a7c33e2b804"  # a value that must never reach MLflow


@pytest.fixture(scope="module")
def workdir(ray_cluster, tmp_path_factory):
    """Sample set -> shards (Ray Data) for chameleon; a private sqlite store and storage folder."""
    root = tmp_path_factory.mktemp("train")
    write_sample(root / "sample", per_domain=8)
    preprocess(load_config(None, [f"data.source={root / 'sample'}", f"data.output={root / 'shards'}",
                                  "data.val_fraction=0.25"]))
    return root


def run_config(root: Path, name: str, *overrides: str):
    return load_config(None, [
        f"data.source={root / 'sample'}", f"data.output={root / 'shards'}", "data.val_fraction=0.25",
        f"tracking.tracking_uri=sqlite:///{root / 'mlflow.db'}", f"storage.path={root / 'ray_results'}",
        f"train.run_name={name}", "train.lr=3e-3", "train.warmup_steps=2", "train.shuffle_buffer=16",
        "scaling.num_workers=2", "scaling.cpus_per_worker=0.5", *overrides,
    ])


def mlflow_run(root: Path, name: str):
    mlc = MlflowClient(f"sqlite:///{root / 'mlflow.db'}")
    runs = mlc.search_runs([mlc.get_experiment_by_name("moss").experiment_id],
                           filter_string=f"tags.`moss.run_name` = '{name}'")
    assert len(runs) == 1, f"{len(runs)} MLflow runs named {name}"
    return mlc, runs[0]


def history(mlc, run_id: str, key: str) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in mlc.get_metric_history(run_id, key))


@pytest.fixture(scope="module")
def finished(workdir):
    os.environ["MOSS_TEST_API_TOKEN"] = SECRET
    try:
        cfg = run_config(workdir, "two-workers", "train.max_steps=10", "train.eval_every=5", "train.ckpt_every=5",
                         "tracking.system_metrics=true", "tracking.system_metrics_every_s=2",
                         f"tracking.tags={{note: 'token is {SECRET}', hf_token: abc123xyz}}")
        return cfg, run_training(cfg, plan_run(cfg))
    finally:
        del os.environ["MOSS_TEST_API_TOKEN"]


def test_two_workers_train_and_track(workdir, finished):
    cfg, summary = finished
    assert summary["status"] == "FINISHED" and summary["step"] == 10
    mlc, run = mlflow_run(workdir, "two-workers")
    loss = [v for _, v in history(mlc, run.info.run_id, "train/loss")]
    assert len(loss) == 10
    assert sum(loss[-3:]) / 3 < sum(loss[:3]) / 3 - 0.05, loss
    metrics = run.data.metrics
    for key in ("train/text_loss", "train/image_loss", "train/lr", "train/grad_norm", "train/tokens_per_s",
                "train/step_time_s", "train/peak_mem_mb", "val/loss", "val/text_loss", "val/image_loss",
                "val/text_ppl", "val/image_ppl"):
        assert key in metrics, key
    assert [s for s, _ in history(mlc, run.info.run_id, "val/loss")] == [5, 10]
    params = run.data.params
    assert params["adapter.variant"] == "moss" and params["scaling.num_workers"] == "2"
    assert params["config_hash"] == cfg.config_hash() and len(params["git.commit"]) in (40, 7)
    assert params["version.torch"].startswith("2.") and params["version.ray"] == "2.60.0"
    arts = {f.path for f in mlc.list_artifacts(run.info.run_id)}
    assert {"config.yaml", "data", "adapter"} <= arts
    (data,) = run.inputs.dataset_inputs  # the shards, as MLflow's dataset input
    manifest = json.loads(Path(mlc.download_artifacts(run.info.run_id, "data/manifest.json", str(workdir))).read_text())
    assert len(data.dataset.digest) == 16 and data.dataset.name == "shards/chameleon"
    assert json.loads(data.dataset.profile)["train"]["records"] == manifest["outputs"]["train"]
    assert [(t.key, t.value) for t in data.tags] == [("mlflow.data.context", "training")]
    # the final adapter as an MLflow LoggedModel: base by reference, the run's metrics linked on its dataset
    (model,) = [m for m in mlc.search_logged_models([run.info.experiment_id]) if m.source_run_id == run.info.run_id]
    assert str(model.status).endswith("READY") and model.model_type == "moss-adapter"
    assert model.params["base.checkpoint"] == "tiny" and model.params["config_hash"] == cfg.config_hash()
    linked = {m.key: m for m in model.metrics}
    assert linked["val/loss"].value == run.data.metrics["val/loss"] and linked["val/loss"].step == 10
    assert linked["val/loss"].dataset_digest == data.dataset.digest
    assert [o.model_id for o in run.outputs.model_outputs] == [model.model_id]
    # system metrics: one sampler for the one node (two workers on it), from the start to the end
    system = {k for k in run.data.metrics if k.startswith("system/")}
    assert "system/node0/cpu_utilization_percentage" in system and all(k.startswith("system/node0/") for k in system)
    assert len(history(mlc, run.info.run_id, "system/node0/system_memory_usage_megabytes")) >= 2


def test_no_secret_reaches_mlflow(workdir, finished):
    mlc, run = mlflow_run(workdir, "two-workers")
    texts = list(run.data.params.values()) + list(run.data.tags.values())
    dest = Path(mlc.download_artifacts(run.info.run_id, "", str(workdir / "artifacts-scan")))
    (model,) = [m for m in mlc.search_logged_models([run.info.experiment_id]) if m.source_run_id == run.info.run_id]
    texts += list(model.params.values()) + list(model.tags.values())
    import mlflow.artifacts

    model_files = Path(mlflow.artifacts.download_artifacts(model.artifact_location, dst_path=str(workdir / "model-scan")))
    files = [*dest.rglob("*"), *model_files.rglob("*")]
    assert any(p.name == "config.yaml" for p in model_files.rglob("*"))
    texts += [p.read_text(errors="replace") for p in files
              if p.is_file() and (p.suffix in (".yaml", ".json", ".md", ".txt") or p.name == "MLmodel")]
    assert run.data.tags["hf_token"] == "***" and "***" in run.data.tags["note"]
    assert not [t for t in texts if SECRET in t or "abc123xyz" in t]


def test_saved_adapter_reproduces_logged_eval_loss(workdir, finished):
    cfg, summary = finished
    mlc, run = mlflow_run(workdir, "two-workers")
    adapter_dir = mlc.download_artifacts(run.info.run_id, "adapter", str(workdir / "adapter-dl"))
    spec = get_backbone("chameleon")
    model = load_adapter(spec.build(seed=cfg.backbone.seed), adapter_dir, spec)
    rows = pads.dataset(f"{output_dir(cfg)}/split=val", format="parquet").to_table().to_pylist()
    total, n = 0.0, 0
    with torch.no_grad():
        for i in range(0, len(rows), 2):
            out = adapter_loss(model, spec, collate_rows(spec, rows[i:i + 2]))
            total += float(out.loss) * out.n_targets
            n += out.n_targets
    logged = history(mlc, run.info.run_id, "val/loss")[-1][1]
    assert total / n == pytest.approx(logged, rel=1e-4)


def test_evaluate_scores_what_training_logged(workdir, finished, capsys):
    """`moss evaluate --run`: the run's own config and final adapter; held-out numbers equal the logged ones."""
    from orchestrator.cli import main

    mlc, run = mlflow_run(workdir, "two-workers")
    uri = ["--set", f"tracking.tracking_uri=sqlite:///{workdir / 'mlflow.db'}"]
    assert main(["evaluate", "--run", run.info.run_id, "--out", str(workdir / "eval"), *uri]) == 0
    results = json.loads((workdir / "eval" / "results.json").read_text())
    assert results["source_run_id"] == run.info.run_id and results["adapter_config"]["moss"]["variant"] == "moss"
    for key in ("loss", "text_loss", "image_loss", "text_ppl", "image_ppl"):
        logged = history(mlc, run.info.run_id, f"val/{key}")[-1][1]
        assert results["metrics"][f"heldout/val/{key}"] == pytest.approx(logged, rel=1e-5), key
    assert results["editing"]["records"] >= 1 and "editing/code_match" in results["metrics"]
    evals = mlc.search_runs([run.info.experiment_id], filter_string=f"tags.`moss.source_run_id` = '{run.info.run_id}'")
    assert len(evals) == 1 and evals[0].data.tags["moss.kind"] == "evaluation"
    assert evals[0].data.metrics["heldout/val/loss"] == pytest.approx(results["metrics"]["heldout/val/loss"])
    assert main(["evaluate", "--run", run.info.run_id, "--into-run", "--out", str(workdir / "eval2"),
                 "--set", "evaluate.editing=false", *uri]) == 0
    after = mlc.get_run(run.info.run_id)
    assert after.data.metrics["heldout/val/loss"] == pytest.approx(results["metrics"]["heldout/val/loss"])
    assert any(f.path.startswith("evaluation/") for f in mlc.list_artifacts(run.info.run_id, "evaluation"))
    runs_uri = f"runs:/{run.info.run_id}/adapter"  # the same adapter named by URI: still linked to its run
    assert main(["evaluate", "--adapter", runs_uri, "--out", str(workdir / "eval3"), "--set", "evaluate.editing=false",
                 *uri]) == 0
    linked = mlc.search_runs([run.info.experiment_id], filter_string=f"tags.`moss.source_run_id` = '{run.info.run_id}'")
    assert len(linked) == 2
    assert json.loads((workdir / "eval3" / "results.json").read_text())["adapter"] == runs_uri
    assert main(["evaluate", "--run", "0" * 32, *uri]) == 2  # an unknown run: a clear error, exit 2
    assert "cannot read MLflow run" in capsys.readouterr().err
    # the training runs and these evaluation runs: the canaries of `finished` reached none of the store
    texts = store_texts(f"sqlite:///{workdir / 'mlflow.db'}", workdir / "store-scan")
    assert not [t for t in texts if SECRET in t or "abc123xyz" in t]


def test_relaunching_a_finished_run_repeats_no_work(workdir, finished):
    cfg, _ = finished
    mlc, before = mlflow_run(workdir, "two-workers")
    n_before = len(history(mlc, before.info.run_id, "train/loss"))
    summary = run_training(cfg, plan_run(cfg))
    mlc, after = mlflow_run(workdir, "two-workers")
    assert after.info.run_id == before.info.run_id and summary["resumed"] and summary["status"] == "FINISHED"
    assert len(history(mlc, after.info.run_id, "train/loss")) == n_before == 10
    assert history(mlc, after.info.run_id, "resumed_from_step") == [(10, 10.0)]
    assert after.data.tags["moss.relaunches"] == "1"


def test_run_names_never_mix_runs(workdir, finished):
    cfg, _ = finished
    fresh = run_config(workdir, "another-name", "train.max_steps=10")
    assert plan_run(fresh).mlflow_run_id is None  # a new name starts from scratch
    with pytest.raises(ConfigError, match="different backbone/adapter/data"):
        plan_run(run_config(workdir, "two-workers", "adapter.rank=4"))
    with pytest.raises(ConfigError, match="checkpoints are not in"):
        plan_run(run_config(workdir, "two-workers", f"storage.path={workdir / 'elsewhere'}"))


def train_workers(since: float) -> list[psutil.Process]:
    return [p for p in psutil.process_iter(["cmdline", "create_time"])
            if (p.info["cmdline"] or [""])[0].startswith("ray::RayTrainWorker") and p.info["create_time"] >= since]


def registered_checkpoint(run_dir: Path) -> bool:
    """The controller has registered a checkpoint (its folder alone may still be being reported)."""
    try:
        return bool(json.loads((run_dir / "checkpoint_manager_snapshot.json").read_text()).get("latest_checkpoint_result"))
    except (FileNotFoundError, json.JSONDecodeError):
        return False


def test_killed_worker_resumes_from_the_latest_checkpoint(workdir):
    cfg = run_config(workdir, "killed", "train.max_steps=40", "train.ckpt_every=4", "train.eval_every=100")
    plan = plan_run(cfg)
    result: dict = {}
    started = time.time() - 1
    thread = threading.Thread(target=lambda: result.update(summary=run_training(cfg, plan)), daemon=True)
    thread.start()
    deadline = time.monotonic() + 300
    while not registered_checkpoint(Path(plan.run_dir)):
        assert thread.is_alive() and time.monotonic() < deadline, "no checkpoint was registered"
        time.sleep(0.1)
    victims = train_workers(started)
    assert len(victims) == 2
    os.kill(victims[-1].pid, signal.SIGKILL)
    thread.join(timeout=600)
    summary = result["summary"]
    assert summary["status"] == "FINISHED" and summary["step"] == 40
    mlc, run = mlflow_run(workdir, "killed")  # one MLflow run, not two
    resumed = history(mlc, run.info.run_id, "resumed_from_step")
    assert len(resumed) == 1 and resumed[0][1] % 4 == 0 and 0 < resumed[0][1] < 40, resumed
    steps = [s for s, _ in history(mlc, run.info.run_id, "train/loss")]
    assert set(steps) == set(range(1, 41))  # every step logged; those after the checkpoint twice at most
    assert {"adapter"} <= {f.path for f in mlc.list_artifacts(run.info.run_id)}


def test_fsdp_strategy_one_epoch_saves_a_loadable_adapter(workdir):
    """Also: one epoch (max_epochs=1, no max_steps) ends at the step count planned from the shard rows."""
    cfg = run_config(workdir, "fsdp", "train.strategy=fsdp", "train.max_steps=null", "train.max_epochs=1",
                     "train.micro_batch=4", "train.ckpt_every=2", "train.eval_every=100", "adapter.conv_space=lowrank")
    plan = plan_run(cfg)
    assert plan.total_steps == (plan.train_rows // 2) // 4 >= 2  # rows per worker // micro-batch
    summary = run_training(cfg, plan)
    assert summary["status"] == "FINISHED" and summary["step"] == plan.total_steps
    mlc, run = mlflow_run(workdir, "fsdp")
    adapter_dir = mlc.download_artifacts(run.info.run_id, "adapter", str(workdir / "fsdp-adapter"))
    spec = get_backbone("chameleon")
    model = load_adapter(spec.build(seed=0), adapter_dir, spec)
    assert any(float(p.abs().sum()) > 0 for n, p in model.named_parameters() if "lora_img_B" in n)
    assert "val/image_loss" in run.data.metrics


def test_emu2_trains_evaluates_and_generates(workdir):
    """backbone.name=emu2 through the same pipeline: Ray Data shards with pixels, Ray Train (1 worker), the
    regression loss falls below the untrained model's, `moss evaluate` reproduces it, `moss generate` regresses
    an 8x8 grid of embeddings."""
    from orchestrator.backbones import backbone_from_config
    from orchestrator.cli import main
    from orchestrator.evaluation.heldout import heldout_metrics

    cfg = run_config(workdir, "emu2", "backbone.name=emu2", "train.max_steps=30", "train.eval_every=10",
                     "train.ckpt_every=10", "scaling.num_workers=1", "scaling.cpus_per_worker=1")
    manifest = preprocess(cfg)  # Ray Data
    assert manifest["outputs"]["rejected"] == 0 and manifest["backbone"]["pixels"]["image_size"] == 32
    spec = backbone_from_config(cfg)
    from tests.integration.test_preprocess import direct_encodings, shard_rows

    direct = direct_encodings(spec, workdir / "sample")
    rows = shard_rows(Path(output_dir(cfg)))
    assert len(rows) == manifest["inputs"]["records"]
    for row in rows:  # shards hold exactly what spec.encode gives, the images as lossless PNGs of its pixels
        ex, want = example_from_row(row), direct[row["id"]]
        assert ex["input_ids"].tolist() == want["input_ids"].tolist() and ex["image_layout"] == want["image_layout"]
        assert [im.tobytes() for im in ex["images"]] == [im.tobytes() for im in want["images"]]
    untrained = heldout_metrics(spec.build(seed=cfg.backbone.seed), spec, cfg)["metrics"]["val/image_loss"]
    summary = run_training(cfg, plan_run(cfg))
    assert summary["step"] == 30
    mlc, run = mlflow_run(workdir, "emu2")
    curve = [v for _, v in history(mlc, run.info.run_id, "val/image_loss")]
    assert len(curve) == 3 and curve[-1] < curve[0] and curve[-1] < 0.75 * untrained, (untrained, curve)
    assert "val/image_ppl" not in run.data.metrics and "val/text_ppl" in run.data.metrics  # MSE has no perplexity

    uri = ["--set", f"tracking.tracking_uri=sqlite:///{workdir / 'mlflow.db'}"]
    assert main(["evaluate", "--run", run.info.run_id, "--out", str(workdir / "eval-emu2"), *uri]) == 0
    results = json.loads((workdir / "eval-emu2" / "results.json").read_text())
    assert results["metrics"]["heldout/val/image_loss"] == pytest.approx(curve[-1], rel=1e-5)
    assert {"editing/embedding_mse", "editing/embedding_cos"} <= set(results["metrics"])
    out = workdir / "gen-emu2"
    assert main(["generate", "--run", run.info.run_id, "--prompt", "Draw a red square:", "--image-first",
                 "--out", str(out), *uri]) == 0
    answer = json.loads((out / "answer.json").read_text())
    image = next(p for p in answer["parts"] if p["type"] == "image")
    assert (image["height"], image["width"]) == (8, 8) and "diffusion decoder" in image["note"]
    import numpy as np

    assert np.load(out / image["embeddings"]).shape == (8, 8, 32)


def test_a_local_cluster_refuses_node_types_it_cannot_place(ray_cluster, monkeypatch):
    """scaling.node_type names a cluster.yaml node type; a local Ray has none: refuse, do not wait forever."""
    from orchestrator import runtime

    monkeypatch.setattr(runtime, "_STARTED_LOCALLY", True)  # as init_ray() without RAY_ADDRESS records it
    cfg = load_config(None, ["scaling.node_type=gpu_8x"])
    with pytest.raises(ConfigError, match=r"\['gpu_8x'\].*scaling.node_type=null"):
        runtime.refuse_unplaceable([cfg.scaling.ray_resources()], "train")
    runtime.refuse_unplaceable([load_config(None, []).scaling.ray_resources()], "train")  # CPU only: fine
    monkeypatch.setattr(runtime, "_STARTED_LOCALLY", False)  # a cluster reached by address may autoscale
    runtime.refuse_unplaceable([cfg.scaling.ray_resources()], "train")


def test_a_damaged_latest_checkpoint_resumes_from_the_previous_one(workdir):
    cfg = run_config(workdir, "damaged", "train.max_steps=6", "train.ckpt_every=2", "train.eval_every=100",
                     "scaling.num_workers=1", "scaling.cpus_per_worker=1")
    plan = plan_run(cfg)
    run_training(cfg, plan)
    kept = sorted(p for p in Path(plan.run_dir).glob("checkpoint_*") if p.is_dir())  # not Ray's manager snapshot
    assert len(kept) == 2  # keep_checkpoints: steps 4 and 6
    state = kept[-1] / "optimizer.safetensors"
    state.write_bytes(state.read_bytes()[: state.stat().st_size // 2])  # the upload of step 6 was cut short
    more = run_config(workdir, "damaged", "train.max_steps=8", "train.ckpt_every=2", "train.eval_every=100",
                      "scaling.num_workers=1", "scaling.cpus_per_worker=1")
    summary = run_training(more, plan_run(more))
    assert summary["status"] == "FINISHED" and summary["step"] == 8
    mlc, run = mlflow_run(workdir, "damaged")
    assert history(mlc, run.info.run_id, "resumed_from_step") == [(4, 4.0)]  # not 6: that one was damaged
    assert {s for s, _ in history(mlc, run.info.run_id, "train/loss")} == set(range(1, 9))


def _sleep_loop(config):
    time.sleep(600)


def test_a_train_controller_killed_while_its_workers_start_leaves_no_reservation(ray_cluster, tmp_path):
    """The leak behind hung retries: Tune kills a trial while its Train controller's worker group is starting
    (after its placement group exists, before Ray Train registers the group with its own cleaner). Ray keeps
    such a group for the job's lifetime; the reaper releases it."""
    import ray

    from orchestrator.runtime import OrphanReaper, orphaned_placement_groups

    @ray.remote(num_cpus=0)
    class TrialDriver:
        def pid(self):
            return os.getpid()

        def fit(self, storage):
            import ray.train
            from ray.train.torch import TorchTrainer

            TorchTrainer(_sleep_loop, scaling_config=ray.train.ScalingConfig(num_workers=1, resources_per_worker={"CPU": 0.5}),
                         run_config=ray.train.RunConfig(storage_path=storage, name="killed-early")).fit()

    def worker_groups():
        return [k for k, v in ray.util.placement_group_table().items()
                if v["state"] != "REMOVED" and any("CPU" in b for b in v["bundles"].values())]

    total = ray.cluster_resources()["CPU"]
    driver = TrialDriver.remote()
    pid = ray.get(driver.pid.remote())
    driver.fit.remote(str(tmp_path))
    deadline = time.time() + 300
    while not worker_groups():
        assert time.time() < deadline, "the controller never made its workers' placement group"
        time.sleep(0.05)
    os.kill(pid, signal.SIGKILL)  # the trial dies; its controller with it
    deadline = time.time() + 60
    while not orphaned_placement_groups():
        assert time.time() < deadline, "the dead controller's group was never seen as orphaned"
        time.sleep(0.5)
    with OrphanReaper(every_s=1):
        deadline = time.time() + 60
        while worker_groups() or ray.available_resources().get("CPU", 0) < total:
            assert time.time() < deadline, f"still reserved: {worker_groups()}"
            time.sleep(0.5)
