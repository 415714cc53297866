"""MossConfig: the knobs of a MoSS adapter (and of its two baselines), validated on construction."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

CONV_SPACES = ("full", "lowrank")
CONV_ACTIVATIONS = ("none", "gelu")
MOSS_CONFIG_FILE = "moss_config.json"


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def check_field(name: str, value) -> None:
    """Raise ValueError("<name>=<value> <why>") unless ``value`` is valid for MossConfig field ``name``."""
    from .variants import variant_names

    why = None
    if name == "variant" and value not in variant_names():
        why = f"is not one of {variant_names()}"
    elif name == "conv_space" and value not in CONV_SPACES:
        why = f"is not one of {CONV_SPACES}"
    elif name == "conv_activation" and value not in CONV_ACTIVATIONS:
        why = f"is not one of {CONV_ACTIVATIONS}"
    elif name in ("rank", "kernel_size") and not (_is_int(value) and value >= 1):
        why = "must be an integer >= 1"
    elif name == "image_rank" and value is not None and not (_is_int(value) and value >= 1):
        why = "must be an integer >= 1 or null"
    elif name == "match_params" and value is not None:
        why = _match_problem(value)
    elif name == "alpha" and not (isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0):
        why = "must be a number > 0"
    elif name == "alpha_per_rank" and value is not None and not (
            isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0):
        why = "must be a number > 0 or null"
    elif name == "dropout" and not (isinstance(value, (int, float)) and not isinstance(value, bool) and 0 <= value < 1):
        why = "must be in [0, 1)"
    elif name in ("image_inputs", "train_image_head") and not isinstance(value, bool):
        why = "must be true or false"
    elif name == "target_modules" and value is not None and (not isinstance(value, str) or not value):
        why = "must be a non-empty regex or null"
    if why:
        raise ValueError(f"{name}={value!r} {why}")


def _match_problem(value) -> str | None:
    from .variants import variant_names

    if not isinstance(value, dict) or set(value) != {"variant", "rank"}:
        return "must be {variant: <variant>, rank: <int>} (the adapter whose trainable count to match)"
    if value["variant"] not in variant_names():
        return f"names variant {value['variant']!r}, not one of {variant_names()}"
    if not (_is_int(value["rank"]) and value["rank"] >= 1):
        return "needs an integer rank >= 1"
    return None


@dataclass(frozen=True)
class MossConfig:
    """Settings of one adapter: the one schema, also the run config's ``adapter:`` section (sections/model.py builds
    that section from these fields, their types, defaults, comments and checks)."""

    #: a registered variant (orchestrator/moss/variants.py): lora (PEFT's LoRA, one set for both
    #: modalities), moe_lora (a separate linear LoRA per modality, hard-routed), moss (linear LoRA on text +
    #: causal convolutional LoRA on images)
    variant: str = "moss"
    rank: int = 8  # LoRA rank r of every branch, an integer >= 1
    alpha: float = 16.0  # > 0; scale = alpha / rank, on both branches
    #: > 0 or null: alpha = alpha_per_rank x rank (it overrides alpha), so the scale alpha / rank stays the same
    #: across a rank ablation; null: alpha as given
    alpha_per_rank: float | None = None
    dropout: float = 0.0  # dropout on the adapter input, in [0, 1)
    #: rank of the image branch (variants with one); null: rank. The scale stays alpha / rank on both branches
    image_rank: int | None = None
    #: {variant: V, rank: R} or null: solve image_rank (from the per-layer parameter formula, on the model's own
    #: layer widths) so this adapter trains as many parameters as V at rank R, within 2% (equal-parameter
    #: comparisons); the adapter is built and saved with the solved rank (MLflow: adapter.image_rank_in_use)
    match_params: dict | None = dataclasses.field(default=None, hash=False)
    #: k of the causal k x k conv (variants with a conv), an integer >= 1; 1 makes moss as expressive as moe_lora
    kernel_size: int = 3
    #: full: k x k conv d_in -> r, then B (the paper's form); lowrank: A to r, k x k conv r -> r with a residual,
    #: then B (Zhong et al.'s Conv-LoRA, one causal expert)
    conv_space: str = "full"
    #: none, or gelu (variant moss with conv_space lowrank only): A x + gelu(conv(A x)), as Zhong et al.'s
    #: Conv-LoRA experts do (conv then GELU); the full conv stays linear, as in the MoSS paper
    conv_activation: str = "none"
    #: prompt images (not targets) use the image branch too; false: they take the text branch
    image_inputs: bool = True
    #: regex of the linear layers to wrap; null: the backbone's decoder projections
    target_modules: str | None = None
    #: also train the image-code rows of the output head (PEFT trainable tokens on the backbone's
    #: image_head_module). Meta's facebook/chameleon-7b cannot generate images until those rows are trained
    #: (Anole trained exactly them); off for checkpoints that already generate images
    train_image_head: bool = False

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            try:
                check_field(f.name, getattr(self, f.name))
            except ValueError as e:
                raise ValueError(f"MossConfig.{e}") from None
        if self.conv_activation != "none":
            from .variants import get_variant

            if self.conv_space != "lowrank" or not get_variant(self.variant).uses_conv:
                raise ValueError(f"MossConfig.conv_activation={self.conv_activation} needs a conv variant with "
                                 "conv_space=lowrank (Conv-LoRA's form); the full conv stays linear, as in the MoSS paper")
        if self.alpha_per_rank is not None:
            object.__setattr__(self, "alpha", float(self.alpha_per_rank * self.rank))
        if self.match_params is not None:
            from .variants import get_variant

            if get_variant(self.variant).shared_branch:
                raise ValueError(f"MossConfig.match_params: {self.variant} has no image branch whose rank could be "
                                 "solved; set its rank instead")

    @property
    def scaling(self) -> float:
        return self.alpha / self.rank

    @property
    def image_r(self) -> int:
        """The image branch's rank."""
        return self.image_rank or self.rank

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
    """Closed-form count of adapter parameters on one wrapped d_in -> d_out linear layer (the variant's formula).

    lora:          r (d_in + d_out)
    moe_lora:      2 r (d_in + d_out)
    moss full:     r (d_in + d_out) + k^2 d_in r + r d_out
    moss lowrank:  r (d_in + d_out) + r d_in + k^2 r^2 + r d_out
    """
    from .variants import get_variant

    return get_variant(cfg.variant).params_per_layer(cfg, d_in, d_out)


