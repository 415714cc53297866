"""train.loss_normalization: what each weighting minimises, and a step over micro-batches of different
mixes takes the gradient of the loss computed over all of them at once (frame tokens on the text side)."""

import math

import pytest
import torch

from orchestrator.backbones.loss import LossWeights, target_counts
from orchestrator.config import load_config
from orchestrator.moss import MossConfig, apply_moss
from orchestrator.training.metrics import loss_metrics
from orchestrator.training.objective import adapter_loss, loss_weights
from tests.helpers import mixed_batch, randomize_adapter, spec_for, text_batch


def test_weights_combine_sums_as_documented():
    tokens, per = LossWeights(1.0, 2.0), LossWeights(1.0, 2.0, "per_modality")
    assert tokens.combine(6.0, 3, 8.0, 4) == pytest.approx((6 + 16) / 7)
    assert per.combine(6.0, 3, 8.0, 4) == pytest.approx(6 / 3 + 2 * 8 / 4)
    # a modality at weight 0 neither adds to the token mean nor dilutes it
    assert LossWeights(1.0, 0.0).combine(6.0, 3, 8.0, 400) == pytest.approx(2.0)
    # a modality absent from the batch drops out of both
    assert per.combine(6.0, 3, 0.0, 0) == pytest.approx(2.0)
    assert tokens.combine(0.0, 0, 8.0, 4) == pytest.approx(4.0)


def test_auto_is_per_modality_only_where_the_image_loss_is_a_regression():
    cfg = load_config(None, [])
    assert loss_weights(cfg.train, spec_for("chameleon")).normalization == "tokens"
    assert loss_weights(cfg.train, spec_for("emu2")).normalization == "per_modality"
    cfg = load_config(None, ["train.loss_normalization=tokens", "train.image_weight=0.5"])
    assert loss_weights(cfg.train, spec_for("emu2")) == LossWeights(1.0, 0.5, "tokens")


@pytest.mark.parametrize("name", ["chameleon", "emu2"])
@pytest.mark.parametrize("weights", [LossWeights(1.0, 3.0), LossWeights(1.0, 0.0), LossWeights(0.5, 2.0, "per_modality")])
def test_a_step_over_micro_batches_takes_the_gradient_of_the_whole_loss(name, weights):
    spec = spec_for(name)
    model = apply_moss(spec.build(seed=0), MossConfig(rank=4), spec)
    randomize_adapter(model)
    params = [p for p in model.parameters() if p.requires_grad]
    micro = [mixed_batch(spec), text_batch(spec)]  # different text / image mixes

    outs = [adapter_loss(model, spec, b, weights) for b in micro]
    for b, out in zip(micro, outs):
        assert target_counts(b["labels"], spec.is_image_target) == (out.n_text + out.n_frame, out.n_image)
        image_sum = out.image_sum.detach() if out.image_sum is not None else 0.0
        other = out.text_sum.detach() + (out.frame_sum.detach() if out.frame_sum is not None else 0.0)
        combined = weights.combine(other, out.n_text + out.n_frame, image_sum, out.n_image)
        assert float(out.loss.detach()) == pytest.approx(float(combined), rel=1e-6)
    n_text, n_image = sum(o.n_text + o.n_frame for o in outs), sum(o.n_image for o in outs)
    assert n_image > 0 and outs[1].n_image == 0

    # the training step: counts first, then each micro-batch's sums scaled and backpropagated alone
    scales = weights.scales(n_text, n_image)
    for b in micro:
        adapter_loss(model, spec, b, weights).weighted_sum(scales).backward()
    stepped = [p.grad.clone() for p in params]
    model.zero_grad()

    # the reference: the loss of the whole step, from the summed per-modality sums
    outs = [adapter_loss(model, spec, b, weights) for b in micro]
    text = sum(o.text_sum + (o.frame_sum if o.frame_sum is not None else 0.0) for o in outs)
    image = sum(o.image_sum for o in outs if o.image_sum is not None)
    whole = weights.combine(text, n_text, image, n_image)
    whole.backward()
    for got, want in zip(stepped, [p.grad for p in params]):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-8)

    # and the logged metric is that loss
    text, image, whole = float(text.detach()), float(image.detach()), float(whole.detach())
    # the metric from the sums of each kind (text and frame apart) is that loss
    frame = sum(float(o.frame_sum.detach()) for o in outs if o.frame_sum is not None)
    n_frame = sum(o.n_frame for o in outs)
    assert n_frame > 0
    sums = [text - frame, n_text - n_frame, image, n_image, 0, frame, n_frame]
    assert loss_metrics(sums, "train", weights)["train/loss"] == pytest.approx(whole, rel=1e-6)
    if weights.normalization == "per_modality":
        assert whole == pytest.approx(0.5 * text / n_text + 2.0 * image / n_image, rel=1e-6)
    elif weights.image == 0:
        assert whole == pytest.approx(text / n_text, rel=1e-6)
    assert math.isfinite(whole)
