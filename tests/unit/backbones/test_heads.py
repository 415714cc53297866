"""Random-init presets get logit heads a frozen base can make confident predictions through (heads.py)."""

import math
from operator import attrgetter

import pytest
import torch

from orchestrator.backbones.heads import HEAD_MARGIN, config_std, confident_std
from tests.helpers import BACKBONE_NAMES, spec_for


def best_case_probability(weight: torch.Tensor) -> torch.Tensor:
    """Per row c: softmax probability of c when the hidden state (norm sqrt(d), an RMSNorm's output) points along row c."""
    d = weight.shape[1]
    h = weight / weight.norm(dim=1, keepdim=True) * math.sqrt(d)
    return torch.softmax(h @ weight.t(), dim=-1).diagonal()


@pytest.mark.parametrize("name", BACKBONE_NAMES)
def test_every_logit_head_can_express_a_confident_prediction(name):
    spec = spec_for(name)
    model = spec.build(seed=0)
    for path in spec.logit_heads:
        weight = attrgetter(path)(model).weight.detach().float()
        p = best_case_probability(weight)
        assert p.median() > 0.95, (path, p.median())  # the real class's 0.02 init gives < 0.05 here
        drawn_like_real = torch.randn(weight.shape, generator=torch.Generator().manual_seed(0)) * 0.02
        assert best_case_probability(drawn_like_real).median() < 0.05


def test_the_std_follows_the_logit_bound():
    d, vocab = 64, 768
    std = confident_std(d, vocab)
    assert std * (d - math.sqrt(2 * d * math.log(vocab))) == pytest.approx(HEAD_MARGIN)
    assert confident_std(2048, vocab) < 0.02  # wide heads: the config's own init already suffices
    with pytest.raises(ValueError, match="cannot single out"):
        confident_std(4, 10_000)


def test_heads_are_seeded():
    spec = spec_for("chameleon")
    a, b, c = spec.build(seed=0), spec.build(seed=0), spec.build(seed=1)
    assert torch.equal(a.lm_head.weight, b.lm_head.weight) and not torch.equal(a.lm_head.weight, c.lm_head.weight)


@pytest.mark.parametrize("name", BACKBONE_NAMES)
def test_the_rest_keeps_the_real_init(name):
    """Input embeddings (not tied to a redrawn head) and the decoder's projections stay at the config's std."""
    spec = spec_for(name)
    model = spec.build(seed=0)
    std = config_std(model)
    assert model.get_input_embeddings().weight.std().item() == pytest.approx(std, rel=0.1)
    q = spec.decoder_layers(model)[0].self_attn.q_proj.weight
    assert q.std().item() == pytest.approx(std, rel=0.1)


def test_a_head_tied_to_the_embeddings_is_refused():
    from orchestrator.backbones.heads import init_confident_heads

    spec = spec_for("chameleon")
    model = spec.build(seed=0)
    model.lm_head.weight = model.get_input_embeddings().weight
    with pytest.raises(ValueError, match="tied to the input embeddings"):
        init_confident_heads(model, ("lm_head",), (), seed=0)
