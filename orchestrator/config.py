"""The run config: one typed schema (pydantic v2) holding every default, YAML loading, ``a.b=c``
overrides and a stable hash. Unknown keys and bad values fail here, before Ray starts (exit code 2).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
import typing
from pathlib import Path
from typing import Any, ClassVar, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model, field_validator, model_validator

from .backbones.registry import backbone_names
from .moss.config import MossConfig, check_field  # torch-free: the data workers validate configs too


def is_commit_sha(value: str | None) -> bool:
    return value is not None and len(value) == 40 and all(c in "0123456789abcdef" for c in value.lower())


class ConfigError(ValueError):
    """A config that cannot run; the CLI prints it and exits with code 2."""


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class BackboneSection(Section):
    #: a registered backbone (orchestrator/backbones/registry.py): chameleon, anole (chameleon with Anole's
    #: checkpoint), emu2, emu3, janus
    name: str = "chameleon"
    #: "tiny" / "small" / "large" (random-init presets) or a hub id / local path
    checkpoint: str = "tiny"
    seed: int = 0  # weights of a random-init preset (a checkpoint's weights are its own)
    #: emu2 only: the loss of its continuous image embeddings (default mse); other backbones' image
    #: tokens are codes with a cross-entropy loss
    image_regression: Literal["mse", "cosine"] | None = None
    #: emu3 only: the image processor's pixel area bounds (its defaults: 512*512 and 1024*1024, 8 px per
    #: code). Every image is resized into [min, max] pixels, so these trade resolution for sequence budget:
    #: 256*256 px is 32x32 codes (~1,070 tokens), 512*512 px is 64x64 (~4,170). `moss plan` shows the cost.
    #: The other backbones have a fixed image grid.
    image_min_pixels: int | None = Field(None, ge=1)
    image_max_pixels: int | None = Field(None, ge=1)  # emu3 only: see image_min_pixels
    #: run the checkpoint's own Python code (Emu2's hub checkpoints ship modeling_emu.py). Opt-in, and a hub
    #: id then needs ``revision`` pinned to a commit SHA, so the code that runs is the code you reviewed
    trust_remote_code: bool = False
    #: the hub commit (40 hex) or tag/branch every load of a hub checkpoint asks for; null: the default branch
    revision: str | None = Field(None, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\-/]{0,127}$")

    @field_validator("name")
    @classmethod
    def _registered(cls, value: str) -> str:
        if value not in backbone_names():
            raise ValueError(f"unknown backbone {value!r}; known: {sorted(backbone_names())}")
        return value

    @model_validator(mode="after")
    def _check(self) -> BackboneSection:
        if self.image_regression is not None and self.name != "emu2":
            raise ValueError(f"image_regression applies to emu2 (continuous image embeddings) only; "
                             f"{self.name} predicts VQ codes with a cross-entropy loss")
        pixels = {k: v for k, v in (("image_min_pixels", self.image_min_pixels),
                                    ("image_max_pixels", self.image_max_pixels)) if v is not None}
        if pixels and self.name != "emu3":
            raise ValueError(f"{', '.join(pixels)}: only emu3 resizes images to a chosen area; {self.name} has a "
                             "fixed image grid")
        if len(pixels) == 2 and self.image_min_pixels > self.image_max_pixels:
            raise ValueError(f"image_min_pixels={self.image_min_pixels} > image_max_pixels={self.image_max_pixels}")
        if self.trust_remote_code and self.is_hub_id() and not is_commit_sha(self.revision):
            raise ValueError(f"trust_remote_code runs {self.checkpoint}'s own Python code: pin it with backbone.revision="
                             "<40-hex commit SHA> (the hub page's 'History' lists them), got "
                             f"{self.revision or 'no revision'}")
        return self

    def is_hub_id(self) -> bool:
        """A hub repository id (not a preset, not a local folder)."""
        import os

        return (self.checkpoint not in ("tiny", "small", "large") and not os.path.isdir(self.checkpoint)
                and not self.checkpoint.startswith(("/", ".", "~")))

    def options(self) -> dict:
        """Settings for get_backbone (only those set): backbone-specific ones and the hub revision / remote code."""
        out = {"regression": self.image_regression, "min_pixels": self.image_min_pixels,
               "max_pixels": self.image_max_pixels, "revision": self.revision,
               "trust_remote_code": self.trust_remote_code or None}
        return {k: v for k, v in out.items() if v is not None}


class _AdapterBase(Section):
    """The adapter: MossConfig's fields, types, defaults and checks (orchestrator/moss/config.py)."""

    doc_source: ClassVar[type] = MossConfig  # where config_doc reads the fields' comments

    @field_validator("*")
    @classmethod
    def _check_field(cls, value, info):
        check_field(info.field_name, value)  # MossConfig's own check, naming adapter.<field>
        return value

    def to_moss_config(self) -> MossConfig:
        return MossConfig(**self.model_dump())


