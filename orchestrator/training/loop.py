"""The per-worker training loop: runs on every Ray Train worker (rank 0 also writes to MLflow).

Setup, then a linear loop of optimizer steps; each step sums its losses over micro-batches and
workers; every ``eval_every`` steps the val split is scored, every ``ckpt_every`` steps (and at the
last) a checkpoint is reported. After a worker failure Ray restarts the group and ``get_checkpoint``
hands back the latest checkpoint, which restores the adapter, optimizer, scheduler and data position.
"""

from __future__ import annotations

import contextlib
import sys
import tempfile
import time
import warnings
from pathlib import Path

import ray.train
import ray.train.torch
import torch

from ..backbones import backbone_from_config
from ..backbones.loss import target_counts
from ..config import RunConfig
from ..moss import apply_moss, load_adapter, save_adapter, trainable_parameters, unwrap
from ..tracking.journal import Journal
from ..tracking.resilient import MetricsLogger, Tracker
from ..tracking.system import SystemMetrics, wanted
from . import parallel
from .checkpoint import (ADAPTER_DIR, FINAL_ADAPTER, TrainState, load_train_state, save_train_state,
                         write_checksums)
from .resume import intact_checkpoint
from .data import ValRows, train_batches, train_columns, watched
from .metrics import (N_SUMS, PROGRESS, TOKENS, TRAIN, VAL, add_loss, loss_metrics, peak_memory_mb, reset_peak_memory,
                      step_metrics, use_bf16)
from .objective import loss_module, loss_weights
from .optim import build_optimizer



def setup_model(cfg: RunConfig, spec, ckpt_dir: str | None, bf16: bool):
    """The PeftModel (fresh, or restored from a checkpoint) and, when resuming, the optimizer state."""
    base = spec.build(seed=cfg.backbone.seed, dtype=torch.bfloat16 if bf16 else None)
    torch.manual_seed(cfg.train.seed)  # adapter init
    restored = None
    if ckpt_dir is None:
        model = apply_moss(base, cfg.adapter.to_moss_config(), spec)
    else:
        model = load_adapter(base, Path(ckpt_dir) / ADAPTER_DIR, spec, is_trainable=True)
        restored = load_train_state(Path(ckpt_dir))
    for p in model.parameters():
        if p.requires_grad:
            p.data = p.data.float()  # adapter weights and AdamW state stay fp32 under bf16 autocast
    if cfg.train.activation_checkpointing:
        spec.enable_activation_checkpointing(model)
    return model, restored


def to_device(batch: dict, device: torch.device) -> dict:
    return {k: (v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v) for k, v in batch.items()}


def evaluate(module, spec, val_rows: ValRows, cfg: RunConfig, device, autocast, pad_batch) -> dict:
    """Per-modality loss and perplexity over the whole val split, each worker scoring a share of it.

    val/loss weights the modalities like train/loss; the per-modality losses and perplexities are plain.
    """
    fsdp = cfg.train.strategy == "fsdp" and parallel.distributed()
    model = module if fsdp else parallel.inner(module)  # FSDP gathers parameters inside forward: all ranks run it
    batches = val_rows.batches(spec)
    sums = [0.0] * N_SUMS
    model.eval()
    with torch.no_grad():
        while True:
            batch = next(batches, None)
            if fsdp and parallel.all_reduce([batch is not None], device, torch.distributed.ReduceOp.MAX)[0] == 0:
                break
            if batch is None and not fsdp:
                break
            with autocast():
                out = model(to_device(batch if batch is not None else pad_batch, device))
            if batch is not None:
                add_loss(sums, out, batch)
    model.train()
    weights = loss_weights(cfg.train, spec)
    return loss_metrics(parallel.all_reduce(sums, device), VAL, weights, ppl=True, image_ppl=spec.image_loss_is_ce)


def save_checkpoint(module, optimizer, scheduler, state: TrainState, directory: Path, rank: int) -> None:
    """Every worker gathers (collectives under FSDP); rank 0 writes."""
    adapter = parallel.adapter_state(module)
    optim = parallel.optimizer_state(module, optimizer)
    if rank == 0:
        save_adapter(parallel.inner(module).model, directory / ADAPTER_DIR, state_dict=adapter)
        save_train_state(directory, optim, scheduler.state_dict(), state)
        write_checksums(directory)  # last: a checkpoint without it was not fully written


