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


def test_alpha_per_rank_keeps_the_scale_across_ranks():
    from orchestrator.config import ConfigError, load_config

    assert [MossConfig(rank=r, alpha_per_rank=2).scaling for r in (4, 32, 256)] == [2.0, 2.0, 2.0]
    assert MossConfig(rank=32, alpha_per_rank=0.5).alpha == 16.0
    cfg = MossConfig(rank=8, alpha_per_rank=3)
    assert MossConfig.from_dict(cfg.to_dict()) == cfg
    run = load_config(None, ["adapter.rank=64", "adapter.alpha_per_rank=0.25"])
    assert run.adapter.alpha == 16.0 and run.adapter.to_moss_config().scaling == 0.25  # logged as in use
    with pytest.raises(ConfigError, match="alpha_per_rank"):
        load_config(None, ["adapter.alpha_per_rank=0"])
