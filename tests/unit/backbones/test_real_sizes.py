"""Published-size configs built on the meta device with MoSS at rank 256: trainable parameters."""

from __future__ import annotations

import pytest
import torch

from orchestrator.moss import MossConfig, apply_moss, expected_trainable_parameters, trainable_parameters
from orchestrator.moss.variants import all_forms
from orchestrator.backbones import spec_class
from tests.helpers import BACKBONE_NAMES, spec_for

SIZES = [(name, size) for name in BACKBONE_NAMES for size in spec_class(name).real_sizes]
RANK256 = {slug: MossConfig(rank=256, alpha=512, kernel_size=3, **kw) for slug, kw in all_forms().items()}


@pytest.mark.parametrize("name, size", SIZES)
def test_real_size_trainable_parameters(name, size, capsys):
    spec = spec_for(name)
    rows = []
    for label, cfg in RANK256.items():
        model = spec.build_meta(size)
        with torch.device("meta"):
            peft_model = apply_moss(model, cfg, spec)
        n = trainable_parameters(peft_model)
        assert n == expected_trainable_parameters(peft_model, cfg, spec)
        rows.append((label, n))
    base = sum(p.numel() for n, p in peft_model.named_parameters() if ".lora_" not in n)
    with capsys.disabled():
        print(f"\n{name}-{size}: base {base / 1e9:.2f}B; rank 256 trainable: "
              + ", ".join(f"{label} {n / 1e6:.1f}M" for label, n in rows))
    assert rows[0][1] < rows[1][1] < rows[2][1]  # lora < moe_lora < moss-full
