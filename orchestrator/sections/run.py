"""How a run trains (``train:``), where its workers run (``scaling:``, ``plan:``), and where it is tracked
and stored (``tracking:``, ``storage:``)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from .base import Section


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
    text_weight: float = Field(1.0, ge=0)  # w_t: the weight of the text targets' loss
    image_weight: float = Field(1.0, ge=0)  # w_i: the weight of the image targets' loss
    #: tokens: (w_t * sum text + w_i * sum image) / targets of the weighted modalities (a token mean);
    #: per_modality: w_t * mean text + w_i * mean image; auto: per_modality where the image loss is not a
    #: cross-entropy (Emu2's regression), tokens otherwise. docs/training.md compares them
    loss_normalization: Literal["auto", "tokens", "per_modality"] = "auto"
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

    def normalization_for(self, image_loss_is_ce: bool, value: str | None = None) -> str:
        """``loss_normalization`` (or ``value``) with auto resolved for a backbone whose image loss is, or is
        not, a cross-entropy: the one rule training, evaluation and resume checks share."""
        value = value or self.loss_normalization
        if value != "auto":
            return value
        return "tokens" if image_loss_is_ce else "per_modality"

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
    #: CPU, memory, disk, network and GPU metrics per node (system/<node>/...), sampled by one worker per
    #: node: true, false, or auto (when training on GPUs)
    system_metrics: bool | Literal["auto"] = "auto"
    system_metrics_every_s: float = Field(10.0, gt=0)  # sampling interval of system_metrics


class StorageSection(Section):
    #: checkpoints go to <path>/<run_name>/; local dir or s3:// / gs:// (shared storage on multi-node
    #: clusters); null: <working dir>/ray_results
    path: str | None = None
