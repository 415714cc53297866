"""docs/extending.md's worked example: a new adapter variant in one file, registered from here, touching nothing else.

The toy variant (a tanh-squashed linear LoRA at image positions) is defined and registered below, then
validated by the run config, applied by apply_moss, counted, trained for a few steps, saved and loaded,
decoded with the caches and labelled in reports, all through the public API.
"""

from __future__ import annotations

import pytest
import torch

from orchestrator.config import load_config
from orchestrator.moss import MossConfig, apply_moss, expected_trainable_parameters, load_adapter, save_adapter
from orchestrator.moss import trainable_parameters
from orchestrator.moss.variants import Variant, all_forms, init_linear, register_variant, unregister_variant
from orchestrator.training.objective import adapter_loss
from tests.helpers import mixed_batch, spec_for


class TanhLora(Variant):  # --- the whole variant: docs/extending.md shows this class ---
    name = "tanh_lora"
    description = "a linear LoRA per modality; the image branch's rank space squashed by tanh"

    def params_per_layer(self, cfg, d_in, d_out):
        return self.text_params(cfg.rank, d_in, d_out) + self.text_params(cfg.image_r, d_in, d_out)

    def image_macs_per_token(self, cfg, d_in, d_out):
        return self.text_params(cfg.image_r, d_in, d_out)

    def activation_bytes(self, cfg, tokens, image_tokens, projs, d_in_sum, per):
        return tokens * projs * (cfg.rank + cfg.image_r) * per + image_tokens * projs * cfg.image_r * per

    def build(self, layer, name, cfg, r):
        layer.lora_img_A[name] = init_linear(layer.in_features, r)

    def image_rank_space(self, layer, name, flat, plan):
        return torch.tanh(layer.lora_img_A[name](flat)) * plan.image_weight(flat.dtype)

    def step_rank_space(self, layer, name, x):
        return torch.tanh(layer.lora_img_A[name](x))


@pytest.fixture
def toy():
    register_variant(TanhLora())
    yield MossConfig(variant="tanh_lora", rank=4, alpha=8)
    unregister_variant("tanh_lora")


def test_a_registered_variant_is_known_everywhere(toy):
    assert all_forms()["tanh_lora"] == {"variant": "tanh_lora"}
    assert load_config(None, ["adapter.variant=tanh_lora"]).adapter.to_moss_config() == MossConfig(variant="tanh_lora")
    unregister_variant("tanh_lora")
    with pytest.raises(ValueError, match="is not one of"):
        MossConfig(variant="tanh_lora")
    with pytest.raises(ValueError, match="built in"):
        unregister_variant("moss")


def test_a_registered_variant_trains_saves_and_loads(toy, tmp_path):
    spec = spec_for("chameleon")
    torch.manual_seed(0)
    model = apply_moss(spec.build(seed=0), toy, spec)
    assert trainable_parameters(model) == expected_trainable_parameters(model, toy, spec) > 0
    batch = mixed_batch(spec)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    losses = []
    for _ in range(6):
        out = adapter_loss(model, spec, batch)
        out.loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(float(out.image_loss.detach()))
    assert losses[-1] < losses[0]  # the image branch learns
    img_b = [p for n, p in model.named_parameters() if "lora_img_B" in n]  # zero at init
    assert img_b and all(float(p.detach().abs().sum()) > 0 for p in img_b)
    save_adapter(model, tmp_path / "adapter")
    restored = load_adapter(spec.build(seed=0), tmp_path / "adapter", spec)
    model.eval()
    with torch.no_grad():
        assert torch.allclose(adapter_loss(model, spec, batch).loss, adapter_loss(restored, spec, batch).loss, atol=1e-6)


def test_a_registered_variant_decodes_with_the_caches(toy):
    """Cached decoding (KV + the variant's step_rank_space) equals one full forward, alone and in a batch."""
    from tests.unit.evaluation.test_decoding import TOL, cached_logits, full_logits, interleaved, model_for, off

    spec = spec_for("chameleon")
    model = model_for(spec, toy)
    ids, segs = interleaved(spec)
    ref_text, ref_img = full_logits(spec, model, ids, segs)
    text, img = cached_logits(spec, model, ids, segs, segs[1].offset + 3)  # prefill ends inside an answer image
    assert off(text, ref_text) <= TOL and off(img, ref_img) <= TOL
    from tests.unit.evaluation.test_batch_decoding import EXAMPLES, alone, batched_hidden, example

    examples = [example(spec, model, *ex) for ex in EXAMPLES]
    for ex, h in zip(examples, batched_hidden(spec, model, examples)):
        assert off(spec.text_logits(model, h), spec.text_logits(model, alone(spec, model, ex))) <= TOL
