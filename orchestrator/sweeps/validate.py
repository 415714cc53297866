"""Checks of a loaded search space that need no Ray and no shards: every trial config the grid (and every
bound of a distribution) can produce, `when` keys, the metric and the scheduler."""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING

from ..backbones.registry import spec_class
from ..config import ConfigError, RunConfig, get_dotted, set_dotted, validate_tree

if TYPE_CHECKING:
    from .space import Space

_MISSING = object()


def check_space(space: Space) -> RunConfig:
    """Every check that needs no Ray and no shards; -> the resolved base config."""
    base = space.base_config()
    _check_trial_configs(space, base)
    _check_whens(space, base)
    _check_schedule(space, base)
    return base


def _check_trial_configs(space: Space, base: RunConfig) -> None:
    """Each value of a distribution on the base (its `when` aside), and every grid point, validates."""
    image_losses = {_image_loss(base)}
    for key, p in space.model.params.items():
        for value in p.values_to_check():
            tree = copy.deepcopy(space.base_tree)
            set_dotted(tree, key, copy.deepcopy(value), f"params.{key}")
            image_losses.add(_image_loss(validate_tree(tree, f"{space.path}: params.{key} = {value!r}")))
    for point in space.grid_points():
        tree, _ = space.trial_tree(point)
        image_losses.add(_image_loss(validate_tree(tree, f"{space.path}: trial {point}")))
    _check_image_metric(space, image_losses)


def _check_whens(space: Space, base: RunConfig) -> None:
    m = space.model
    dump = base.model_dump(mode="json")
    whens = [k for p in m.params.values() for k in p.when] + [k for r in m.resources.per_cell for k in r.when]
    for key in whens:
        if get_dotted(dump, key, _MISSING) is _MISSING and key not in m.params:
            raise ConfigError(f"{space.path}: a `when` names {key!r}, which is neither a config key nor a param")
        if m.search.algorithm == "grid" and key in m.params and m.params[key].grid is None:
            raise ConfigError(f"{space.path}: a `when` on {key!r}, which is sampled, not a grid: a grid search "
                              "crosses grid params only; make it a grid or drop the `when`")


def _check_schedule(space: Space, base: RunConfig) -> None:
    m, t = space.model, base.train
    if m.metric.startswith("val/") and base.data.val_fraction == 0:
        raise ConfigError(f"{space.path}: metric {m.metric} needs a val split, but data.val_fraction is 0")
    if m.metric.startswith("val/") and t.ckpt_every % t.eval_every:
        raise ConfigError(f"{space.path}: train.ckpt_every={t.ckpt_every} must be a multiple of "
                          f"train.eval_every={t.eval_every}: every result a trial reports must carry {m.metric}")
    if m.scheduler.type == "asha":
        if "train.max_steps" in m.params and m.scheduler.max_t is None:
            raise ConfigError(f"{space.path}: train.max_steps is searched: set scheduler.max_t")
        if space.max_t(base) is None:
            raise ConfigError(f"{space.path}: ASHA needs scheduler.max_t (or train.max_steps in the base config)")
        if m.scheduler.grace_period >= space.max_t(base):
            raise ConfigError(f"{space.path}: scheduler.grace_period={m.scheduler.grace_period} must be below "
                              f"max_t={space.max_t(base)} steps")
    if m.search.algorithm == "grid" and not space.grid_points() and any(p.grid for p in m.params.values()):
        raise ConfigError(f"{space.path}: the grid produced no trial")


def _check_image_metric(space: Space, image_losses: set[tuple[str, str]]) -> None:
    """A backbone whose image loss is not a cross-entropy (a regression of embeddings: MSE or 1 - cosine) has
    no image perplexity, and early stopping must not rank different kinds of image loss against each other
    (such a backbone with another, or MSE with cosine)."""
    m = space.model
    regressions = sorted((name, loss) for name, loss in image_losses if not spec_class(name).image_loss_is_ce)
    if not regressions:
        return
    if m.metric.endswith("ppl") and m.metric != "val/text_ppl":
        name, loss = regressions[0]
        raise ConfigError(f"{space.path}: metric {m.metric}: {name}'s image loss ({loss}) is a regression, it has no perplexity")
    if m.scheduler.type == "asha" and len(image_losses) > 1 and m.metric.endswith(("/loss", "image_loss")):
        kinds = ", ".join(f"{name} ({loss})" for name, loss in sorted(image_losses))
        raise ConfigError(f"{space.path}: ASHA would rank different image losses against each other by {m.metric}: "
                          f"{kinds}. Sweep one backbone and one backbone.image_regression at a time, or use "
                          "scheduler: {type: fifo}")


def _image_loss(cfg: RunConfig) -> tuple[str, str]:
    """(backbone, kind of image loss), as the backbone's spec says."""
    return cfg.backbone.name, spec_class(cfg.backbone.name).image_loss_kind(cfg.backbone.options())
