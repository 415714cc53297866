"""The training driver: check a run can start (before Ray), open its MLflow run, fit a TorchTrainer.

The same driver serves `moss train`, `jobs/train.py` and (later) each Tune trial. A run is named: its
checkpoints live in <storage>/<name>/ beside ``moss_run.json`` (which config it belongs to, which
MLflow run tracks it). Relaunching a name resumes that run; a name that is new starts from scratch.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import secrets
from dataclasses import asdict, dataclass

from ..backbones.registry import spec_class
from ..config import ConfigError, RunConfig
from ..console import TrainProgress
from ..data.manifest import check_dropped
from ..files import absolute, exists, read_json, write_json
from ..runtime import OrphanReaper
from ..data.pipeline import output_dir
from ..tracking import mlflow as tracking
from ..tracking import tags as TAG
from ..tracking.redact import redact, redact_text
from .data import train_columns
from .metrics import SUMMARY

MARKER = "moss_run.json"
DAMAGED_MARKER = ("it records which config and MLflow run {run!r} belongs to. Restore it from your storage's versions "
                  "or backups, or start over under a new train.run_name (or delete {dir})")
RAY_SNAPSHOT = "checkpoint_manager_snapshot.json"


@dataclass
class RunPlan:
    name: str
    storage: str  # absolute local path or URI
    shards: str
    train_rows: int
    val_rows: int
    total_steps: int
    tracking_uri: str
    config_hash: str
    identity: str
    micro_per_epoch: int = 0  # micro-batches each worker reads per epoch
    mlflow_run_id: str | None = None  # known when relaunching (or given: a sweep's child run)
    relaunch: bool = False  # the run name was launched before (its marker exists)
    manifest: dict | None = None

    @property
    def run_dir(self) -> str:
        return f"{self.storage.rstrip('/')}/{self.name}"

    def loop_args(self) -> dict:
        return {"total_steps": self.total_steps, "tracking_uri": self.tracking_uri, "mlflow_run_id": self.mlflow_run_id,
                "config_hash": self.config_hash, "has_val": self.val_rows > 0,
                "val_path": f"{self.shards}/split=val", "micro_per_epoch": self.micro_per_epoch}


def micro_batches_per_epoch(cfg: RunConfig, train_rows: int) -> int:
    """Each worker gets an equal share of the rows and drops its last incomplete micro-batch."""
    return (train_rows // cfg.scaling.num_workers) // cfg.train.micro_batch


def planned_steps(cfg: RunConfig, train_rows: int) -> int:
    """max_steps, or fewer when max_epochs ends first."""
    t = cfg.train
    micro_per_epoch = micro_batches_per_epoch(cfg, train_rows)
    if micro_per_epoch == 0:
        raise ConfigError(f"{train_rows} train rows give {cfg.scaling.num_workers} workers fewer than "
                          f"train.micro_batch={t.micro_batch} rows each")
    by_epochs = (t.max_epochs * micro_per_epoch) // t.grad_accum if t.max_epochs else None
    steps = min(s for s in (t.max_steps, by_epochs) if s is not None)
    if steps == 0:
        raise ConfigError(f"max_epochs={t.max_epochs} is less than one step of grad_accum={t.grad_accum} micro-batches")
    return steps


#: settings a resumed run must keep: they fix the data position's meaning (micro-batches per worker), the
#: data order, the objective and the optimizer state restored from the checkpoint
RESUME_FIXED = ("train.seed", "train.micro_batch", "train.grad_accum", "train.shuffle_buffer", "train.lr",
                "train.weight_decay", "train.betas", "train.warmup_steps", "train.min_lr_ratio", "train.text_weight",
                "train.image_weight", "train.loss_normalization", "scaling.num_workers")


#: what a run's marker written before a RESUME_FIXED key existed meant by it (the behaviour then; a run with
#: a loss weight of 0 divided by both modalities' targets then, and by the weighted ones' now)
FIXED_BEFORE = {"train.loss_normalization": "tokens"}


def fixed_settings(cfg: RunConfig) -> dict:
    """RESUME_FIXED's values, train.loss_normalization resolved for the backbone (auto is not a meaning)."""
    dump = cfg.model_dump(mode="json")
    out = {}
    for key in RESUME_FIXED:
        section, name = key.split(".")
        out[key] = dump[section][name]
    out["train.loss_normalization"] = cfg.train.normalization_for(spec_class(cfg.backbone.name).image_loss_is_ce)
    return out


