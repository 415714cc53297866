"""Search spaces: a YAML file naming a base run config, deltas to it, and the dotted keys to search.

```yaml
name: smoke
base: ../jobs/configs/sample.yaml        # relative to this file; omit for every default
set: {train.max_steps: 24}               # deltas applied to the base before any trial
params:                                  # any dotted config key (or a whole section as a mapping)
  adapter.variant: {grid: [lora, moe_lora, moss]}
  adapter.kernel_size: {grid: [1, 3], when: {adapter.variant: moss}}
  train.lr: {loguniform: [1.0e-4, 1.0e-2]}
metric: val/image_loss
mode: min
scheduler: {type: asha, grace_period: 4, reduction_factor: 2}
```

Everything is checked here, before Ray starts: unknown keys, bad distributions, empty grids, and
every trial config the grid (and every bound of a distribution) can produce.
"""

from __future__ import annotations

import copy
import hashlib
import itertools
import json
import math
import random
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from ..config import ConfigError, RunConfig, drop_later_defaults, get_dotted, read_yaml, set_dotted, validate_tree
from ..training.metrics import RANKABLE

DISTRIBUTIONS = ("grid", "choice", "uniform", "loguniform", "randint")
#: space keys added after the first tracked sweeps: out of the digest while at their defaults (a sweep
#: started before them resumes)
SPACE_LATER_DEFAULTS = {"resources.node_type": None, "resources.gpu_memory_gb": None, "resources.per_cell": []}
METRICS = RANKABLE  # what a sweep can rank trials by (orchestrator/training/metrics.py)
#: the step counter ASHA's rungs are measured in (an optimizer step, reported by every trial; it survives a
#: resumed sweep, unlike Tune's training_iteration)
TIME_ATTR = "step"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Param(_Strict):
    """One searched key: exactly one distribution, optionally only `when` other keys have given values."""

    grid: list[Any] | None = None
    choice: list[Any] | None = None
    uniform: tuple[float, float] | None = None
    loguniform: tuple[float, float] | None = None
    randint: tuple[int, int] | None = None  # [low, high): high excluded, as in ray.tune.randint
    #: {dotted key: value or list of values}: the param applies only to trials whose config matches
    when: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _one(self) -> Param:
        given = [d for d in DISTRIBUTIONS if getattr(self, d) is not None]
        if len(given) != 1:
            raise ValueError(f"give exactly one of {', '.join(DISTRIBUTIONS)} (got {given or 'none'})")
        kind = given[0]
        if kind in ("grid", "choice") and not getattr(self, kind):
            raise ValueError(f"an empty {kind}")
        if kind in ("uniform", "loguniform", "randint"):
            low, high = getattr(self, kind)
            if not low < high:
                raise ValueError(f"{kind}: low {low} must be below high {high}")
            if kind == "loguniform" and low <= 0:
                raise ValueError(f"loguniform: low {low} must be > 0")
        return self

    @property
    def kind(self) -> str:
        return next(d for d in DISTRIBUTIONS if getattr(self, d) is not None)

    def values_to_check(self) -> list[Any]:
        """Values that must each give a valid config: every grid/choice value, the bounds otherwise."""
        if self.kind in ("grid", "choice"):
            return list(getattr(self, self.kind))
        low, high = getattr(self, self.kind)
        if self.kind == "randint":
            return [low, high - 1]
        return [low, high, low + 0.37 * (high - low)]  # a non-integral value: int fields reject float ranges

    def tune_domain(self, as_choice: bool = False):
        from ray import tune

        kind = self.kind
        if kind == "grid":
            return tune.choice(self.grid) if as_choice else tune.grid_search(self.grid)
        if kind == "choice":
            return tune.choice(self.choice)
        return {"uniform": tune.uniform, "loguniform": tune.loguniform, "randint": tune.randint}[kind](*getattr(self, kind))

    def applies(self, tree: dict) -> bool:
        """Whether ``tree`` (a config tree; its defaults count) matches every `when` condition."""
        return matches(tree, self.when)