def match_parameters(cfg: MossConfig, dims: list[tuple[int, int]], tolerance: float = 0.02) -> MossConfig:
    """``cfg`` with ``image_rank`` solved for ``match_params`` on layers of these (d_in, d_out) widths: the image
    rank whose total trainable count is closest to the reference adapter's (ValueError beyond ``tolerance``).
    Unchanged without match_params, or when image_rank is already set (a saved, solved adapter)."""
    if cfg.match_params is None or cfg.image_rank is not None:
        return cfg
    if not dims:
        raise ValueError("match_params: no adapted layers to count")
    ref = MossConfig(variant=cfg.match_params["variant"], rank=cfg.match_params["rank"], kernel_size=cfg.kernel_size,
                     conv_space=cfg.conv_space)
    target = sum(trainable_params_per_layer(ref, i, o) for i, o in dims)

    def total(ri: int) -> int:
        c = dataclasses.replace(cfg, image_rank=ri, match_params=None)
        return sum(trainable_params_per_layer(c, i, o) for i, o in dims)

    if total(2) == total(1):
        raise ValueError(f"match_params: {cfg.variant}'s parameter formula does not depend on the image rank "
                         "(Variant.params_per_layer must count the image branch at cfg.image_r)")
    lo, hi = 1, 1
    while total(hi) < target and hi < 1 << 20:  # the count grows with the image rank
        hi *= 2
    while lo < hi:
        mid = (lo + hi) // 2
        lo, hi = (mid + 1, hi) if total(mid) < target else (lo, mid)
    best = min({max(1, lo - 1), lo}, key=lambda r: abs(total(r) - target))
    off = (total(best) - target) / target
    if abs(off) > tolerance:
        raise ValueError(
            f"match_params: no image rank brings {cfg.variant} (rank {cfg.rank}) within {tolerance:.0%} of "
            f"{ref.variant} at rank {ref.rank} ({target:,} parameters): image_rank {best} gives {total(best):,} "
            f"({off:+.1%}); lower adapter.rank so the image branch has room")
    return dataclasses.replace(cfg, image_rank=best)