def run_identity(cfg: RunConfig, manifest: dict) -> str:
    """What a relaunch must keep: backbone, adapter and the shards (the manifest's data config hash).

    train / scaling / tracking settings may change between launches (e.g. more max_steps).
    """
    parts = {"model": cfg.config_hash("backbone", "adapter"), "shards": manifest.get("config_hash")}
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]


def new_run_name(cfg: RunConfig) -> str:
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    return f"{cfg.backbone.name}-{cfg.adapter.variant}-{stamp}-{secrets.token_hex(2)}"


def load_manifest(cfg: RunConfig) -> tuple[str, dict]:
    """The config's shards (absolute) and their manifest; ConfigError when missing or for another backbone."""
    shards = absolute(output_dir(cfg))
    manifest = read_json(f"{shards}/manifest.json", hint="run `moss preprocess` with this config again")
    if manifest is None:
        raise ConfigError(f"no shards at {shards} (manifest.json missing): run `moss preprocess` with this config "
                          f"(backbone {cfg.backbone.name}) first")
    made_for = manifest["backbone"]
    if (made_for["name"], made_for["checkpoint"]) != (cfg.backbone.name, cfg.backbone.checkpoint):
        raise ConfigError(f"the shards in {shards} were tokenized for {made_for['name']} ({made_for['checkpoint']}), "
                          f"not {cfg.backbone.name} ({cfg.backbone.checkpoint})")
    want = spec_class(cfg.backbone.name).shard_settings(cfg.backbone.options())
    have = {k: made_for.get(k, {}) for k in want}
    if have != want:
        raise ConfigError(f"the shards in {shards} were tokenized with {have}, not {want} (backbone options, e.g. "
                          "backbone.image_min_pixels / image_max_pixels): preprocess again with this config")
    check_dropped(manifest, cfg.data.max_dropped_fraction, f"the shards in {shards}")
    return shards, manifest


def plan_run(cfg: RunConfig, mlflow_run_id: str | None = None) -> RunPlan:
    """Every check that needs no Ray: shards and manifest, run name vs what storage and MLflow hold.

    ``mlflow_run_id``: the MLflow run this launch must log into (a sweep trial's child run, created
    before the trial can fail); a relaunch must have been tracked by that same run.
    """
    shards, manifest = load_manifest(cfg)
    train_rows, val_rows = manifest["outputs"]["train"], manifest["outputs"]["val"]
    storage = absolute(cfg.storage.path or "ray_results")
    plan = RunPlan(name=cfg.train.run_name or new_run_name(cfg), storage=storage, shards=shards,
                   train_rows=train_rows, val_rows=val_rows, total_steps=planned_steps(cfg, train_rows),
                   micro_per_epoch=micro_batches_per_epoch(cfg, train_rows),
                   tracking_uri=tracking.tracking_uri(cfg.tracking.tracking_uri), config_hash=cfg.config_hash(),
                   identity=run_identity(cfg, manifest), manifest=manifest, mlflow_run_id=mlflow_run_id)
    check_relaunch(cfg, plan)
    return plan


