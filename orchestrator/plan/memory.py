"""Peak memory of one training worker (per GPU), in bytes, from the model's shape and the run config.

    weights      the frozen base in its dtype (bf16 on GPU, fp32 on CPU); under FSDP the decoder layers
                 are sharded over the workers, while the root unit (embeddings, heads, vision tower, VQ)
                 and the two layers in flight are gathered whole
    adapter      trainable parameters x 16 B (fp32 weight, gradient, two AdamW moments), sharded under
                 FSDP; DDP adds a 4 B gradient bucket per parameter
    activations  saved for the backward pass: every decoder layer's (or, with activation checkpointing,
                 each layer's input plus one layer recomputed), the adapters' own, and the backward
                 pass's transient gradients
    logits       one loss chunk's fp32 logits over the widest head, recomputed in the backward pass (with
                 trained head rows, also the merged head weight PEFT builds per call, and its gradient)
    margin       plan.margin_gb (CUDA context, NCCL / cuBLAS workspaces) + plan.margin_fraction of the rest

The per-token coefficients were measured on CPU with torch's allocator profiler (tests/unit/plan/
test_estimate_cpu.py checks them, benchmarks/gpu_check.py on a GPU); attention is assumed to be a fused
kernel (SDPA / flash: memory linear in the sequence length).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from .sizing import ModelShape

GiB = 2**30
#: bytes saved per token and decoder layer, per unit of hidden and intermediate size (LLaMA-style layer,
#: rank-16 LoRA), by activation dtype: measured 43 / 16.4 (fp32) and 34 / 9.1 (bf16 autocast) on
#: Chameleon, 31 / 17 and 29 / 9.4 on Emu3 (GQA); about the larger of each is used
LAYER_BYTES = {"fp32": (42.0, 16.5), "bf16": (32.0, 9.5)}
#: the backward pass's transient gradients, bytes per token per unit of intermediate size
TRANSIENT_BYTES = 8.0
#: a loss chunk's logits per element: fp32 copy, log-softmax, their gradients, and the head's own output
LOGIT_BYTES = {"fp32": 20.0, "bf16": 16.0}


@dataclass(frozen=True)
class Workload:
    """What one worker runs: its micro-batch, the run's precision and parallel layout."""

    micro_batch: int
    seq_len: int
    precision: str  # fp32 | bf16
    checkpointing: bool
    strategy: str  # ddp | fsdp
    workers: int
    loss_chunk: int | None
    image_fraction: float  # of a sequence's tokens that are image cells, at most
    head_rows: bool  # adapter.train_image_head: the head's weight is merged (a full copy) at each call
    variant: str
    rank: int
    kernel_size: int
    conv_space: str
    image_rank: int | None = None  # the image branch's, when it differs (adapter.image_rank / match_params)
    conv_activation: str = "none"

    @property
    def tokens(self) -> int:
        return self.micro_batch * self.seq_len

    @property
    def image_r(self) -> int:
        return self.image_rank or self.rank


@dataclass(frozen=True)
class Estimate:
    weights: int
    adapter: int
    activations: int
    logits: int
    margin: int

    @property
    def total(self) -> int:
        return self.weights + self.adapter + self.activations + self.logits + self.margin

    def gib(self) -> dict[str, float]:
        return {**{k: round(v / GiB, 2) for k, v in asdict(self).items()}, "total": round(self.total / GiB, 2)}


def estimate(shape: ModelShape, trainable: int, w: Workload, margin_gb: float, margin_fraction: float) -> Estimate:
    sharded = w.strategy == "fsdp" and w.workers > 1
    weights = weight_bytes(shape, trainable, w, sharded)
    adapter = adapter_bytes(shape, trainable, w, sharded)
    activations = activation_bytes(shape, w)
    logits = logit_bytes(shape, w)
    subtotal = weights + adapter + activations + logits
    margin = int(margin_gb * GiB + margin_fraction * subtotal)
    return Estimate(weights, adapter, activations, logits, margin)


def weight_bytes(shape: ModelShape, trainable: int, w: Workload, sharded: bool) -> int:
    per = 2 if w.precision == "bf16" else 4
    if not sharded:
        return shape.params * per
    in_flight = 2 * shape.max_layer_params  # the layer computing and the one prefetched
    return int((shape.layer_params / w.workers + in_flight + shape.root_params) * per)


def adapter_bytes(shape: ModelShape, trainable: int, w: Workload, sharded: bool) -> int:
    if sharded:
        per_layer = trainable / max(shape.layers, 1)
        return int(16 * trainable / w.workers + 2 * 8 * per_layer)  # + the gathered weights and grads in flight
    return 16 * trainable + (4 * trainable if w.strategy == "ddp" and w.workers > 1 else 0)


def activation_bytes(shape: ModelShape, w: Workload) -> int:
    """Saved activations at the peak of the backward pass."""
    per = 2 if w.precision == "bf16" else 4
    a_h, a_i = LAYER_BYTES[w.precision]
    layer = w.tokens * (a_h * shape.hidden + a_i * shape.intermediate) + adapter_activation_bytes(shape, w, per)
    if w.checkpointing:  # each layer keeps its input; one layer is recomputed at a time
        saved = shape.layers * w.tokens * shape.hidden * per + layer
    else:
        saved = shape.layers * layer
    return int(saved + w.tokens * TRANSIENT_BYTES * shape.intermediate)


def adapter_activation_bytes(shape: ModelShape, w: Workload, per: int) -> float:
    """One layer's adapter activations, by the variant's own formula (orchestrator/moss/variants.py)."""
    from ..moss.variants import get_variant

    projs = len(shape.targets) / max(shape.layers, 1)  # adapted linears per decoder layer (7 by default)
    d_in_sum = sum(d for d, _ in shape.targets) / max(shape.layers, 1)  # their input widths, summed
    return get_variant(w.variant).activation_bytes(w, w.tokens, w.tokens * w.image_fraction, projs, d_in_sum, per)


def logit_bytes(shape: ModelShape, w: Workload) -> int:
    rows = w.tokens if w.loss_chunk is None else min(w.tokens, w.loss_chunk)
    per = 2 if w.precision == "bf16" else 4
    merged = 2 * shape.head_vocab * shape.hidden * per if w.head_rows else 0  # merged weight + its gradient
    return int(rows * shape.head_vocab * LOGIT_BYTES[w.precision] + w.tokens * shape.hidden * per + merged)