def _adapter_section() -> type[Section]:
    hints = typing.get_type_hints(MossConfig)
    fields = {f.name: (hints[f.name], f.default) for f in dataclasses.fields(MossConfig)}
    return create_model("AdapterSection", __base__=_AdapterBase, __module__=__name__, **fields)


AdapterSection = _adapter_section()


class AlignmentSection(Section):
    """Optional text-image alignment filter with a CLIP model from a local path (off when model_path is null)."""

    model_path: str | None = None  # local CLIP checkpoint; null: the filter is off
    min_score: float = Field(0.2, ge=-1.0, le=1.0)  # cosine similarity of CLIP text and image embeddings
    batch_size: int = Field(32, ge=1)  # image-text pairs per CLIP forward


class FilterSection(Section):
    """Bounds that reject a record (each rejection counted with its reason)."""

    max_text_chars: int = Field(20_000, ge=1)  # all text of a record together
    min_output_chars: int = Field(0, ge=0)  # output text; 0 allows image-only answers
    min_images: int = Field(0, ge=0)  # images per record (input and output together)
    max_images: int = Field(16, ge=0)  # images per record; more is a bounds reject before any image is read
    min_image_side: int = Field(16, ge=1)  # pixels
    max_image_pixels: int = Field(40_000_000, ge=1)  # checked from the header, before decoding
    max_image_bytes: int = Field(64 * 2**20, ge=1)  # bytes of one encoded image
    #: two images on the same side of a record (input or output) within this pHash Hamming distance are
    #: near-duplicates and reject the record; -1 turns the check off
    phash_max_distance: int = Field(4, ge=-1, le=64)
    dedupe: bool = True  # drop records whose content repeats an earlier one, and reused ids
    alignment: AlignmentSection = Field(default_factory=AlignmentSection)

    @model_validator(mode="after")
    def _check(self) -> FilterSection:
        if self.min_images > self.max_images:
            raise ValueError(f"min_images={self.min_images} > max_images={self.max_images}")
        return self