def check_relaunch(cfg: RunConfig, plan: RunPlan) -> None:
    """Same name: same identity and tracking store, then resume; a new name must be new everywhere."""
    marker = read_json(f"{plan.run_dir}/{MARKER}", hint=DAMAGED_MARKER.format(run=plan.name, dir=plan.run_dir))
    if marker is None:
        if exists(f"{plan.run_dir}/{RAY_SNAPSHOT}"):
            raise ConfigError(f"{plan.run_dir} holds a Ray Train run that `moss train` did not create: choose another "
                              "train.run_name or storage.path")
        if plan.mlflow_run_id is not None:  # given by the caller, who created it for this name
            return
        mlc = tracking.client(plan.tracking_uri, cfg.tracking.startup_wait_s)  # waits out a restarting server
        exp = mlc.get_experiment_by_name(cfg.tracking.experiment)
        if exp is not None and tracking.find_run(mlc, exp.experiment_id, plan.name) is not None:
            raise ConfigError(f"MLflow experiment {cfg.tracking.experiment!r} already has a run named {plan.name!r}, "
                              f"but its checkpoints are not in {plan.storage}: set storage.path to where that run "
                              "stored them, or choose a new train.run_name")
        return
    if marker["identity"] != plan.identity:
        raise ConfigError(f"run {plan.name!r} in {plan.storage} was started with a different backbone/adapter/data "
                          f"(shards) config (hash {marker['identity']}, now {plan.identity}): choose a new train.run_name")
    fixed = marker.get("fixed", {})
    fixed = {**FIXED_BEFORE, **fixed}  # and a marker that kept auto meant what auto resolves to (same backbone)
    key = "train.loss_normalization"
    fixed[key] = cfg.train.normalization_for(spec_class(cfg.backbone.name).image_loss_is_ce, fixed[key])
    changed = {k: (v, fixed.get(k)) for k, v in fixed_settings(cfg).items() if fixed.get(k) != v}
    if changed:
        listed = ", ".join(f"{k}: {old!r} -> {new!r}" for k, (new, old) in changed.items())
        raise ConfigError(f"run {plan.name!r} cannot resume with changed {listed} (they fix its data position, "
                          "objective or optimizer state): keep them, or choose a new train.run_name")
    if marker["experiment"] != cfg.tracking.experiment or (
            marker["tracking_uri"] != redact_text(plan.tracking_uri) and not same_store(plan, marker)):
        raise ConfigError(f"run {plan.name!r} is tracked in experiment {marker['experiment']!r} at "
                          f"{marker['tracking_uri']}; relaunch it with the same tracking settings")
    if plan.mlflow_run_id not in (None, marker["mlflow_run_id"]):
        raise ConfigError(f"run {plan.name!r} is tracked by MLflow run {marker['mlflow_run_id']}, "
                          f"not {plan.mlflow_run_id}")
    plan.mlflow_run_id = marker["mlflow_run_id"]
    plan.relaunch = True


def same_store(plan: RunPlan, marker: dict) -> bool:
    """The tracking URI changed (a new head node has a new address) but the store is the same one: it holds
    the run's MLflow run. Markers record an address, and must not pin a run to a head that is gone."""
    try:
        run = tracking.client(plan.tracking_uri).get_run(marker["mlflow_run_id"])
    except Exception:  # not in this store, or unreachable: the plain refusal stands
        return False
    return run.data.tags.get(TAG.RUN_NAME) == plan.name


def ordered_ingest(names: list[str]) -> dict:
    from ray.data import ExecutionOptions

    return {name: ExecutionOptions(preserve_order=True) for name in names}


def build_trainer(cfg: RunConfig, plan: RunPlan, callbacks: list | tuple = ()):
    import ray.data
    import ray.train
    from ray.train import DataConfig
    from ray.train.torch import TorchTrainer

    from .loop import train_loop


    splits = ["train"]  # val is read by each worker from the shards (ValRows)
    columns = train_columns(spec_class(cfg.backbone.name))  # the class says it: no checkpoint is loaded here
    datasets = {s: ray.data.read_parquet(f"{plan.shards}/split={s}", columns=columns,
                                         num_cpus=cfg.scaling.ingest_cpus_per_task) for s in splits}
    for ds in datasets.values():
        ds.context.enable_progress_bars = False  # re-read every epoch: bars would drown the step log
    s, t = cfg.scaling, cfg.train
    return TorchTrainer(
        train_loop,
        # "logged_config": redacted here, where the secrets in the environment are known (the adapter's model)
        train_loop_config={"config": cfg.model_dump(mode="json"), "run": plan.loop_args(),
                           "logged_config": redact(cfg.model_dump(mode="json"))},
        scaling_config=ray.train.ScalingConfig(num_workers=s.num_workers, use_gpu=s.use_gpu,
                                               resources_per_worker=s.ray_resources(),
                                               placement_strategy=s.placement_strategy),
        datasets=datasets,
        # rows keep the shards' order (then each worker's seeded shuffle buffer), so a rerun sees the same
        # data order
        dataset_config=DataConfig(datasets_to_split=["train"], execution_options=ordered_ingest(splits)),
        run_config=ray.train.RunConfig(
            name=plan.name, storage_path=plan.storage,
            failure_config=ray.train.FailureConfig(max_failures=t.max_failures),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=t.keep_checkpoints),
            callbacks=list(callbacks),
        ),
    )


