"""`moss plan`: for every trial of a space (or the one run of a config), where it lands, what it needs
and whether it fits, before Ray starts. No Ray, no GPU, no weights: meta-device builds and file lists.

A row is one trial: backbone / checkpoint / adapter, the node type and GPUs it lands on, the estimated
peak memory per GPU (memory.py) against that GPU's, the tokens one image takes against the sequence
budget. A problem is something that would waste the run (out of memory, no image fits, a checkpoint
that cannot load); each names its fix. Warnings are worth reading but do not stop a run.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path

from ..config import RunConfig
from ..moss.config import match_parameters
from ..moss.variants import get_variant
from .checkpoints import CheckpointCheck, check_checkpoint
from .hardware import ClusterFileError, NodeType, load_cluster
from .memory import GiB, Estimate, Workload, estimate
from .sizing import ModelShape, SizingError, model_shape, trainable_parameters

BUILTIN_RESOURCES = ("CPU", "GPU", "memory")


@dataclass
class Row:
    trial: str
    params: dict
    backbone: str
    checkpoint: str
    variant: str
    rank: int
    kernel: int | None
    conv_space: str | None
    placement: str = "?"
    workers: int = 1
    gpus: float = 0.0  # per worker
    strategy: str = "ddp"
    device_gib: float | None = None  # memory of one GPU (or of this machine, for CPU runs)
    trainable: int | None = None
    image_rank: int | None = None  # solved for adapter.match_params (or adapter.image_rank)
    estimate: Estimate | None = None
    fits: bool | None = None
    image_tokens: tuple[int, int] | None = None  # one image, smallest and largest
    image_size: str = ""
    images_per_seq: int | None = None
    seq_len: int = 0
    global_batch: int = 0
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def to_json(self) -> dict:
        out = {k: v for k, v in self.__dict__.items() if k != "estimate"}
        out["estimate_gib"] = self.estimate.gib() if self.estimate else None
        out["image_tokens"] = list(self.image_tokens) if self.image_tokens else None
        return out


@dataclass
class Plan:
    source: str
    rows: list[Row]
    problems: list[str]  # every row's, plus those across rows (named by trial)
    warnings: list[str]

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_json(self) -> dict:
        return {"source": self.source, "ok": self.ok, "problems": self.problems, "warnings": self.warnings,
                "trials": [r.to_json() for r in self.rows]}


class Planner:
    """Plans configs against one cluster file; caches checkpoint checks and model shapes."""

    def __init__(self, cluster: str | None, memory: bool = True):
        self.cluster_path, self.memory = cluster, memory
        self.cluster: dict[str, NodeType] | None = None
        self.cluster_error: str | None = None
        if cluster is not None and Path(cluster).expanduser().is_file():
            try:
                self.cluster = load_cluster(cluster)
            except ClusterFileError as e:
                self.cluster_error = str(e)
        self._checks: dict[tuple, CheckpointCheck] = {}

    def checkpoint(self, cfg: RunConfig) -> CheckpointCheck:
        b = cfg.backbone
        key = (b.name, b.checkpoint, b.revision, b.trust_remote_code)
        if key not in self._checks:
            self._checks[key] = check_checkpoint(*key)
        return self._checks[key]

    # ---- one config -------------------------------------------------------------------------------
    def row(self, cfg: RunConfig, trial: str = "run", params: dict | None = None) -> Row:
        a, s, t = cfg.adapter, cfg.scaling, cfg.train
        conv = get_variant(a.variant).uses_conv
        row = Row(trial, params or {}, cfg.backbone.name, cfg.backbone.checkpoint, a.variant, a.rank,
                  a.kernel_size if conv else None, a.conv_space if conv else None, workers=s.num_workers,
                  gpus=s.gpus_per_worker if s.use_gpu else 0.0, strategy=t.strategy, seq_len=cfg.data.max_seq_len,
                  global_batch=s.num_workers * t.micro_batch * t.grad_accum)
        check = self.checkpoint(cfg)
        if not check.ok:
            row.problems.append(f"checkpoint: {check.message}")
        elif check.status == "not verified":
            row.warnings.append(f"checkpoint: {check.message}")
        known = _spec_class(cfg).hub_checkpoints.get(cfg.backbone.checkpoint)
        if known is not None and known.warning and not a.train_image_head:
            row.warnings.append(known.warning)
        try:
            options = tuple(cfg.backbone.options().items())
            shape = model_shape(cfg.backbone.name, cfg.backbone.checkpoint, options, a.target_modules)
        except SizingError as e:
            row.warnings.append(f"memory not estimated: {e}")
            return row
        if a.train_image_head and not shape.image_head_rows:
            row.problems.append(f"adapter.train_image_head: {cfg.backbone.name} has no image-code rows in its output "
                                "head (its images are predicted by a head of their own)")
        self._image_budget(cfg, shape, row)
        try:
            row.image_rank = match_parameters(a.to_moss_config(), shape.targets).image_rank
        except ValueError as e:
            row.problems.append(f"adapter.{e}")
            return row
        row.trainable = trainable_parameters(shape, a.to_moss_config())
        if self.memory:
            self._memory(cfg, shape, row)
        return row

    def _image_budget(self, cfg: RunConfig, shape: ModelShape, row: Row) -> None:
        b, seq, prompt = shape.image, cfg.data.max_seq_len, cfg.plan.prompt_tokens
        row.image_tokens, row.image_size = (b.min_tokens, b.max_tokens), b.size
        row.images_per_seq = max(0, (seq - prompt - 2) // b.max_tokens)
        if shape.positions and seq > shape.positions:
            row.problems.append(f"data.max_seq_len={seq} exceeds {cfg.backbone.name}'s position limit "
                                f"({shape.positions}): set data.max_seq_len <= {shape.positions}")
        need = prompt + b.max_tokens + 2
        if need > seq:
            fixes = []
            if not shape.positions or need <= shape.positions:
                fixes.append(f"data.max_seq_len={need}")
            side = _spec_class(cfg).square_side_within(seq - prompt - 2) - 1  # one code of slack: sides round up
            if b.pixels_per_code and side > 0:  # a backbone whose image area is a setting
                px = (side * b.pixels_per_code) ** 2
                fixes.append(f"backbone.image_min_pixels={px} backbone.image_max_pixels={px} ({side}x{side} codes)")
            row.problems.append(
                f"one answer image takes up to {b.max_tokens} tokens ({b.size}); with a {prompt}-token prompt "
                f"(plan.prompt_tokens) that is {need} > data.max_seq_len={seq}: records with an answer image would "
                f"be dropped at `truncate` and the run would train on text. Fix: {' or '.join(fixes) or 'a backbone with smaller images'}")
        elif row.images_per_seq == 1:
            row.warnings.append(f"one {b.max_tokens}-token image per {seq}-token sequence: records with a prompt "
                                "image and an answer image (editing) will not fit")

    # ---- memory -----------------------------------------------------------------------------------
    def workload(self, cfg: RunConfig, shape: ModelShape) -> Workload:
        t, a = cfg.train, cfg.adapter
        on_gpu = cfg.scaling.use_gpu
        bf16 = t.precision == "bf16" or (t.precision == "auto" and on_gpu)
        cells = shape.image.max_grid[0] * shape.image.max_grid[1]
        fit = max(1, (cfg.data.max_seq_len - cfg.plan.prompt_tokens) // max(shape.image.max_tokens, 1))
        return Workload(micro_batch=t.micro_batch, seq_len=cfg.data.max_seq_len, precision="bf16" if bf16 else "fp32",
                        checkpointing=t.activation_checkpointing, strategy=t.strategy, workers=cfg.scaling.num_workers,
                        loss_chunk=t.loss_chunk_tokens, image_fraction=min(1.0, fit * cells / cfg.data.max_seq_len),
                        head_rows=a.train_image_head,
                        variant=a.variant, rank=a.rank, kernel_size=a.kernel_size, conv_space=a.conv_space,
                        image_rank=match_parameters(a.to_moss_config(), shape.targets).image_rank,
                        conv_activation=a.conv_activation)

    def estimate(self, cfg: RunConfig, shape: ModelShape, trainable: int, w: Workload) -> Estimate:
        return estimate(shape, trainable, w, cfg.plan.margin_gb, cfg.plan.margin_fraction)

    def _memory(self, cfg: RunConfig, shape: ModelShape, row: Row) -> None:
        w = self.workload(cfg, shape)
        row.estimate = self.estimate(cfg, shape, row.trainable, w)
        placements = self.placements(cfg, row)
        if not placements:
            return
        share = _workers_per_gpu(cfg)
        worst = min(placements, key=lambda p: p[1])
        row.placement, row.device_gib = worst[0], round(worst[1], 1)
        need = row.estimate.total * share
        row.fits = need <= worst[1] * GiB
        if not row.fits:
            fixes = self.fixes(cfg, shape, row, w)
            where = f"{share} workers per GPU, " if share > 1 else ""
            row.problems.append(
                f"out of memory: needs ~{need / GiB:.1f} GiB per {'GPU' if cfg.scaling.use_gpu else 'machine'} "
                f"({where}{_parts(row.estimate)}) on {row.placement}. Fix: "
                + ("; or ".join(fixes) if fixes else "none of FSDP, a larger node, a smaller micro-batch or a lower "
                   "rank fits: shorten data.max_seq_len"))

    def placements(self, cfg: RunConfig, row: Row) -> list[tuple[str, float]]:
        """(where, GiB per GPU) of every node type the workers may land on; [] when unknown (a warning)."""
        s = cfg.scaling
        if not s.use_gpu:
            import psutil

            mem = psutil.virtual_memory().total / GiB / max(1, s.num_workers)
            return [(f"cpu (this machine, {s.num_workers} worker(s))", mem)]
        if s.gpu_memory_gb is not None:
            return [(f"{s.node_type or 'GPU'} ({s.gpu_memory_gb:g} GiB, scaling.gpu_memory_gb)", s.gpu_memory_gb)]
        if s.node_type is None and not os.environ.get("RAY_ADDRESS"):  # a local Ray on this machine's GPUs
            local = _local_gpu()
            if local is not None:
                return [local]
        if self.cluster_error:  # a cluster file that is there but cannot be read: its GPUs cannot be planned
            row.problems.append(self.cluster_error)
            return []
        if self.cluster is None:
            row.warnings.append(f"GPU memory unknown (no cluster file at {self.cluster_path}): pass --cluster "
                                "cluster.yaml or set scaling.gpu_memory_gb")
            return []
        candidates = self.candidates(cfg)
        if not candidates:
            row.problems.append(self._no_node_type(cfg))
            return []
        if s.node_type is not None and s.node_type not in candidates[0].resources:
            row.problems.append(f"scaling.node_type={s.node_type!r}: node type {s.node_type} of {self.cluster_path} "
                                f"does not offer the custom resource {s.node_type!r} its workers ask for, so Ray "
                                f"would never place them: add `resources: {{{s.node_type}: 1}}` to it")
            return []
        row.placement = "|".join(n.name for n in candidates)
        return [(n.describe(), n.gpu.memory_gib) for n in candidates]

    def candidates(self, cfg: RunConfig) -> list[NodeType]:
        """Node types of the cluster file that can host this run's workers (scaling.node_type pins one)."""
        s = cfg.scaling
        wanted = {k for k in s.resources_per_worker if k not in BUILTIN_RESOURCES}
        out = []
        for node in self.cluster.values():
            if not node.gpus or node.gpus < s.gpus_per_worker:
                continue
            if s.placement_strategy == "STRICT_PACK" and node.gpus < s.num_workers * s.gpus_per_worker:
                continue
            if s.node_type is not None and node.name != s.node_type:
                continue
            if any(not _offers(node, k) for k in wanted):
                continue
            out.append(node)
        return out

    def _no_node_type(self, cfg: RunConfig) -> str:
        s = cfg.scaling
        gpu_types = ", ".join(n.describe() for n in self.cluster.values() if n.gpus) or "none"
        if s.node_type is not None and s.node_type not in self.cluster:
            return f"scaling.node_type={s.node_type!r} is not a node type of {self.cluster_path} (GPU types: {gpu_types})"
        need = s.num_workers * s.gpus_per_worker if s.placement_strategy == "STRICT_PACK" else s.gpus_per_worker
        return (f"no node type of {self.cluster_path} can host {s.num_workers} worker(s) x {s.gpus_per_worker:g} GPU "
                f"({s.placement_strategy}, {need:g} GPUs on one node, resources {s.resources_per_worker or '{}'}"
                f"{', node type ' + s.node_type if s.node_type else ''}); GPU node types: {gpu_types}")

    # ---- fixes for a run that does not fit ---------------------------------------------------------
    def fixes(self, cfg: RunConfig, shape: ModelShape, row: Row, w: Workload) -> list[str]:
        """Settings that make the run fit, each with its estimate (tried in this order, at most four)."""
        out = []
        t, s = cfg.train, cfg.scaling
        gpu_mem = (row.device_gib or 0) * GiB

        def fits(w2: Workload, trainable: int = row.trainable, mem: float = gpu_mem) -> Estimate | None:
            est = self.estimate(cfg, shape, trainable, w2)
            return est if est.total * _workers_per_gpu(cfg) <= mem else None

        if not t.activation_checkpointing and (est := fits(replace(w, checkpointing=True))):
            out.append(f"train.activation_checkpointing=true (~{est.total / GiB:.1f} GiB)")
        mb = t.micro_batch // 2
        while mb >= 1 and len(out) < 2:
            if (t.micro_batch * t.grad_accum) % mb == 0 and (est := fits(replace(w, micro_batch=mb))):
                out.append(f"train.micro_batch={mb} train.grad_accum={t.micro_batch * t.grad_accum // mb} "
                           f"(same {row.global_batch} sequences per step; ~{est.total / GiB:.1f} GiB)")
                break
            mb //= 2
        if self.cluster is not None and s.use_gpu:
            for node in sorted(self.cluster.values(), key=lambda n: (n.gpus, n.gpu.memory_gib if n.gpu else 0)):
                if not node.gpus or node.name == s.node_type:
                    continue
                if node.gpus > 1 and row.global_batch % (node.gpus * t.micro_batch) == 0:
                    w2 = replace(w, strategy="fsdp", workers=node.gpus)
                    if est := fits(w2, mem=node.gpu.memory_gib * GiB):
                        out.append(f"FSDP over {node.describe()}: scaling.node_type={node.name} scaling.num_workers="
                                   f"{node.gpus} train.strategy=fsdp train.grad_accum="
                                   f"{row.global_batch // (node.gpus * t.micro_batch)} scaling.placement_strategy="
                                   f"STRICT_PACK (~{est.total / GiB:.1f} GiB per GPU)")
                        break
                elif node.gpu.memory_gib * GiB > gpu_mem and (est := fits(w, mem=node.gpu.memory_gib * GiB)):
                    out.append(f"scaling.node_type={node.name} ({node.describe()}; ~{est.total / GiB:.1f} GiB)")
                    break
            else:
                out += self._two_node_fsdp(cfg, w, row, fits)
        rank = cfg.adapter.rank // 2
        while rank >= 1 and len(out) < 4:
            moss = cfg.adapter.model_copy(update={"rank": rank}).to_moss_config()
            image_rank = match_parameters(moss, shape.targets).image_rank  # re-solved for this text rank
            if est := fits(replace(w, rank=rank, image_rank=image_rank), trainable=trainable_parameters(shape, moss)):
                out.append(f"a rank cap: adapter.rank <= {rank} (~{est.total / GiB:.1f} GiB)")
                break
            rank //= 2
        return out

    def _two_node_fsdp(self, cfg: RunConfig, w: Workload, row: Row, fits) -> list[str]:
        """FSDP over two nodes of the largest multi-GPU type (slower: parameters cross the network)."""
        multi = [n for n in self.cluster.values() if n.gpus > 1]
        if not multi:
            return []
        node = max(multi, key=lambda n: (n.gpus, n.gpu.memory_gib))
        workers = 2 * node.gpus
        mb = cfg.train.micro_batch
        while mb >= 1 and row.global_batch % (workers * mb):
            mb //= 2
        if mb < 1:
            return []
        est = fits(replace(w, strategy="fsdp", workers=workers, micro_batch=mb), mem=node.gpu.memory_gib * GiB)
        if not est:
            return []
        return [f"FSDP over two {node.describe()} nodes: scaling.node_type={node.name} scaling.num_workers={workers} "
                f"train.strategy=fsdp train.micro_batch={mb} train.grad_accum={row.global_batch // (workers * mb)} "
                f"scaling.placement_strategy=PACK (~{est.total / GiB:.1f} GiB per GPU)"]

    # ---- a space ----------------------------------------------------------------------------------
    def plan_configs(self, source: str, configs: list[tuple[str, dict, RunConfig]]) -> Plan:
        rows = [self.row(cfg, trial, params) for trial, params, cfg in configs]
        warnings = list(dict.fromkeys(w for r in rows for w in r.warnings))
        by_text: dict[str, list[Row]] = {}
        for r in rows:
            for p in r.problems:
                by_text.setdefault(p, []).append(r)
        problems = [f"{_label(hit, len(rows))}: {text}" for text, hit in by_text.items()]
        batches = {r.global_batch for r in rows}
        if len(batches) > 1 and not _searched_batch(rows):
            by = {b: [r.trial for r in rows if r.global_batch == b] for b in sorted(batches)}
            problems.append("trials differ in sequences per optimizer step (num_workers x micro_batch x grad_accum): "
                            + "; ".join(f"{b}: {', '.join(ts[:6])}{'...' if len(ts) > 6 else ''}" for b, ts in by.items())
                            + ". Their losses would not compare: set train.grad_accum per resource rule so all match")
        return Plan(source, rows, problems, warnings)


