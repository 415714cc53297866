"""The run config: one typed schema (pydantic v2) holding every default, YAML loading, ``a.b=c``
overrides and a stable hash. Unknown keys and bad values fail here, before Ray starts (exit code 2).

The sections are defined in ``orchestrator/sections/`` and re-exported here.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from pathlib import Path
from typing import Any

import yaml
from pydantic import Field, ValidationError

from .sections.base import ConfigError, Section
from .sections.data import AlignmentSection, DataSection, FilterSection
from .sections.evaluation import EditingSection, EvaluateSection, GenerateSection, InterleavedBenchSection
from .sections.model import AdapterSection, BackboneSection, is_commit_sha
from .sections.run import NODE_TYPE_SHARE, PlanSection, ScalingSection, StorageSection, TrackingSection, TrainSection

__all__ = [
    "ConfigError", "Section", "BackboneSection", "AdapterSection", "AlignmentSection", "FilterSection", "DataSection",
    "TrainSection", "ScalingSection", "NODE_TYPE_SHARE", "PlanSection", "TrackingSection", "StorageSection",
    "GenerateSection", "EditingSection", "InterleavedBenchSection", "EvaluateSection", "is_commit_sha", "RunConfig",
    "LATER_DEFAULTS", "drop_later_defaults", "apply_override", "set_dotted", "get_dotted", "validate_tree",
    "read_yaml", "load_config", "format_validation_error",
]


class RunConfig(Section):
    backbone: BackboneSection = Field(default_factory=BackboneSection)
    adapter: AdapterSection = Field(default_factory=AdapterSection)
    data: DataSection = Field(default_factory=DataSection)
    train: TrainSection = Field(default_factory=TrainSection)
    scaling: ScalingSection = Field(default_factory=ScalingSection)
    tracking: TrackingSection = Field(default_factory=TrackingSection)
    storage: StorageSection = Field(default_factory=StorageSection)
    generate: GenerateSection = Field(default_factory=GenerateSection)
    evaluate: EvaluateSection = Field(default_factory=EvaluateSection)
    editing: EditingSection = Field(default_factory=EditingSection)
    interleavedbench: InterleavedBenchSection = Field(default_factory=InterleavedBenchSection)
    plan: PlanSection = Field(default_factory=PlanSection)

    def config_hash(self, *sections: str) -> str:
        """sha256 (16 hex) of the resolved config, or of the named sections only. Keys added after runs were
        first tracked are left out while at their defaults (LATER_DEFAULTS), so a run or sweep started
        before them keeps its identity and resumes across the upgrade."""
        dump = drop_later_defaults(self.model_dump(mode="json"))
        if sections:
            dump = {k: dump[k] for k in sections}
        return hashlib.sha256(json.dumps(dump, sort_keys=True).encode()).hexdigest()[:16]

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)


#: keys added after the first tracked runs, with their defaults (see RunConfig.config_hash); a new key
#: goes here with its default, or every hash (run identity, shard identity, resume checks) changes
LATER_DEFAULTS: dict[str, Any] = {
    "backbone.image_min_pixels": None, "backbone.image_max_pixels": None, "adapter.train_image_head": False,
    "data.max_dropped_fraction": 0.2, "train.loss_chunk_tokens": 1024, "scaling.node_type": None,
    "scaling.gpu_memory_gb": None, "plan": PlanSection().model_dump(mode="json"),
    "backbone.trust_remote_code": False, "backbone.revision": None, "data.image_roots": None,
    "data.allowed_schemes": None, "data.max_record_bytes": 16 * 2**20, "data.max_file_bytes": 2**30,
    "train.stall_timeout_s": 600.0, "tracking.retry_every_s": 15.0, "tracking.startup_wait_s": 300.0,
    "tracking.flush_timeout_s": 60.0, "adapter.alpha_per_rank": None, "adapter.image_rank": None,
    "adapter.match_params": None, "train.loss_normalization": "auto",
    "adapter.conv_activation": "none", "data.format": "auto", "tracking.system_metrics": "auto",
    "tracking.system_metrics_every_s": 10.0, "evaluate.batch_size": 8,
}


def drop_later_defaults(dump: dict, keys: dict[str, Any] = LATER_DEFAULTS) -> dict:
    """``dump`` without the keys of ``keys`` that hold their default (a copy; nested keys dotted)."""
    out = json.loads(json.dumps(dump))
    for dotted, default in keys.items():
        *parents, last = dotted.split(".")
        node = out
        for p in parents:
            node = node.get(p) if isinstance(node, dict) else None
        if isinstance(node, dict) and last in node and node[last] == default:
            del node[last]
    return out


def apply_override(tree: dict, assignment: str) -> None:
    """``a.b=c`` sets tree["a"]["b"] to c parsed as YAML (so 8 is an int, [1, 2] a list, null None)."""
    key, sep, raw = assignment.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set {assignment!r}: expected key.path=value")
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError:
        value = raw  # e.g. a glob such as *.jsonl (YAML reads * as an alias)
    set_dotted(tree, key.strip(), raw if isinstance(value, (dt.date, dt.datetime)) else value, f"--set {assignment!r}")


def set_dotted(tree: dict, key: str, value: Any, where: str = "") -> None:
    """tree["a"]["b"] = value for key "a.b"; a mapping value merges into a mapping already there."""
    parts = key.split(".")
    node = tree
    for p in parts[:-1]:
        node = node.setdefault(p, {})
        if not isinstance(node, dict):
            raise ConfigError(f"{where or key}: {p!r} is not a section")
    old = node.get(parts[-1])
    if isinstance(value, dict) and isinstance(old, dict):
        for k, v in value.items():
            set_dotted(old, k, v, where)
    else:
        node[parts[-1]] = value


def get_dotted(tree: dict, key: str, default: Any = None) -> Any:
    node: Any = tree
    for p in key.split("."):
        if not isinstance(node, dict) or p not in node:
            return default
        node = node[p]
    return node


def validate_tree(tree: dict, where: str | Path | None = None) -> RunConfig:
    try:
        return RunConfig.model_validate(tree)
    except ValidationError as e:
        raise ConfigError(format_validation_error(e, where)) from None


def read_yaml(path: str | Path) -> dict:
    """A YAML file whose top level is a mapping; ConfigError otherwise."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file {str(p)!r} does not exist")
    try:
        tree = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{p}: not valid YAML: {e}") from None
    if not isinstance(tree, dict):
        raise ConfigError(f"{p}: the top level must be a mapping, got {type(tree).__name__}")
    return tree


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> RunConfig:
    """YAML file (or nothing: all defaults) + overrides -> a validated RunConfig; ConfigError otherwise."""
    tree: dict[str, Any] = read_yaml(path) if path is not None else {}
    for assignment in overrides:
        apply_override(tree, assignment)
    return validate_tree(tree, path)


def format_validation_error(error: ValidationError, path) -> str:
    where = f"{path}: " if path else ""
    lines = [f"{where}invalid config ({error.error_count()} problem(s))"]
    for err in error.errors():
        loc = ".".join(str(x) for x in err["loc"]) or "(top level)"
        value = f" (got {err['input']!r})" if err["type"] != "missing" and not isinstance(err["input"], dict) else ""
        lines.append(f"  {loc}: {err['msg']}{value}")
    return "\n".join(lines)
