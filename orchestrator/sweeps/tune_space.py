"""A search space as Ray Tune objects: param_space, scheduler and search algorithm (the one module here
that imports Ray Tune)."""

from __future__ import annotations

import random
from typing import TYPE_CHECKING, Any

from ray import tune

from .schema import Param

if TYPE_CHECKING:
    from ..config import RunConfig
    from .space import Space

#: the step counter ASHA's rungs are measured in (an optimizer step, reported by every trial; it survives a
#: resumed sweep, unlike Tune's training_iteration)
TIME_ATTR = "step"


def tune_domain(param: Param, as_choice: bool = False):
    kind = param.kind
    if kind == "grid":
        return tune.choice(param.grid) if as_choice else tune.grid_search(param.grid)
    if kind == "choice":
        return tune.choice(param.choice)
    sample = {"uniform": tune.uniform, "loguniform": tune.loguniform, "randint": tune.randint}[kind]
    return sample(*getattr(param, kind))


def param_space(space: Space) -> dict:
    """Tune's param_space: {"grid": grid_search(points), "sample": {key: domain}}."""
    m = space.model
    as_choice = m.search.algorithm != "grid"
    out: dict[str, Any] = {}
    points = space.grid_points()
    if m.search.seed is not None:
        # a seeded random order: ASHA lets the first trials at a rung through, so the grid's own order
        # (e.g. every LoRA first) would decide who gets past the early rungs
        random.Random(m.search.seed).shuffle(points)
    if points:
        out["grid"] = tune.grid_search(points)
    sample = {k: tune_domain(p, as_choice) for k, p in m.params.items() if p.grid is None or as_choice}
    if sample:
        out["sample"] = sample
    return out


def scheduler(space: Space, base: RunConfig):
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    s = space.model.scheduler
    if s.type == "fifo":
        return FIFOScheduler()
    return ASHAScheduler(time_attr=TIME_ATTR, max_t=space.max_t(base), grace_period=s.grace_period,
                         reduction_factor=s.reduction_factor)


def search_alg(space: Space, max_concurrent: int):
    """-> (search algorithm, max_concurrent_trials for TuneConfig). Tune ignores the latter for its
    variant generator (a SearchGenerator, not a Searcher), which takes the limit itself."""
    from ray.tune.search import BasicVariantGenerator

    s = space.model.search
    if s.algorithm == "optuna":
        from ray.tune.search.optuna import OptunaSearch

        return OptunaSearch(seed=s.seed), max_concurrent
    return BasicVariantGenerator(random_state=s.seed, max_concurrent=max_concurrent), None
