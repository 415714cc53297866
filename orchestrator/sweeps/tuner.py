"""A sweep: a Ray Tune Tuner whose trials each run the training driver, under one MLflow parent run.

The sweep is named (``<space>-<time>-<hex>`` unless given); its Tune state lives in
``<storage>/<name>/`` beside ``moss_sweep.json`` (which space, which parent run). ``resume`` restores
that state: finished trials are not rerun, unfinished ones resume their Train runs from checkpoints.
"""

from __future__ import annotations

import datetime as dt
import itertools
import json
import secrets
from dataclasses import dataclass

import yaml

from ..config import ConfigError, RunConfig, set_dotted
from ..plan.report import enforce, plan_configs
from ..runtime import OrphanReaper, refuse_unplaceable
from ..tracking import mlflow as tracking
from ..tracking import tags as TAG
from ..tracking.redact import redact, redact_document, redact_text
from ..files import absolute, exists, read_json, write_json
from ..training.driver import load_manifest, planned_steps
from .space import Space, derive_concurrency, load_space
from .trial import trial_config

MARKER = "moss_sweep.json"


@dataclass
class SweepPlan:
    name: str
    space: Space
    base: RunConfig
    storage: str
    tracking_uri: str
    steps: dict[str, int]  # backbone -> planned steps of a trial
    overrides: tuple[str, ...] = ()
    parent_run_id: str | None = None  # known when resuming

    @property
    def sweep_dir(self) -> str:
        return f"{self.storage.rstrip('/')}/{self.name}"


def absolutize(space: Space) -> None:
    """Paths in the base config made absolute: trials run in other working directories."""
    base = space.base_config()
    set_dotted(space.base_tree, "data.output", absolute(base.data.output))
    set_dotted(space.base_tree, "storage.path", absolute(base.storage.path or "ray_results"))
    set_dotted(space.base_tree, "tracking.tracking_uri", tracking.tracking_uri(base.tracking.tracking_uri))


def latest_sweep(storage: str, space_name: str) -> str | None:
    from pyarrow.fs import FileSelector

    from ..files import arrow_fs

    fs, root = arrow_fs(storage)

    found = []
    for info in fs.get_file_info(FileSelector(root, allow_not_found=True)):
        marker = read_json(f"{storage.rstrip('/')}/{info.base_name}/{MARKER}") if info.type.name == "Directory" else None
        if marker and marker.get("space") == space_name:
            found.append((marker["created"], info.base_name))
    return max(found)[1] if found else None


def plan_sweep(space_path: str, overrides=(), name: str | None = None, resume: bool = False,
               or_start: bool = False) -> SweepPlan:
    """Every check that needs no Ray: the space, `moss plan` of every trial (checkpoints, image budget,
    memory on the node each lands on), every trial's shards, the sweep name vs storage. ``or_start`` (with
    ``name``): resume the sweep if it exists, else start it (a scheduler's retry of the same command)."""
    if or_start and (name is None or resume):
        raise ConfigError("--resume-or-start needs --name (the sweep to continue or start), and no --resume")
    space = load_space(space_path, overrides)
    preflight = preflight_space(space)
    enforce(preflight, space.base_config().plan.enforce, "sweep")
    absolutize(space)  # load_space checked the space; this changes only paths
    base = space.base_config()
    storage = base.storage.path
    if resume and name is None:
        name = latest_sweep(storage, space.name)
        if name is None:
            raise ConfigError(f"no sweep of space {space.name!r} in {storage} to resume")
    name = name or f"{space.name}-{dt.datetime.now().strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(2)}"
    plan = SweepPlan(name=name, space=space, base=base, storage=storage, tracking_uri=base.tracking.tracking_uri,
                     steps=trial_steps(space), overrides=tuple(overrides))
    marker = read_json(f"{plan.sweep_dir}/{MARKER}", hint=f"it records the space and MLflow parent run of sweep {name!r}: "
                       "restore it from your storage's versions or backups, or start a new sweep under another --name")
    if or_start:
        resume = marker is not None
    if resume:
        if marker is None:
            raise ConfigError(f"no sweep {name!r} in {storage} to resume (no {MARKER})")
        if marker["digest"] != space.digest:
            raise ConfigError(f"sweep {name!r} was started with another space or base config (hash {marker['digest']}, "
                              f"now {space.digest}): resume it with the same file and --set overrides "
                              f"({' '.join(marker.get('overrides', [])) or 'none'}), from the same working directory "
                              "(relative paths and the default tracking URI resolve against it)")
        plan.parent_run_id = marker["parent_run_id"]
    elif marker is not None or exists(f"{plan.sweep_dir}/tuner.pkl"):
        raise ConfigError(f"sweep {name!r} already exists in {storage}: pass --resume to continue it, "
                          "or choose another --name")
    return plan