def run_training(cfg: RunConfig, plan: RunPlan, callbacks: list | tuple = ()) -> dict:
    """Open (or reopen) the MLflow run, fit, close the run; -> the summary. Ray must be initialised.

    ``callbacks``: Ray Train callbacks (a sweep trial passes Tune's TuneReportCallback). Opening waits for an
    unreachable tracking server (tracking.startup_wait_s); after that MLflow never fails the run: writes go
    through a Tracker that journals in the run's folder, and the summary falls back to what Ray Train returned.
    """
    from ..tracking.resilient import Tracker

    run_id = tracking.open_run(cfg, plan.name, plan.tracking_uri, plan.mlflow_run_id)
    plan.mlflow_run_id = run_id
    resumed = plan.relaunch
    if not resumed:  # first thing after creating the run, so a relaunch always finds it
        write_json(f"{plan.run_dir}/{MARKER}", {
            "identity": plan.identity, "fixed": fixed_settings(cfg), "mlflow_run_id": run_id,
            "experiment": cfg.tracking.experiment, "tracking_uri": redact_text(plan.tracking_uri),
            "created": dt.datetime.now(dt.timezone.utc).isoformat(),
        })
    tracker = Tracker.for_run(plan.tracking_uri, plan.run_dir, cfg.tracking)
    tracker.adopt()  # what an earlier launch left in the journal goes first
    try:
        tracking.log_run_inputs(cfg, tracker, run_id, resumed)
        if not resumed:
            tracking.log_manifest(tracker, run_id, plan.manifest, plan.shards)
        with OrphanReaper(), TrainProgress(plan.tracking_uri, run_id, plan.total_steps):  # (progress: when quiet)
            result = build_trainer(cfg, plan, callbacks).fit()
    except BaseException as err:
        tracker.adopt()
        # a run already ended from outside (a sweep marks trials it stopped early) keeps that status
        tracker.terminate(run_id, "KILLED" if isinstance(err, KeyboardInterrupt) else "FAILED", only_if_running=True)
        tracker.close()
        raise
    tracker.adopt()  # what rank 0 could not send (it ended, or died, while MLflow was away)
    tracker.terminate(run_id, "FINISHED")
    summary = final_summary(plan, run_id, result, left=tracker.close())
    returned = getattr(result, "return_value", None) or {}
    summary.update(run_name=plan.name, resumed=resumed, total_steps=plan.total_steps, step=returned.get("step"),
                   checkpoint=result.checkpoint.path if result.checkpoint else None,
                   adapter=f"{summary['artifact_uri'] or f'runs:/{run_id}'}/adapter",
                   plan={k: v for k, v in asdict(plan).items() if k != "manifest"})
    return summary


def final_summary(plan: RunPlan, run_id: str, result, left: int) -> dict:
    """MLflow's view of the finished run; while MLflow is away (``left`` writes still in the journal, or the
    read fails), Ray Train's last report and return value, and ``tracking`` saying what is pending."""
    from ..tracking.outage import brief, unreachable

    if left:
        note = (f"{left} write(s) not yet in MLflow, kept in {plan.run_dir}/journal: when the server is back, "
                f"run `moss tracking replay {plan.run_dir}`")
    else:
        try:
            return {**tracking.run_summary(plan.tracking_uri, run_id), "tracking": None}
        except Exception as err:
            if not unreachable(err):
                raise
            note = f"everything was sent, but MLflow was unreachable for the summary ({brief(err)})"
    reported = {**(getattr(result, "metrics", None) or {}), **(getattr(result, "return_value", None) or {})}
    metrics = {k: v for k, v in reported.items()
               if isinstance(v, (int, float)) and k not in ("step", "epoch", "total_steps")}
    return {"run_id": run_id, "experiment_id": None, "status": "FINISHED", "artifact_uri": None, "metrics": metrics,
            "tracking": note}


def format_summary(summary: dict) -> str:
    m = summary["metrics"]
    pending = summary.get("tracking")
    lines = [f"train: run {summary['run_name']!r} {'resumed' if summary['resumed'] else 'finished'} "
             f"at step {summary['step']}/{summary['total_steps']} "
             + (f"(MLflow status {summary['status']})" if not pending else "(MLflow unreachable: metrics from Ray Train)")]
    keys = [k for k in SUMMARY if k in m]
    lines += [f"  {k:<20} {m[k]:.4f}" for k in keys]
    where = f" in experiment {summary['experiment_id']}" if summary["experiment_id"] else ""
    lines += [f"adapter:     {summary['adapter']}  (orchestrator.moss.load_adapter)",
              f"checkpoint:  {summary['checkpoint']}",
              f"MLflow run:  {summary['run_id']}{where} at {redact_text(summary['plan']['tracking_uri'])}",
              *([f"tracking:    {pending}"] if pending else []),
              f"browse:      {tracking.ui_hint(summary['plan']['tracking_uri'])}",
              f"resume:      --set train.run_name={summary['run_name']}"]
    return "\n".join(lines)
