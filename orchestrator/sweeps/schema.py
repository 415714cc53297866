"""The search space file: a YAML file naming a base run config, deltas to it, and the dotted keys to search.

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

These models check the file itself; ``validate.py`` checks the trial configs it produces.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from ..training.metrics import RANKABLE

DISTRIBUTIONS = ("grid", "choice", "uniform", "loguniform", "randint")
METRICS = RANKABLE  # what a sweep can rank trials by (orchestrator/training/metrics.py)


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
    #: repeat every configuration with train.seed = 0 .. num_seeds - 1 (a `train.seed` grid): the report then
    #: gives mean ± 95% CI per configuration and paired differences to LoRA at equal seeds
    num_seeds: int | None = Field(None, ge=1)
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
        if self.num_seeds is not None:
            sampled = [k for k, p in self.params.items() if p.grid is None]
            if self.search.algorithm != "grid" or sampled:
                raise ValueError("num_seeds repeats each configuration over seeds, so every param must be a grid and "
                                 f"search.algorithm grid (got {self.search.algorithm}"
                                 + (f", sampled params {sampled})" if sampled else ")")
                                 + "; a sampled param would differ between the seeds of one configuration")
            seeds = Param(grid=list(range(self.num_seeds)))
            if self.params.get("train.seed", seeds) != seeds or "train.seed" in self.set:
                raise ValueError("num_seeds sets the train.seed grid: do not also give train.seed in params or set")
            self.params["train.seed"] = seeds  # (already there when a saved sweep state is read back)
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