def trial_configs(space: Space) -> list[tuple[str, dict, RunConfig]]:
    """(label, searched values, config) of every trial the space enumerates (the grid, or the grid and
    choice values of a random / Optuna search), in grid order; a sampled range (uniform, loguniform, randint)
    at both of its bounds, crossed with those, so the plan sees its extremes."""
    points = enumerable_points(space)
    bounds = {k: p.values_to_check()[:2] for k, p in space.model.params.items()
              if p.kind in ("uniform", "loguniform", "randint")}
    if bounds:
        ends = list(itertools.product(*bounds.values()))
        points = [{**point, **dict(zip(bounds, end))} for point in points for end in ends][:2000]
    out = []
    for i, point in enumerate(points, 1):
        cfg, applied = trial_config(space, {"grid": point}, "plan")
        out.append((f"trial {i}", applied, cfg))
    return out


def preflight_space(space: Space):
    """`moss plan` of every trial of ``space``."""
    return plan_configs(str(space.path), trial_configs(space))


def enumerable_points(space: Space, cap: int = 2000) -> list[dict]:
    """The grid, or (random / optuna search) the combinations of every grid and choice param's values."""
    if space.model.search.algorithm == "grid":
        return space.grid_points() or [{}]
    lists = {k: (p.grid if p.grid is not None else p.choice) for k, p in space.model.params.items()
             if p.grid is not None or p.choice is not None}
    return [dict(zip(lists, combo)) for combo in itertools.islice(itertools.product(*lists.values()), cap)] or [{}]


def trial_steps(space: Space) -> dict[str, int]:
    """Every distinct backbone/data config the trials can use has shards (with a val split when the metric
    needs one), and reports the metric on every result; -> planned steps per backbone."""
    m = space.model
    steps: dict[str, int] = {}
    manifests: dict[tuple, dict] = {}
    for point in enumerable_points(space):
        cfg, _ = trial_config(space, {"grid": point}, "validate")
        key = (cfg.backbone.name, cfg.backbone.checkpoint, cfg.data.output)
        if key not in manifests:
            manifests[key] = load_manifest(cfg)[1]
        outputs = manifests[key]["outputs"]
        if m.metric.startswith("val/") and not outputs["val"]:
            raise ConfigError(f"metric {m.metric} needs val rows, but the {cfg.backbone.name} shards have none "
                              "(data.val_fraction when preprocessing)")
        if m.metric.startswith("val/") and cfg.train.ckpt_every % cfg.train.eval_every:
            raise ConfigError(f"trial {point}: train.ckpt_every={cfg.train.ckpt_every} is not a multiple of "
                              f"train.eval_every={cfg.train.eval_every}")
        steps[cfg.backbone.name] = planned_steps(cfg, outputs["train"])
    return steps


def open_parent(plan: SweepPlan) -> str:
    """Create the sweep's parent run (space, resolved base config, status) or reopen it on resume; waits for an
    unreachable server for up to tracking.startup_wait_s."""
    wait_s = plan.base.tracking.startup_wait_s
    mlc = tracking.client(plan.tracking_uri, wait_s)
    if plan.parent_run_id is not None:
        mlc.update_run(plan.parent_run_id, status="RUNNING")
        relaunches = int(mlc.get_run(plan.parent_run_id).data.tags.get(TAG.RESUMES, "0")) + 1
        mlc.set_tag(plan.parent_run_id, TAG.RESUMES, str(relaunches))
        return plan.parent_run_id
    m = plan.space.model
    exp_id = tracking.ensure_experiment(mlc, plan.base.tracking.experiment, plan.tracking_uri)
    tags = redact({TAG.KIND: "sweep", TAG.SWEEP: plan.name, TAG.SPACE: m.name, TAG.METRIC: m.metric,
                   TAG.MODE: m.mode, TAG.RUN_NAME: plan.name, **plan.base.tracking.tags})
    run_id = tracking.create_run(tracking.client(plan.tracking_uri), exp_id, plan.name, tags, plan.tracking_uri, wait_s)
    write_json(f"{plan.sweep_dir}/{MARKER}", {
        "space": m.name, "digest": plan.space.digest, "parent_run_id": run_id,
        "overrides": [redact_text(o) for o in plan.overrides],
        "tracking_uri": redact_text(plan.tracking_uri), "experiment": plan.base.tracking.experiment,
        "created": dt.datetime.now(dt.timezone.utc).isoformat()})
    params = {"space": m.name, "metric": m.metric, "mode": m.mode, "search": m.search.algorithm,
              "scheduler": m.scheduler.type, "num_trials": str(plan.space.num_trials()),
              "space_digest": plan.space.digest, **tracking.provenance()}
    params.update({f"searched.{k}": f"{p.kind} {getattr(p, p.kind)}"[:500] for k, p in m.params.items()})
    tracking.log_params_once(mlc, run_id, params)
    mlc.log_text(run_id, redact_document(plan.space.text, plan.space.path.name), f"space/{plan.space.path.name}")
    mlc.log_text(run_id, yaml.safe_dump(redact(plan.base.model_dump(mode="json")), sort_keys=False),
                 "space/base_config.yaml")
    mlc.log_text(run_id, json.dumps(tracking.environment(), indent=2), "environment.json")
    return run_id