def report(metrics: dict, state: TrainState, total: int, module, optimizer, scheduler, with_checkpoint: bool,
           rank: int, logger: MetricsLogger | None, final: bool, cfg: RunConfig, logged_config: dict) -> None:
    """ray.train.report (all workers, same number of calls); with a checkpoint written by rank 0."""
    state.metrics = {k: v for k, v in metrics.items() if isinstance(v, (int, float))}
    with tempfile.TemporaryDirectory() as d:
        ckpt = None
        if with_checkpoint:
            save_checkpoint(module, optimizer, scheduler, state, Path(d), rank)
            if rank == 0:
                ckpt = ray.train.Checkpoint.from_directory(d)
        if final and logger is not None:
            logger.log_adapter(Path(d, ADAPTER_DIR), cfg, logged_config, FINAL_ADAPTER, state.step)
        if logger is not None:  # a report lets Tune stop the trial (ASHA), killing this process: nothing may be
            logger.settle()     # left only in memory then: the steps and the final adapter are sent or journaled
        ray.train.report({**state.metrics, "step": state.step, "epoch": state.epoch, "total_steps": total},
                         checkpoint=ckpt)


def ensure_final_adapter(module, logger: MetricsLogger | None, rank: int, cfg: RunConfig,
                         logged_config: dict, step: int) -> None:
    """A relaunch of a finished run: log the adapter (folder and model) if an interrupted attempt had not yet,
    or only its model (a run trained before adapters were models, or whose model write was refused)."""
    adapter = parallel.adapter_state(module)
    if logger is None:
        return
    folder = not logger.has_artifact(f"{FINAL_ADAPTER}/moss_config.json")
    if folder or not logger.has_model():
        with tempfile.TemporaryDirectory() as d:
            logger.log_adapter(save_adapter(parallel.inner(module).model, Path(d), state_dict=adapter), cfg,
                               logged_config, FINAL_ADAPTER, step, folder=folder)


def optimizer_step(module, batches, optimizer, scheduler, trainable, tc, device, autocast, state: TrainState,
                   total: int):
    """grad_accum micro-batches (gradient sync on the last only), clip, step; advances ``state``.

    The gradient is that of the logged loss: the per-modality losses summed over every target of the step
    on all workers, combined by the global target counts (LossWeights.scales: the counts are all-reduced
    before any backward pass). Each micro-batch's sums are scaled by world size, since DDP and FSDP
    average gradients over workers.
    """
    micro = []
    for _ in range(tc.grad_accum):
        try:
            micro.append(next(batches))
        except StopIteration:  # max_epochs: the driver plans total_steps from the row count
            raise RuntimeError(f"the train shard ran out at step {state.step} of {total} planned") from None
    objective = parallel.inner(module)
    local = [target_counts(b["labels"], objective.spec.is_image_target) for _, _, b in micro]
    n_text, n_image = parallel.all_reduce([sum(c[0] for c in local), sum(c[1] for c in local)], device)
    scales = tuple(parallel.world_size() * s for s in objective.weights.scales(n_text, n_image))
    sums = [0.0] * N_SUMS
    for i, (epoch, index, batch) in enumerate(micro):
        with parallel.no_sync(module, i < tc.grad_accum - 1):
            with autocast():
                out = module(to_device(batch, device))
            out.weighted_sum(scales).backward()
        add_loss(sums, out, batch)
    grad_norm = torch.nn.utils.clip_grad_norm_(trainable, tc.grad_clip if tc.grad_clip > 0 else float("inf"))
    lr = scheduler.get_last_lr()[0]
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    state.step, state.epoch, state.batch_in_epoch = state.step + 1, epoch, index + 1
    return sums, batch, float(grad_norm), lr


def progress_line(step: int, total: int, metrics: dict) -> str:
    parts = [f"{label} {metrics[k]:.4f}" for label, k in PROGRESS.items() if k in metrics]
    return (f"step {step}/{total} " + " ".join(parts) + f" lr {metrics['train/lr']:.2e} "
            f"{metrics['train/tokens_per_s']:.0f} tok/s")


