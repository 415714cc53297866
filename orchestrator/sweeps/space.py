"""A loaded search space: its base config tree, the trials its grid expands to, and loading one from YAML.

The file format is in ``schema.py``; everything is checked (``validate.py``) before Ray starts.
"""

from __future__ import annotations

import copy
import hashlib
import itertools
import json
import math
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from ..config import ConfigError, RunConfig, drop_later_defaults, get_dotted, read_yaml, set_dotted, validate_tree
from .schema import SearchSpace
from .validate import check_space

#: space keys added after the first tracked sweeps: out of the digest while at their defaults (a sweep
#: started before them resumes)
SPACE_LATER_DEFAULTS = {"resources.node_type": None, "resources.gpu_memory_gb": None, "resources.per_cell": [],
                        "num_seeds": None}


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
            if k not in applied and matches(tree, self.model.params[k].when):
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

    def max_t(self, base: RunConfig) -> int | None:
        return self.model.scheduler.max_t or base.train.max_steps

    def param_space(self) -> dict:
        """Tune's param_space (``tune_space.param_space``)."""
        from .tune_space import param_space

        return param_space(self)

    def scheduler(self, base: RunConfig):
        """Tune's trial scheduler (``tune_space.scheduler``)."""
        from .tune_space import scheduler

        return scheduler(self, base)

    def search_alg(self, max_concurrent: int):
        """-> (search algorithm, max_concurrent_trials for TuneConfig) (``tune_space.search_alg``)."""
        from .tune_space import search_alg

        return search_alg(self, max_concurrent)

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


def is_space_file(path: str | Path) -> bool:
    """A YAML file with a top-level `params` is a search space (run configs have only sections)."""
    try:
        return "params" in read_yaml(path)
    except ConfigError:
        return False


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
    check_space(space)
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