def matches(tree: dict, when: dict[str, Any]) -> bool:
    """Whether a config tree (its defaults count) has, for every key of ``when``, that value or one of
    that list of values."""
    try:
        tree = RunConfig.model_validate(tree).model_dump(mode="json")
    except ValidationError:
        pass
    for key, want in when.items():
        have = get_dotted(tree, key)
        if have not in (want if isinstance(want, list) else [want]):
            return False
    return True


class Search(_Strict):
    #: grid: grid params crossed (Tune's variant generator), other params sampled once per grid point
    #: and repeat; random: every param sampled (grids as choices); optuna: TPE (pip install '.[optuna]')
    algorithm: Literal["grid", "random", "optuna"] = "grid"
    seed: int | None = 0


class Scheduler(_Strict):
    type: Literal["fifo", "asha"] = "fifo"
    grace_period: int = Field(1, ge=1)  # steps every trial runs before it can be stopped
    reduction_factor: float = Field(2.0, gt=1)  # keep the best 1/reduction_factor at each rung
    max_t: int | None = Field(None, ge=1)  # steps; null: train.max_steps of the base config


class WorkerResources(_Strict):
    """The Ray Train worker group of a trial (each set field overrides that scaling.* key)."""

    workers: int | None = Field(None, ge=1)
    cpus_per_worker: float | None = Field(None, gt=0)
    gpus_per_worker: float | None = Field(None, ge=0)  # > 0 turns scaling.use_gpu on
    node_type: str | None = None  # a cluster.yaml node type the workers must land on (scaling.node_type)
    gpu_memory_gb: float | None = Field(None, gt=0)  # for `moss plan` without a cluster file

    def scaling_deltas(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for field, key in (("workers", "num_workers"), ("cpus_per_worker", "cpus_per_worker"),
                           ("node_type", "node_type"), ("gpu_memory_gb", "gpu_memory_gb")):
            if getattr(self, field) is not None:
                out[f"scaling.{key}"] = getattr(self, field)
        if self.gpus_per_worker is not None:
            out["scaling.use_gpu"] = self.gpus_per_worker > 0
            if self.gpus_per_worker > 0:
                out["scaling.gpus_per_worker"] = self.gpus_per_worker
        return out


class CellResources(WorkerResources):
    """Resources for the trials whose config matches ``when`` (e.g. the largest MoSS cells on an 8-GPU node
    with FSDP), plus any other config deltas they need there (``set``: e.g. train.strategy, grad_accum)."""

    when: dict[str, Any] = Field(min_length=1)
    set: dict[str, Any] = Field(default_factory=dict)

    def deltas(self) -> dict[str, Any]:
        return {**self.scaling_deltas(), **self.set}


class Resources(WorkerResources):
    """Per trial: the Ray Train worker group (overrides scaling.*), per-cell exceptions, and the trial
    driver's own resources."""

    #: the trial driver's Ray resources (it starts and watches the TorchTrainer; no compute). By default
    #: memory only, no CPU: Ray Data needs whole free CPUs beside the workers. On clusters a custom
    #: resource such as {TRAIN_DRIVER: 0.01} (cluster.yaml's head node) keeps drivers off spot nodes
    driver: dict[str, float] = Field(default_factory=lambda: {"memory": float(2**28)})
    #: rules tried in order; the first whose `when` matches a trial's config applies to it
    per_cell: list[CellResources] = Field(default_factory=list)


class SearchSpace(_Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
    description: str = ""
    base: str | None = None  # run config YAML, relative to the space file
    set: dict[str, Any] = Field(default_factory=dict)
    params: dict[str, Param]
    metric: str = "val/loss"
    mode: Literal["min", "max"] = "min"
    num_samples: int = Field(1, ge=1)
    search: Search = Field(default_factory=Search)
    scheduler: Scheduler = Field(default_factory=Scheduler)
    #: trials running at once; null: as many as the cluster's GPUs (or CPUs) fit
    max_concurrent_trials: int | None = Field(None, ge=1)
    resources: Resources = Field(default_factory=Resources)
    max_failures: int = Field(1, ge=0)  # a failed trial is retried this many times (from its last checkpoint)

    @model_validator(mode="after")
    def _check(self) -> SearchSpace:
        if not self.params:
            raise ValueError("params is empty: name at least one key to search")
        if self.metric not in METRICS:
            raise ValueError(f"metric {self.metric!r} is not reported by training; one of {', '.join(METRICS)}")
        conditional = {k for k, p in self.params.items() if p.when}
        for key, p in self.params.items():
            chained = conditional & set(p.when)
            if chained:
                raise ValueError(f"params.{key}.when refers to {sorted(chained)}, which have a `when` of their own")
        if self.search.algorithm == "optuna":
            try:
                import optuna  # noqa: F401
            except ImportError:
                raise ValueError("search.algorithm optuna needs optuna: pip install 'moss-orchestrator[optuna]'") from None
        return self


class Space:
    """A loaded space: the model, its base config tree (base + set + resources) and where it came from."""

    def __init__(self, model: SearchSpace, base_tree: dict, path: Path, text: str):
        self.model, self.base_tree, self.path, self.text = model, base_tree, path, text

    @property
    def name(self) -> str:
        return self.model.name

    def to_state(self) -> dict:
        """What a trial needs to rebuild the space (JSON-able; travels in Tune's param_space)."""
        return {"model": self.model.model_dump(mode="json"), "base_tree": self.base_tree, "path": str(self.path),
                "text": self.text}

    @classmethod
    def from_state(cls, state: dict) -> Space:
        return cls(SearchSpace.model_validate(state["model"]), state["base_tree"], Path(state["path"]), state["text"])

    @property
    def digest(self) -> str:
        """Hash of the space and its resolved base config: a resumed sweep must match it."""
        space = drop_later_defaults(self.model.model_dump(mode="json"), SPACE_LATER_DEFAULTS)
        payload = {"space": space, "base": self.base_tree}
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]

    def base_config(self) -> RunConfig:
        return validate_tree(self.base_tree, f"{self.path} (base + set)")

    def trial_tree(self, sampled: dict[str, Any]) -> tuple[dict, dict[str, Any]]:
        """base + the params that apply (`when` checked against base + sampled) -> (tree, applied)."""
        tree = copy.deepcopy(self.base_tree)
        unconditional = {k: v for k, v in sampled.items() if not self.model.params[k].when}
        for k, v in unconditional.items():
            set_dotted(tree, k, copy.deepcopy(v), f"params.{k}")
        applied = dict(unconditional)
        for k, v in sampled.items():
            if k not in applied and self.model.params[k].applies(tree):
                set_dotted(tree, k, copy.deepcopy(v), f"params.{k}")
                applied[k] = v
        for i, rule in enumerate(self.model.resources.per_cell):
            if matches(tree, rule.when):
                for k, v in rule.deltas().items():
                    set_dotted(tree, k, copy.deepcopy(v), f"resources.per_cell[{i}].{k}")
                break
        return tree, applied

    def grid_points(self) -> list[dict[str, Any]]:
        """The crossed grid params, without the duplicates that params whose `when` fails would make."""
        grid = {k: p.grid for k, p in self.model.params.items() if p.grid is not None}
        if self.model.search.algorithm != "grid" or not grid:
            return []
        points, seen = [], set()
        for combo in itertools.product(*grid.values()):
            _, applied = self.trial_tree(dict(zip(grid, combo)))
            key = json.dumps(applied, sort_keys=True, default=str)
            if key not in seen:
                seen.add(key)
                points.append(applied)
        return points

    def num_trials(self) -> int:
        points = self.grid_points()
        return (len(points) if points else 1) * self.model.num_samples

    def param_space(self) -> dict:
        """Tune's param_space: {"grid": grid_search(points), "sample": {key: domain}}."""
        from ray import tune

        m = self.model
        as_choice = m.search.algorithm != "grid"
        space: dict[str, Any] = {}
        points = self.grid_points()
        if m.search.seed is not None:
            # a seeded random order: ASHA lets the first trials at a rung through, so the grid's own order
            # (e.g. every LoRA first) would decide who gets past the early rungs
            random.Random(m.search.seed).shuffle(points)
        if points:
            space["grid"] = tune.grid_search(points)
        sample = {k: p.tune_domain(as_choice) for k, p in m.params.items() if p.grid is None or as_choice}
        if sample:
            space["sample"] = sample
        return space

    def check(self) -> RunConfig:
        """Every check that needs no Ray and no shards; -> the resolved base config."""
        base = self.base_config()
        m = self.model
        image_losses = {_image_loss(base)}
        for key, p in m.params.items():  # each value of a distribution on the base (its when aside)
            for value in p.values_to_check():
                tree = copy.deepcopy(self.base_tree)
                set_dotted(tree, key, copy.deepcopy(value), f"params.{key}")
                image_losses.add(_image_loss(validate_tree(tree, f"{self.path}: params.{key} = {value!r}")))
        for point in self.grid_points():
            tree, _ = self.trial_tree(point)
            image_losses.add(_image_loss(validate_tree(tree, f"{self.path}: trial {point}")))
        self._check_image_metric(image_losses)
        dump = base.model_dump(mode="json")
        whens = [k for p in m.params.values() for k in p.when] + [k for r in m.resources.per_cell for k in r.when]
        for key in whens:
            if get_dotted(dump, key, _MISSING) is _MISSING and key not in m.params:
                raise ConfigError(f"{self.path}: a `when` names {key!r}, which is neither a config key nor a param")
            if m.search.algorithm == "grid" and key in m.params and m.params[key].grid is None:
                raise ConfigError(f"{self.path}: a `when` on {key!r}, which is sampled, not a grid: a grid search "
                                  "crosses grid params only; make it a grid or drop the `when`")
        t = base.train
        if m.metric.startswith("val/") and base.data.val_fraction == 0:
            raise ConfigError(f"{self.path}: metric {m.metric} needs a val split, but data.val_fraction is 0")
        if m.metric.startswith("val/") and t.ckpt_every % t.eval_every:
            raise ConfigError(f"{self.path}: train.ckpt_every={t.ckpt_every} must be a multiple of "
                              f"train.eval_every={t.eval_every}: every result a trial reports must carry {m.metric}")
        if m.scheduler.type == "asha":
            if "train.max_steps" in m.params and m.scheduler.max_t is None:
                raise ConfigError(f"{self.path}: train.max_steps is searched: set scheduler.max_t")
            if self.max_t(base) is None:
                raise ConfigError(f"{self.path}: ASHA needs scheduler.max_t (or train.max_steps in the base config)")
            if m.scheduler.grace_period >= self.max_t(base):
                raise ConfigError(f"{self.path}: scheduler.grace_period={m.scheduler.grace_period} must be below "
                                  f"max_t={self.max_t(base)} steps")
        if m.search.algorithm == "grid" and not self.grid_points() and any(p.grid for p in m.params.values()):
            raise ConfigError(f"{self.path}: the grid produced no trial")
        return base

    def _check_image_metric(self, image_losses: set[tuple[str, str]]) -> None:
        """Emu2's image loss is an embedding regression (MSE or 1 - cosine), the others' a cross-entropy over
        codes: no image perplexity for emu2, and no early stopping that ranks different kinds of image loss
        against each other (emu2 with another backbone, or MSE with cosine)."""
        m = self.model
        if not any(name == "emu2" for name, _ in image_losses):
            return
        if m.metric.endswith("ppl") and m.metric != "val/text_ppl":
            raise ConfigError(f"{self.path}: metric {m.metric}: emu2's image loss is a regression, it has no perplexity")
        if m.scheduler.type == "asha" and len(image_losses) > 1 and m.metric.endswith(("/loss", "image_loss")):
            kinds = ", ".join(f"{name} ({loss})" for name, loss in sorted(image_losses))
            raise ConfigError(f"{self.path}: ASHA would rank different image losses against each other by {m.metric}: "
                              f"{kinds}. Sweep one backbone and one backbone.image_regression at a time, or use "
                              "scheduler: {type: fifo}")

    def max_t(self, base: RunConfig) -> int | None:
        return self.model.scheduler.max_t or base.train.max_steps

    def scheduler(self, base: RunConfig):
        from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

        s = self.model.scheduler
        if s.type == "fifo":
            return FIFOScheduler()
        return ASHAScheduler(time_attr=TIME_ATTR, max_t=self.max_t(base), grace_period=s.grace_period,
                             reduction_factor=s.reduction_factor)

    def search_alg(self, max_concurrent: int):
        """-> (search algorithm, max_concurrent_trials for TuneConfig). Tune ignores the latter for its
        variant generator (a SearchGenerator, not a Searcher), which takes the limit itself."""
        from ray.tune.search import BasicVariantGenerator

        s = self.model.search
        if s.algorithm == "optuna":
            from ray.tune.search.optuna import OptunaSearch

            return OptunaSearch(seed=s.seed), max_concurrent
        return BasicVariantGenerator(random_state=s.seed, max_concurrent=max_concurrent), None

    def describe(self) -> str:
        m = self.model
        lines = [f"# sweep {m.name!r}: {self.num_trials()} trial(s), {m.search.algorithm} search, "
                 f"{m.scheduler.type} scheduler, ranked by {m.metric} ({m.mode})"]
        for point in self.grid_points():
            lines.append("#   " + ", ".join(f"{k}={v}" for k, v in point.items()))
        for k, p in m.params.items():
            if p.grid is None or m.search.algorithm != "grid":
                lines.append(f"#   {k}: {p.kind} {getattr(p, p.kind)}" + (f" when {p.when}" if p.when else ""))
        return "\n".join(lines)


_MISSING = object()


def is_space_file(path: str | Path) -> bool:
    """A YAML file with a top-level `params` is a search space (run configs have only sections)."""
    try:
        return "params" in read_yaml(path)
    except ConfigError:
        return False


def _image_loss(cfg: RunConfig) -> tuple[str, str]:
    """(backbone, kind of image loss): emu2's regression (mse / cosine), the others' code cross-entropy."""
    if cfg.backbone.name == "emu2":
        return "emu2", cfg.backbone.image_regression or "mse"
    return cfg.backbone.name, "cross-entropy"


def load_space(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> Space:
    """Parse and check a space; ``overrides`` (``a.b=c``) apply to its base config after `set`."""
    from ..config import apply_override

    p = Path(path)
    tree = read_yaml(p)
    try:
        model = SearchSpace.model_validate(tree)
    except ValidationError as e:
        lines = [f"{p}: invalid search space ({e.error_count()} problem(s))"]
        for err in e.errors():
            loc = ".".join(str(x) for x in err["loc"]) or "(top level)"
            lines.append(f"  {loc}: {err['msg']}")
        raise ConfigError("\n".join(lines)) from None
    base_tree: dict = {}
    if model.base is not None:
        base_path = (p.parent / model.base).resolve()
        if not base_path.is_file():
            raise ConfigError(f"{p}: base config {model.base!r} not found (looked at {base_path})")
        base_tree = read_yaml(base_path)
    for key, value in {**model.set, **model.resources.scaling_deltas()}.items():
        set_dotted(base_tree, key, copy.deepcopy(value), f"{p}: set.{key}")
    for assignment in overrides:
        apply_override(base_tree, assignment)
    space = Space(model, base_tree, p, p.read_text())
    space.check()
    return space


def derive_concurrency(space: Space, base: RunConfig, cluster: dict[str, float]) -> int:
    """max_concurrent_trials, else as many trials as the cluster's GPUs (or half its CPUs: the other half
    streams data) fit at once."""
    if space.model.max_concurrent_trials:
        return space.model.max_concurrent_trials
    s = base.scaling
    if s.use_gpu:
        return max(1, math.floor(cluster.get("GPU", 0) / (s.num_workers * s.gpus_per_worker)))
    return max(1, math.floor(cluster.get("CPU", 1) / (2 * s.num_workers * s.cpus_per_worker)))