def build_tuner(plan: SweepPlan, parent_run_id: str):
    import ray
    from ray import tune

    from .progress import TrialProgress
    from .status import ChildRunStatus
    from .trial import run_trial

    space, m = plan.space, plan.space.model
    missing = sorted(set(m.resources.driver) - set(ray.cluster_resources()))
    if missing:
        raise ConfigError(f"resources.driver asks for {missing}, which no node of this Ray cluster has: trials "
                          "would wait forever (cluster.yaml gives the head node TRAIN_DRIVER)")
    refuse_unplaceable([cfg.scaling.ray_resources() for _, _, cfg in trial_configs(space)], "a trial's workers")
    # what every trial needs besides its sampled params; kept out of the param space (Tune prints that)
    constants = {"name": plan.name, "parent_run_id": parent_run_id, "tracking_uri": plan.tracking_uri,
                 "space": space.to_state()}
    trainable = tune.with_resources(tune.with_parameters(run_trial, sweep=constants), m.resources.driver)
    if plan.parent_run_id is not None and tune.Tuner.can_restore(plan.sweep_dir):
        return tune.Tuner.restore(plan.sweep_dir, trainable=trainable, resume_unfinished=True, resume_errored=True)
    max_t = space.max_t(plan.base) if m.scheduler.type == "asha" else None
    search_alg, max_concurrent = space.search_alg(derive_concurrency(space, plan.base, ray.cluster_resources()))
    return tune.Tuner(
        trainable,
        param_space=space.param_space(),
        tune_config=tune.TuneConfig(
            metric=m.metric, mode=m.mode, num_samples=m.num_samples, search_alg=search_alg,
            scheduler=space.scheduler(plan.base), max_concurrent_trials=max_concurrent),
        run_config=tune.RunConfig(
            name=plan.name, storage_path=plan.storage, failure_config=tune.FailureConfig(max_failures=m.max_failures),
            callbacks=[ChildRunStatus(plan.name, parent_run_id, plan.tracking_uri, plan.base.tracking.experiment,
                                      max_t),
                       TrialProgress(plan.name, m.metric, space.num_trials(), max_t)],
            verbose=1),
    )


