"""MossConfig validation and the closed-form parameter counts."""

from __future__ import annotations

import pytest

from orchestrator.moss import MossConfig, trainable_params_per_layer


@pytest.mark.parametrize(
    "field, value",
    [("variant", "dora"), ("rank", 0), ("rank", 2.5), ("kernel_size", 0), ("conv_space", "wide"),
     ("alpha", -1), ("dropout", 1.0), ("image_inputs", "yes"), ("target_modules", "")],
)
def test_bad_values_name_the_field(field, value):
    with pytest.raises(ValueError, match=f"MossConfig.{field}="):
        MossConfig(**{field: value})


def test_round_trip_and_unknown_fields(tmp_path):
    cfg = MossConfig(variant="moe_lora", rank=16, image_inputs=False)
    cfg.save(tmp_path, backbone="emu3")
    loaded, extra = MossConfig.load(tmp_path)
    assert loaded == cfg and extra == {"backbone": "emu3"}
    with pytest.raises(ValueError, match="unknown field"):
        MossConfig.from_dict({"variant": "moss", "kernal_size": 3})


def test_formula_examples():
    # d_in = d_out = 4096, r = 256, k = 3
    d, r = 4096, 256
    assert trainable_params_per_layer(MossConfig(variant="lora", rank=r), d, d) == r * 2 * d
    assert trainable_params_per_layer(MossConfig(variant="moe_lora", rank=r), d, d) == 2 * r * 2 * d
    full = trainable_params_per_layer(MossConfig(variant="moss", rank=r, kernel_size=3), d, d)
    assert full == r * 2 * d + 9 * d * r + r * d
    low = trainable_params_per_layer(MossConfig(variant="moss", rank=r, kernel_size=3, conv_space="lowrank"), d, d)
    assert low == r * 2 * d + r * d + 9 * r * r + r * d
    # k = 1: moss-full has exactly moe_lora's parameters
    assert trainable_params_per_layer(MossConfig(variant="moss", rank=r, kernel_size=1), d, d) == 2 * r * 2 * d
