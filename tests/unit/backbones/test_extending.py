"""docs/extending.md's backbone example: a spec registered from here is known to get_backbone, the run
config and apply_moss, and trains, without touching any other file."""

from __future__ import annotations

import pytest
import torch

from orchestrator.backbones import get_backbone, register_backbone, unregister_backbone
from orchestrator.backbones.chameleon import ChameleonSpec
from orchestrator.config import ConfigError, load_config
from orchestrator.moss import MossConfig, apply_moss, expected_trainable_parameters, trainable_parameters
from tests.helpers import draw


class DeepChameleonSpec(ChameleonSpec):  # --- the example: a family member with three decoder layers ---
    name = "deep_chameleon"

    def random_config(self):
        config = super().random_config()
        config.num_hidden_layers = 3
        return config


@pytest.fixture
def toy():
    register_backbone("deep_chameleon", DeepChameleonSpec)
    yield get_backbone("deep_chameleon")
    unregister_backbone("deep_chameleon")


def test_a_registered_backbone_is_known_to_the_run_config(toy):
    assert load_config(None, ["backbone.name=deep_chameleon"]).backbone.name == "deep_chameleon"
    unregister_backbone("deep_chameleon")
    with pytest.raises(ConfigError, match="unknown backbone 'deep_chameleon'"):
        load_config(None, ["backbone.name=deep_chameleon"])
    with pytest.raises(ValueError, match="built in"):
        register_backbone("emu3", DeepChameleonSpec)


def test_a_registered_backbone_trains_with_moss(toy):
    model = apply_moss(toy.build(seed=0), MossConfig(rank=4, alpha=8), toy)
    assert len(toy.decoder_layers(model)) == 3
    assert trainable_parameters(model) == expected_trainable_parameters(model, MossConfig(rank=4, alpha=8), toy)
    batch = toy.collate([toy.encode(["Draw a red square.", draw("red")], targets=[False, True])])
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    losses = []
    for _ in range(5):
        out = toy.loss(model, batch)
        out.loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(float(out.loss.detach()))
    assert losses[-1] < losses[0]
