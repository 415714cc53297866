"""Equal-parameter adapters: an image branch of its own rank, solved so the adapter trains as many
parameters as a reference (adapter.match_params)."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from orchestrator.moss import MossConfig, apply_moss, expected_trainable_parameters, load_adapter, save_adapter
from orchestrator.moss import trainable_parameters
from orchestrator.moss.config import match_parameters, trainable_params_per_layer
from orchestrator.training.objective import adapter_loss
from tests.helpers import mixed_batch, randomize_adapter, spec_for

ANOLE_7B = ([(4096, 4096)] * 4 + [(4096, 11008)] * 2 + [(11008, 4096)]) * 32  # q k v o gate up down x 32 layers


def count(cfg, dims):
    return sum(trainable_params_per_layer(cfg, i, o) for i, o in dims)


@pytest.mark.parametrize("variant,conv_space,rank", [("moss", "full", 128), ("moss", "lowrank", 64),
                                                     ("moe_lora", "full", 64)])
def test_the_solved_image_rank_matches_the_reference_within_two_percent(variant, conv_space, rank):
    cfg = MossConfig(variant=variant, conv_space=conv_space, rank=rank, match_params={"variant": "lora", "rank": 256})
    solved = match_parameters(cfg, ANOLE_7B)
    target = count(MossConfig(variant="lora", rank=256), ANOLE_7B)
    assert solved.image_rank is not None and abs(count(solved, ANOLE_7B) / target - 1) <= 0.02
    for other in (solved.image_rank - 1, solved.image_rank + 1):  # the closest integer rank
        if other >= 1:
            off = abs(count(dataclasses.replace(solved, image_rank=other), ANOLE_7B) - target)
            assert off >= abs(count(solved, ANOLE_7B) - target)
    assert match_parameters(solved, ANOLE_7B) == solved  # a saved, solved adapter is not solved again


def test_an_unreachable_match_and_a_variant_without_image_branch_are_refused():
    with pytest.raises(ValueError, match="lower adapter.rank"):  # its text branch alone is larger already
        match_parameters(MossConfig(rank=300, match_params={"variant": "lora", "rank": 256}), ANOLE_7B)
    with pytest.raises(ValueError, match="no image branch"):
        MossConfig(variant="lora", match_params={"variant": "lora", "rank": 256})
    with pytest.raises(ValueError, match="match_params"):
        MossConfig(match_params={"variant": "lora"})
    from orchestrator.config import ConfigError, load_config

    with pytest.raises(ConfigError, match="no image branch"):  # refused by the run config, before any cluster work
        load_config(None, ["adapter.variant=lora", "adapter.match_params={variant: moe_lora, rank: 8}"])
    with pytest.raises(ConfigError, match="give one"):
        load_config(None, ["adapter.image_rank=4", "adapter.match_params={variant: lora, rank: 8}"])


def test_a_variant_whose_formula_ignores_the_image_rank_cannot_be_matched(monkeypatch):
    from orchestrator.moss.variants import get_variant

    moe = get_variant("moe_lora")
    monkeypatch.setattr(type(moe), "params_per_layer", lambda self, cfg, d_in, d_out: 2 * cfg.rank * (d_in + d_out))
    with pytest.raises(ValueError, match="does not depend on the image rank"):
        match_parameters(MossConfig(variant="moe_lora", rank=64, match_params={"variant": "lora", "rank": 256}), ANOLE_7B)


@pytest.mark.parametrize("cfg", [
    MossConfig(variant="moe_lora", rank=2, match_params={"variant": "lora", "rank": 8}),  # solved: image rank 6
    MossConfig(variant="moss", rank=4, image_rank=2),  # a conv branch of another rank than the text branch
    MossConfig(variant="moss", rank=2, image_rank=5, conv_space="lowrank"),
], ids=["moe_lora-matched", "moss-full-r4-img2", "moss-lowrank-r2-img5"])
def test_an_image_branch_of_its_own_rank_builds_trains_and_round_trips(cfg, tmp_path):
    spec = spec_for("chameleon")
    model = apply_moss(spec.build(seed=0), cfg, spec)
    solved = model.get_base_model().moss_config
    assert solved.image_rank is not None and solved.image_rank != cfg.rank
    assert trainable_parameters(model) == expected_trainable_parameters(model, cfg, spec)
    if cfg.match_params:
        lora = apply_moss(spec.build(seed=0), MossConfig(variant="lora", rank=8), spec)
        assert abs(trainable_parameters(model) / trainable_parameters(lora) - 1) <= 0.02
    batch = mixed_batch(spec)
    base = adapter_loss(spec.build(seed=0), spec, batch).loss
    assert torch.equal(adapter_loss(model, spec, batch).loss, base)  # zero-init image B: the base model
    randomize_adapter(model)
    out = adapter_loss(model, spec, batch)
    out.loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for n, p in model.named_parameters() if "lora_img" in n)
    save_adapter(model, tmp_path)
    restored = load_adapter(spec.build(seed=0), tmp_path, spec)
    assert restored.get_base_model().moss_config.image_rank == solved.image_rank
    with torch.no_grad():
        assert torch.equal(adapter_loss(restored, spec, batch).loss, adapter_loss(model.eval(), spec, batch).loss)