def run_sweep(plan: SweepPlan, report_dir: str | None = None) -> dict:
    """Open the parent run, fit the Tuner, close the parent, write the comparison report. Ray must be up.

    Once the parent is open MLflow never fails the sweep: the parent's and the child runs' writes go through
    one Tracker journaling in the sweep's folder, and a report MLflow cannot give is skipped, saying how to
    write it later.
    """
    from ..tracking.compare import build_report
    from ..tracking.outage import say, unreachable
    from ..tracking.resilient import Tracker
    from .status import SWEEPS, SweepTracking, send_trial_journals, settle_statuses

    parent = open_parent(plan)
    plan.parent_run_id = plan.parent_run_id or parent
    tracker = Tracker.for_run(plan.tracking_uri, plan.sweep_dir, plan.base.tracking)
    tracker.adopt()  # what an earlier driver of this sweep left in the journal goes first
    SWEEPS[plan.name] = sweep = SweepTracking(tracker)
    out_dir = report_dir or f"report/{plan.name}"
    try:
        with OrphanReaper():  # trials killed by the scheduler or by a fault must not starve later ones
            results = build_tuner(plan, parent).fit()
        sent = tracker.flush(plan.base.tracking.flush_timeout_s)  # the children's statuses, before reading them
        # Ctrl-C: Tune saves its state and fit() returns; trials it stopped never reached the callback
        interrupted = mark_interrupted(plan, parent, sweep, read=sent)
        tracker.set_tags(parent, {TAG.TRIALS: str(len(results)), TAG.FAILED_TRIALS: str(results.num_errors)})
        trial_ids = sweep.started | {r.metrics["trial_id"] for r in results if (r.metrics or {}).get("trial_id")}
        pending = ([] if sent else [plan.sweep_dir]) + send_trial_journals(plan.storage, plan.name, trial_ids,
                                                                           plan.tracking_uri)
        report = None
        if not pending:
            try:
                settle_statuses(plan.tracking_uri, parent)  # every writer of the children's ends is done
                report = build_report(plan.tracking_uri, parent_run_id=parent, out_dir=out_dir)
            except Exception as err:
                if not unreachable(err):
                    raise
        if report is None:  # MLflow is away: the sweep still ends, saying how to get the report later
            later = "when MLflow is back: " + "; ".join(
                [f"moss tracking replay {d}" for d in pending]
                + [f"moss compare --parent-run {parent} --tracking-uri {redact_text(plan.tracking_uri)} --out {out_dir}"])
            say(f"no comparison report (MLflow at {redact_text(plan.tracking_uri)} is unreachable); {later}")
            report = {"table_text": "(no comparison table: MLflow was unreachable at the end of the sweep)",
                      "markdown": f"not written; {later}", "plots": [], "best": None, "comparison": None,
                      "skipped": True}
    except BaseException as err:
        tracker.terminate(parent, "KILLED" if isinstance(err, KeyboardInterrupt) else "FAILED")
        tracker.close()
        raise
    finally:
        SWEEPS.pop(plan.name, None)
    status = "KILLED" if interrupted else "FINISHED" if results.num_errors == 0 else "FAILED"
    tracker.terminate(parent, status)
    tracker.close(timeout=None if sent else 0)  # MLflow was away for the last flush: do not wait twice
    return {"name": plan.name, "parent_run_id": parent, "trials": len(results), "errors": results.num_errors,
            "interrupted": interrupted, "overrides": plan.overrides,
            "report": report, "sweep_dir": plan.sweep_dir, "tracking_uri": plan.tracking_uri,
            "space": str(plan.space.path)}


def mark_interrupted(plan: SweepPlan, parent: str, sweep, read: bool = True) -> int:
    """Child runs still running after fit() returned (an interrupted sweep): KILLED, tag interrupted. Which:
    those MLflow has tagged running (``read``: the callback's statuses are all in); while MLflow is away, the
    trials the callback (``sweep``: status.SweepTracking) saw start and not end."""
    from ..tracking.outage import unreachable
    from .status import child_run

    running = None
    if read:
        try:
            mlc = tracking.client(plan.tracking_uri)
            exp_id = mlc.get_run(parent).info.experiment_id
            running = [r.info.run_id for r in mlc.search_runs(
                [exp_id], f"tags.`{TAG.PARENT}` = '{parent}' and tags.`{TAG.STATUS}` = 'running'")]
        except Exception as err:
            if not unreachable(err):
                raise
    if running is None:
        running = [child_run(plan.name, parent, plan.base.tracking.experiment, t) for t in sorted(sweep.running)]
    for run in running:
        sweep.tracker.set_tags(run, {TAG.STATUS: "interrupted"})
        sweep.tracker.terminate(run, "KILLED")
    return len(running)


def format_summary(summary: dict) -> str:
    report = summary["report"]
    sets = "".join(f" --set {o}" for o in summary["overrides"])
    lines = [f"sweep {summary['name']!r}: {summary['trials']} trial(s), {summary['errors']} failed"
             + (f", interrupted ({summary['interrupted']} trial(s) unfinished)" if summary["interrupted"] else ""),
             report["table_text"],
             f"report:      {report['markdown']}, {report['html']} (plots beside them; also on the parent "
             "run's artifacts, report/)",
             f"MLflow:      parent run {summary['parent_run_id']} at {redact_text(summary['tracking_uri'])}",
             f"browse:      {tracking.ui_hint(summary['tracking_uri'])}",
             f"Tune state:  {summary['sweep_dir']}",
             f"resume:      moss sweep {summary['space']}{sets} --name {summary['name']} --resume"]
    return "\n".join(lines)


def describe_plan(plan: SweepPlan) -> str:
    steps = ", ".join(f"{b}: {n} steps" for b, n in plan.steps.items())
    verb = "resumes" if plan.parent_run_id else "starts"
    return f"{verb} sweep {plan.name!r}: {plan.space.num_trials()} trial(s); per trial {steps}"
