"""MossConfig: the knobs of a MoSS adapter (and of its two baselines), validated on construction."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

VARIANTS = ("lora", "moe_lora", "moss")
CONV_SPACES = ("full", "lowrank")
MOSS_CONFIG_FILE = "moss_config.json"


@dataclass(frozen=True)
class MossConfig:
    """Settings of one adapter.

    variant: ``lora`` (PEFT's LoRA, one set for both modalities), ``moe_lora`` (a separate linear LoRA
        per modality, hard-routed), ``moss`` (linear LoRA on text + causal convolutional LoRA on images).
    rank / alpha / dropout: LoRA rank r, scaling alpha (scale = alpha / r), dropout on the adapter input.
    kernel_size: k of the causal k x k conv (moss only); k = 1 makes moss as expressive as moe_lora.
    conv_space: ``full`` = k x k conv d_in -> r, then B (the paper's form); ``lowrank`` = A to r,
        k x k conv r -> r with a residual, then B (Zhong et al.'s Conv-LoRA, single causal expert).
    image_inputs: whether image tokens of the prompt (not generated) use the image branch too;
        when False they take the text branch.
    target_modules: regex overriding the backbone's default (its language model's linear layers).
    train_image_head: also train the image-code rows of the output head (PEFT's trainable tokens on the
        backbone's ``image_head_module``), e.g. for a checkpoint whose image rows were never trained.
    """

    variant: str = "moss"
    rank: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    kernel_size: int = 3
    conv_space: str = "full"
    image_inputs: bool = True
    target_modules: str | None = None
    train_image_head: bool = False

    def __post_init__(self) -> None:
        if self.variant not in VARIANTS:
            raise ValueError(f"MossConfig.variant={self.variant!r} is not one of {VARIANTS}")
        if self.conv_space not in CONV_SPACES:
            raise ValueError(f"MossConfig.conv_space={self.conv_space!r} is not one of {CONV_SPACES}")
        for name in ("rank", "kernel_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"MossConfig.{name}={value!r} must be an integer >= 1")
        if isinstance(self.alpha, bool) or not isinstance(self.alpha, (int, float)) or self.alpha <= 0:
            raise ValueError(f"MossConfig.alpha={self.alpha!r} must be a number > 0")
        if isinstance(self.dropout, bool) or not isinstance(self.dropout, (int, float)) or not 0 <= self.dropout < 1:
            raise ValueError(f"MossConfig.dropout={self.dropout!r} must be in [0, 1)")
        for name in ("image_inputs", "train_image_head"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"MossConfig.{name}={getattr(self, name)!r} must be true or false")
        if self.target_modules is not None and (not isinstance(self.target_modules, str) or not self.target_modules):
            raise ValueError(f"MossConfig.target_modules={self.target_modules!r} must be a non-empty regex or null")

    @property
    def scaling(self) -> float:
        return self.alpha / self.rank

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> MossConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"MossConfig got unknown field(s) {unknown}; known: {sorted(known)}")
        return cls(**data)

    def save(self, directory: str | Path, **extra) -> None:
        payload = {"moss": self.to_dict(), **extra}
        Path(directory, MOSS_CONFIG_FILE).write_text(json.dumps(payload, indent=2, sort_keys=True))

    @classmethod
    def load(cls, directory: str | Path) -> tuple[MossConfig, dict]:
        path = Path(directory, MOSS_CONFIG_FILE)
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found: not an adapter directory written by save_adapter")
        payload = json.loads(path.read_text())
        extra = {k: v for k, v in payload.items() if k != "moss"}
        return cls.from_dict(payload["moss"]), extra


def trainable_params_per_layer(cfg: MossConfig, d_in: int, d_out: int) -> int:
    """Closed-form count of adapter parameters on one wrapped d_in -> d_out linear layer.

    lora:          r (d_in + d_out)
    moe_lora:      2 r (d_in + d_out)
    moss full:     r (d_in + d_out) + k^2 d_in r + r d_out
    moss lowrank:  r (d_in + d_out) + r d_in + k^2 r^2 + r d_out
    """
    r, k = cfg.rank, cfg.kernel_size
    text = r * (d_in + d_out)
    if cfg.variant == "lora":
        return text
    if cfg.variant == "moe_lora":
        return 2 * text
    if cfg.conv_space == "full":
        return text + k * k * d_in * r + r * d_out
    return text + r * d_in + k * k * r * r + r * d_out