class DataSection(Section):
    #: JSONL / JSON / parquet: a path, glob or directory (local, s3://, gs://, hf://datasets/...), or a list
    source: str | list[str] | None = None
    output: str = "shards"  # shards go to <output>/<backbone>/
    max_seq_len: int = Field(2048, ge=8)  # tokens per record; longer ones lose whole trailing segments (truncate stage)
    val_fraction: float = Field(0.05, ge=0.0, lt=1.0)  # by a stable hash of the record id
    filters: FilterSection = Field(default_factory=FilterSection)
    chunk_bytes: int = Field(128 * 2**10, ge=1024)  # input is read in byte ranges of this size, in parallel
    batch_size: int = Field(16, ge=1)  # records per tokenizer batch
    tokenize_actors: int | None = Field(None, ge=1)  # actor pool size; null: the cluster's CPU count
    #: torch intra-op threads per tokenizer (each actor, or the --local loop); null: torch's default.
    #: 1 is fastest for the tiny VQs on a 2-core machine (2 threads measured slower there)
    torch_threads: int | None = Field(1, ge=1)
    rows_per_file: int = Field(4096, ge=1)  # rows per shard file at most
    #: train / sweep refuse shards whose manifest shows more than this fraction of records, or of answer
    #: images, dropped by the `bounds` and `truncate` stages (sequence budget or image limits set too tight)
    max_dropped_fraction: float = Field(0.2, ge=0.0, le=1.0)
    #: folders local image paths must resolve into (symlinks followed); null: the folder of each data file.
    #: Anything else (an absolute path elsewhere, ../ out of the root, a FIFO or device) is an `image` reject
    image_roots: list[str] | None = None
    #: URI schemes image references may use; null: those of data.source (a local source allows local files
    #: only). http/https only when listed; fsspec chains ("a::b") never
    allowed_schemes: list[str] | None = None
    #: a JSON line longer than this is a `parse` reject, never decoded
    max_record_bytes: int = Field(16 * 2**20, ge=1024)
    #: formats read whole (a JSON array, a parquet row group, decompressed) above this are one counted
    #: `parse` reject, never loaded
    max_file_bytes: int = Field(2**30, ge=1024)

    @field_validator("source")
    @classmethod
    def _non_empty(cls, v):
        if isinstance(v, list) and not v:
            raise ValueError("an empty list of sources")
        return v

    def sources(self) -> list[str]:
        if self.source is None:
            raise ConfigError("data.source is not set: give a file, glob or directory of LeafInstruct records")
        return [self.source] if isinstance(self.source, str) else list(self.source)