def train_loop(loop_config: dict) -> dict:
    """Ray Train entry point. loop_config: {"config": resolved RunConfig dump, "run": RunPlan fields,
    "logged_config": the dump redacted by the driver (what the adapter's MLflow model records)}."""
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
    cfg = RunConfig.model_validate(loop_config["config"])
    run = loop_config["run"]
    ctx = ray.train.get_context()
    rank = ctx.get_world_rank()
    device = ray.train.torch.get_device()
    torch.set_num_threads(max(1, int(cfg.scaling.cpus_per_worker)))
    spec = backbone_from_config(cfg)
    bf16 = use_bf16(cfg, device)
    tc = cfg.train

    with intact_checkpoint(ray.train.get_checkpoint()) as ckpt_dir:
        model, restored = setup_model(cfg, spec, ckpt_dir, bf16)
    n_trainable = trainable_parameters(model)  # before FSDP shards it
    weights = loss_weights(tc, spec)
    module = parallel.wrap(loss_module(model, spec, weights, tc.loss_chunk_tokens), tc.strategy,
                           spec.decoder_layers(unwrap(model)), device)
    optimizer, scheduler = build_optimizer(module, tc, run["total_steps"])
    state = TrainState(config_hash=run["config_hash"])
    if restored is not None:
        optim_state, sched_state, state = restored
        parallel.load_optimizer_state(module, optimizer, optim_state)
        scheduler.load_state_dict({**sched_state, "lr_lambdas": [None] * len(optimizer.param_groups)})
    logger = None
    if rank == 0:  # never raises nor waits on MLflow; its journal goes in the run's folder (Ray's storage)
        storage = ctx.get_storage()
        logger = MetricsLogger(run["tracking_uri"], run["mlflow_run_id"], cfg.tracking,
                               Journal.on(storage.storage_filesystem, storage.experiment_fs_path))
    if logger is not None:
        in_use = unwrap(model).moss_config  # with match_params: the image rank solved on this model
        logger.log_params({"trainable_parameters": str(n_trainable), "world_size": str(ctx.get_world_size()),
                           "adapter.image_rank_in_use": str(in_use.image_r)})
        if restored is not None:
            logger.log({"resumed_from_step": state.step}, state.step)
    sampler = system_metrics(cfg, run, ctx, device, logger)

    def autocast():
        return torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16)

    total = run["total_steps"]
    val_rows = (ValRows(run["val_path"], train_columns(spec), tc.micro_batch, rank, ctx.get_world_size(),
                        tc.eval_max_batches, tc.stall_timeout_s) if run["has_val"] else None)
    epoch, skip = state.epoch, state.batch_in_epoch
    if skip >= run["micro_per_epoch"]:  # the checkpoint ended an epoch: start the next, no rows to skip
        epoch, skip = epoch + 1, 0
    batches = watched(train_batches(ray.train.get_dataset_shard("train"), spec, tc.micro_batch, tc.shuffle_buffer,
                                    tc.seed, epoch, skip, tc.max_epochs), tc.stall_timeout_s, "train")
    trainable = [p for p in module.parameters() if p.requires_grad]
    start_step = state.step
    module.train()
    try:
        while state.step < total:
            t0 = time.perf_counter()
            reset_peak_memory(device)
            sums, last_batch, grad_norm, lr = optimizer_step(module, batches, optimizer, scheduler, trainable, tc,
                                                             device, autocast, state, total)
            sums = parallel.all_reduce(sums, device)
            seconds = time.perf_counter() - t0
            metrics = {**loss_metrics(sums, TRAIN, weights),
                       **step_metrics(lr, grad_norm, sums[TOKENS] / seconds, seconds, peak_memory_mb(device))}
            final = state.step == total
            if val_rows is not None and (state.step % tc.eval_every == 0 or final):
                metrics.update(evaluate(module, spec, val_rows, cfg, device, autocast, last_batch))
            if logger is not None:
                logger.log(metrics, state.step)
                if final or state.step % max(1, total // 20) == 0 or f"{VAL}/loss" in metrics:
                    # not print(): Ray Train patches it to write both to stdout and its logger (each line twice)
                    sys.stdout.write(progress_line(state.step, total, metrics) + "\n")
                    sys.stdout.flush()
            checkpoint = state.step % tc.ckpt_every == 0 or final
            if checkpoint or any(k.startswith(f"{VAL}/") for k in metrics):
                report(metrics, state, total, module, optimizer, scheduler, checkpoint, rank, logger, final, cfg,
                       loop_config["logged_config"])
        if state.step == start_step:  # relaunch of a finished run: no step, no report
            ensure_final_adapter(module, logger, rank, cfg, loop_config["logged_config"], state.step)
    except BaseException:  # the sampler stops with the run (its thread would outlive a caught error)
        if sampler is not None:
            with contextlib.suppress(Exception):  # never in place of the error itself
                sampler.stop()
        raise
    if sampler is not None:
        sampler.stop()
        if logger is None or sampler.tracker is not logger.tracker:
            sampler.tracker.close()
    if logger is not None:  # sends what is queued (tracking.flush_timeout_s at most); the rest stays journaled
        logger.close()
    return {**state.metrics, "step": state.step}


def system_metrics(cfg: RunConfig, run: dict, ctx, device, logger: MetricsLogger | None) -> SystemMetrics | None:
    """The node's system metrics sampler (tracking/system.py), on its local rank 0 worker: through rank 0's
    tracker, or on another node a tracker of its own journaling into the run's journal."""
    if ctx.get_local_rank() != 0 or not wanted(cfg.tracking.system_metrics, device.type):
        return None
    node = f"node{ctx.get_node_rank()}"
    tracker = logger.tracker if logger is not None else None
    if tracker is None:
        storage = ctx.get_storage()
        # the run's journal (entries are named per writer): the driver and `moss tracking replay` send it
        tracker = Tracker(run["tracking_uri"], Journal.on(storage.storage_filesystem, storage.experiment_fs_path),
                          cfg.tracking.retry_every_s, cfg.tracking.flush_timeout_s)
    return SystemMetrics(tracker, run["mlflow_run_id"], node, cfg.tracking.system_metrics_every_s,
                         gpu=device.type == "cuda").start()