def _spec_class(cfg: RunConfig):
    from ..backbones import spec_class

    return spec_class(cfg.backbone.name)


def _offers(node: NodeType, resource: str) -> bool:
    if resource.startswith("accelerator_type:"):
        return node.gpu is not None and node.gpu.model.upper().startswith(resource.split(":", 1)[1].upper())
    return resource in node.resources


def _workers_per_gpu(cfg: RunConfig) -> int:
    g = cfg.scaling.gpus_per_worker
    return min(cfg.scaling.num_workers, max(1, int(1 / g))) if cfg.scaling.use_gpu and 0 < g < 1 else 1


def _local_gpu() -> tuple[str, float] | None:
    try:
        import torch

        if not torch.cuda.is_available():
            return None
        props = torch.cuda.get_device_properties(0)
        return f"local {props.name}", props.total_memory / GiB
    except Exception:
        return None


def _parts(e: Estimate) -> str:
    g = e.gib()
    return ", ".join(f"{k} {g[k]:.1f}" for k in ("weights", "adapter", "activations", "logits", "margin"))


def _params_text(params: dict) -> str:
    return ", ".join(f"{k.split('.')[-1]}={v}" for k, v in params.items()) or "base config"


def _label(rows: list[Row], total: int) -> str:
    """Which trials a problem concerns: one (with its params), all of them, or a list."""
    if len(rows) == 1:
        return rows[0].trial if total == 1 else f"{rows[0].trial} ({_params_text(rows[0].params)})"
    if len(rows) == total:
        return f"all {total} trials"
    return "trials " + ", ".join(r.trial.removeprefix("trial ") for r in rows)


def _searched_batch(rows: list[Row]) -> bool:
    keys = {k for r in rows for k in r.params}
    return bool(keys & {"train.micro_batch", "train.grad_accum", "scaling.num_workers"})