class TrainSection(Section):
    """Optimisation, evaluation and checkpointing of one run (steps are optimizer steps)."""

    #: names the run: its checkpoints (<storage.path>/<run_name>) and its MLflow run. Relaunching a name
    #: resumes it; null: a new unique name (printed, so the run can be resumed with --set train.run_name=...)
    run_name: str | None = Field(None, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
    seed: int = 0  # adapter init, data order
    lr: float = Field(2e-4, gt=0)  # peak learning rate (AdamW over the adapter)
    weight_decay: float = Field(0.0, ge=0)  # AdamW decay, not applied to 1-D tensors
    betas: tuple[float, float] = (0.9, 0.999)  # AdamW betas
    warmup_steps: int = Field(10, ge=0)  # linear warmup from 0, then cosine decay to min_lr_ratio * lr
    min_lr_ratio: float = Field(0.1, ge=0, le=1)  # the cosine ends at this fraction of lr
    grad_clip: float = Field(1.0, ge=0)  # max global grad norm; 0 turns clipping off (the norm is still logged)
    micro_batch: int = Field(2, ge=1)  # sequences per worker per forward
    grad_accum: int = Field(1, ge=1)  # micro-batches per optimizer step
    max_steps: int | None = Field(200, ge=1)  # stop after this many steps, or after max_epochs, whichever first
    max_epochs: int | None = Field(None, ge=1)  # passes over the train split; null: max_steps decides
    text_weight: float = Field(1.0, ge=0)  # loss = (w_t * sum text CE + w_i * sum image CE) / target tokens
    image_weight: float = Field(1.0, ge=0)  # w_i of the loss above
    #: auto: bf16 autocast on GPU (frozen base weights stored in bf16), fp32 on CPU
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    activation_checkpointing: bool = False  # recompute decoder layers in the backward pass (less memory, more time)
    #: ddp: every worker holds the whole model; fsdp: decoder layers sharded over the workers (FSDP2),
    #: for backbones that do not fit one GPU
    strategy: Literal["ddp", "fsdp"] = "ddp"
    #: target tokens whose logits the loss materialises at once (each chunk recomputed in the backward
    #: pass): the fp32 logits of a 65k-185k vocabulary are otherwise the largest activation of a step.
    #: null: all at once
    loss_chunk_tokens: int | None = Field(1024, ge=1)
    eval_every: int = Field(50, ge=1)  # steps; also at the last step
    eval_max_batches: int | None = Field(None, ge=1)  # per worker; null: the whole val split
    ckpt_every: int = Field(50, ge=1)  # steps; also at the last step
    keep_checkpoints: int = Field(2, ge=1)  # the newest this many checkpoints are kept
    max_failures: int = Field(2, ge=-1)  # worker-group restarts from the latest checkpoint; -1: forever
    shuffle_buffer: int = Field(256, ge=0)  # rows in each worker's local shuffle buffer; 0: shard order
    #: a worker whose data stream yields no batch for this long fails the attempt (naming the resources it
    #: waits for), so max_failures retries it instead of waiting forever
    stall_timeout_s: float = Field(600.0, gt=0)

    @model_validator(mode="after")
    def _check(self) -> TrainSection:
        if self.max_steps is None and self.max_epochs is None:
            raise ValueError("set train.max_steps or train.max_epochs (or both)")
        if self.text_weight == 0 and self.image_weight == 0:
            raise ValueError("text_weight and image_weight are both 0: nothing to train on")
        return self


class ScalingSection(Section):
    """The Ray Train worker group."""

    num_workers: int = Field(1, ge=1)  # Ray Train workers (one per GPU on a GPU cluster)
    use_gpu: bool = False  # one GPU per worker (gpus_per_worker), NCCL, bf16 autocast
    cpus_per_worker: float = Field(1.0, gt=0)  # also the worker's torch threads (at least 1)
    gpus_per_worker: float = Field(1.0, ge=0)  # only with use_gpu
    #: extra Ray resources per worker, e.g. {"accelerator_type:H100": 0.001} or a custom node label
    resources_per_worker: dict[str, float] = Field(default_factory=dict)
    #: Ray placement group strategy of the workers
    placement_strategy: Literal["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"] = "PACK"
    #: a node type of cluster.yaml the workers must run on (each asks for a sliver of the custom resource
    #: of that name, which cluster.yaml gives its nodes); `moss plan` then checks memory on that GPU
    node_type: str | None = Field(None, pattern=r"^[A-Za-z0-9_.-]+$")
    #: memory per GPU, for `moss plan` where no cluster file says it (GiB, as nvidia-smi reports / 1024)
    gpu_memory_gb: float | None = Field(None, gt=0)
    #: CPUs each Ray Data read task of the shards takes (reading parquet is light). Ray Data's listing
    #: task still takes a whole CPU: keep one free beside the workers of all concurrent runs
    ingest_cpus_per_task: float = Field(0.25, gt=0)

    def ray_resources(self) -> dict[str, float]:
        res = {"CPU": self.cpus_per_worker, **self.resources_per_worker}
        if self.node_type is not None:
            res[self.node_type] = NODE_TYPE_SHARE
        if self.use_gpu:
            res["GPU"] = self.gpus_per_worker
        return res


#: what each worker asks of its node type's custom resource (cluster.yaml gives each node 1 of it)
NODE_TYPE_SHARE = 0.001


class PlanSection(Section):
    """`moss plan`, which `moss train` / `moss sweep` also run before Ray starts."""

    #: false: a plan that finds trials that cannot run only warns (for experts who know better)
    enforce: bool = True
    #: the cluster launcher config whose node types give GPU models and memory (relative to the working
    #: directory; ignored when missing and scaling.gpu_memory_gb is set)
    cluster: str = "cluster.yaml"
    #: text tokens assumed in front of an answer image when checking that one fits the sequence budget
    prompt_tokens: int = Field(256, ge=0)
    #: headroom on top of the estimate: CUDA context, NCCL and cuBLAS workspaces (GiB), allocator
    #: fragmentation (fraction of the estimate)
    margin_gb: float = Field(2.0, ge=0)
    margin_fraction: float = Field(0.1, ge=0, le=1)  # see margin_gb


class TrackingSection(Section):
    experiment: str = Field("moss", min_length=1)  # MLflow experiment of runs and sweeps
    #: null: MLFLOW_TRACKING_URI, else sqlite:///<working dir>/mlflow.db (artifacts in <working dir>/mlruns)
    tracking_uri: str | None = None
    tags: dict[str, str] = Field(default_factory=dict)  # extra MLflow tags on the run
    #: while the tracking server is unreachable, what could not be sent goes to a journal in the run's folder
    #: and is retried this often in the background (training never waits for MLflow)
    retry_every_s: float = Field(15.0, gt=0)
    #: how long the start of a run (creating or finding its MLflow run) waits for an unreachable server
    startup_wait_s: float = Field(300.0, ge=0)
    #: at the end of a run, how long to keep trying to send the journal before leaving it for
    #: `moss tracking replay RUN_DIR`
    flush_timeout_s: float = Field(60.0, ge=0)


class StorageSection(Section):
    #: checkpoints go to <path>/<run_name>/; local dir or s3:// / gs:// (shared storage on multi-node
    #: clusters); null: <working dir>/ray_results
    path: str | None = None


class GenerateSection(Section):
    """Sampling for `moss generate` and for the answers `moss evaluate` generates."""

    max_new_tokens: int = Field(128, ge=0)  # text tokens of an answer; images come on top (max_images)
    temperature: float = Field(1.0, ge=0)  # 0: greedy
    top_p: float = Field(0.9, gt=0, le=1)  # nucleus sampling of text tokens
    image_temperature: float = Field(1.0, ge=0)  # sampling temperature of image codes; 0: greedy
    image_top_p: float = Field(1.0, gt=0, le=1)  # nucleus sampling of image codes
    max_images: int = Field(2, ge=0)  # images per answer
    image_size: tuple[int, int] | None = None  # (rows, cols) of codes; Emu3 only, the others have a fixed grid
    seed: int = 0  # sampling seed
    #: Emu2-Gen's diffusion decoder (emu2 checkpoints with one): Euler steps, guidance, pixels per side
    diffusion_steps: int = Field(50, ge=1)
    guidance_scale: float = Field(3.0, ge=0)  # classifier-free guidance of Emu2-Gen's decoder
    diffusion_size: int = Field(1024, ge=8)  # pixels per side of Emu2-Gen's decoded images

    @field_validator("image_size")
    @classmethod
    def _positive(cls, v):
        if v is not None and min(v) < 1:
            raise ValueError("image_size sides must be >= 1 code")
        return v


class EditingSection(Section):
    """MagicBrush-style editing metrics: input image + instruction -> generated vs target image."""

    source: str | list[str] | None = None  # LeafInstruct records; null: data.source
    domain: str = "editing"  # records of this domain (task_name) with one input and one output image
    split: Literal["train", "val", "all"] = "val"  # by the same id hash as preprocessing (data.val_fraction)
    max_records: int | None = Field(16, ge=1)  # editing records scored at most; null: all
    clip_model: str | None = None  # local CLIP checkpoint (transformers CLIPModel) for CLIP-I; null: skipped
    dino_model: str | None = None  # local DINO ViT checkpoint (transformers AutoModel) for DINO; null: skipped


class InterleavedBenchSection(Section):
    path: str | None = None  # interleaved_bench.json (or .jsonl); images relative to its folder
    max_records: int | None = Field(None, ge=1)  # records answered at most; null: all
    judge: bool = False  # score the answers with an OpenAI-compatible judge (MOSS_JUDGE_* environment)


class EvaluateSection(Section):
    heldout: bool = True  # per-modality loss / perplexity on a shard split
    split: Literal["train", "val"] = "val"  # the shard split held-out metrics are computed on
    editing: bool = True  # MagicBrush-style metrics (see the editing section)
    output: str = "eval"  # results.json, generated images and answers go to <output>/<run or adapter name>/


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
    "tracking.flush_timeout_s": 60.0,
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
