"""Backbone specs: targets, encode, layouts, loss, and the local-checkpoint loading path."""

from __future__ import annotations

import re

import pytest
import torch
from torch import nn

from orchestrator.backbones import IGNORE_INDEX, get_backbone
from orchestrator.moss import MossConfig, apply_moss
from orchestrator.training.objective import adapter_loss
from tests.helpers import draw, mixed_batch, spec_for, two_image_example


def test_target_regex_wraps_exactly_the_language_model_projections(spec):
    model = spec.build(seed=0)
    hits = [n for n, m in model.named_modules() if re.fullmatch(spec.target_modules, n)]
    assert len(hits) == spec.expected_target_count(model) == 2 * 7
    assert all(isinstance(model.get_submodule(n), nn.Linear) for n in hits)
    assert not any(k in n for n in hits for k in ("vqmodel", "vision", "aligner", "generation"))


def test_unknown_backbone():
    with pytest.raises(ValueError, match="unknown backbone"):
        get_backbone("gpt5")


def test_encode_masks_prompt_and_lays_out_images(spec):
    ex = two_image_example(spec)
    ids, labels, segs = ex["input_ids"], ex["labels"], ex["image_layout"]
    assert ids.shape == labels.shape and len(segs) == 2
    first, second = segs
    assert first.is_input and not second.is_input and first.complete and second.complete
    assert (labels[: first.offset + first.n_cells] == IGNORE_INDEX).all()
    assert (labels[second.positions()] == ids[second.positions()]).all()
    for seg in segs:  # every cell holds an image code; the position before the image is a special token
        assert spec.is_image_target(ids[seg.positions()]).all()
        assert not spec.is_image_target(ids[seg.offset - 1 : seg.offset]).any()


def test_emu3_images_keep_their_aspect_ratio_and_eol_column():
    spec = spec_for("emu3")
    segs = two_image_example(spec)["image_layout"]
    assert (segs[0].height, segs[0].width) == (8, 8) and (segs[1].height, segs[1].width) == (6, 10)
    ids = two_image_example(spec)["input_ids"]
    eol = spec.token_id(spec.eol)
    for seg in segs:
        ends = [seg.offset + i * seg.row_stride + seg.width for i in range(seg.height)]
        assert seg.row_stride == seg.width + 1 and all(int(ids[p]) == eol for p in ends)


def test_images_go_through_the_vq(spec):
    if spec.continuous_images:  # placeholders in the ids; the image rides along as pixels for the model to embed
        a, b = spec.encode([draw("red")]), spec.encode([draw("black", shape="circle")])
        assert torch.equal(a["input_ids"], b["input_ids"])
        pa, pb = (spec.collate([e])["pixel_values"] for e in (a, b))
        assert not torch.equal(pa, pb) and torch.equal(pa, spec.collate([spec.encode([draw("red")])])["pixel_values"])
        return
    red = spec.encode([draw("red")])["input_ids"]
    stripes = spec.encode([draw("black", shape="circle")])["input_ids"]
    assert not torch.equal(red, stripes)
    assert torch.equal(red, spec.encode([draw("red")])["input_ids"])  # deterministic


def test_loss_trains_image_tokens(spec):
    """Chameleon's HF forward masks image logits; our loss must still give image rows gradients."""
    model = spec.build(seed=0)
    out = adapter_loss(model, spec, mixed_batch(spec))
    assert torch.isfinite(out.loss) and out.image_loss is not None and out.text_loss is not None
    assert out.n_image > 0 and out.n_text > 0
    out.loss.backward()
    if spec.name == "emu2":  # image targets are regressed through project_down
        assert model.project_down.weight.grad.abs().sum() > 0
        return
    head = model.model.generation_head.vision_head.weight if spec.name == "janus" else model.lm_head.weight
    rows = slice(None) if spec.name == "janus" else spec.image_token_ids
    assert head.grad[rows].abs().sum() > 0


def test_loss_weights_change_only_the_total(spec):
    model, batch = spec.build(seed=0), mixed_batch(spec)
    a, b = adapter_loss(model, spec, batch), adapter_loss(model, spec, batch, weights=(1.0, 0.0))
    assert torch.equal(a.image_loss, b.image_loss) and torch.equal(a.text_loss, b.text_loss)
    # image_weight 0: the mean over the text side (text and frame tokens), not diluted by the image targets
    other = (float(a.text_loss) * a.n_text + float(a.frame_loss) * a.n_frame) / (a.n_text + a.n_frame)
    assert float(b.loss) == pytest.approx(other, rel=1e-5) and float(b.loss) != pytest.approx(float(a.loss), rel=1e-3)


def test_janus_layout_from_positions_matches_ids():
    from orchestrator.moss import ImageLayout

    spec = spec_for("janus")
    ex = two_image_example(spec)
    h, w = spec.grid
    by_pos = ImageLayout.from_positions(len(ex["input_ids"]), [[(s.offset, h, w) for s in ex["image_layout"]]])
    assert [s.positions().tolist() for s in by_pos.segments[0]] == [s.positions().tolist() for s in ex["image_layout"]]


def test_local_checkpoint_uses_the_real_loading_path(spec, tmp_path):
    spec.export_tiny(str(tmp_path), seed=0)
    local = get_backbone(spec.name, checkpoint=str(tmp_path))
    model = local.build()
    ref = spec.build(seed=0)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), ref.state_dict().values()))
    assert local.tokenizer.get_vocab() == spec.tokenizer.get_vocab()
    if not spec.continuous_images:  # emu2 has no VQ and a fixed image transform (no processor class)
        assert all(torch.equal(a, b) for a, b in zip(local.vq.state_dict().values(), spec.vq.state_dict().values()))
        assert local.image_processor is not None
    ex = local.encode(["A picture:", draw("red", (40, 24))])
    assert len(ex["image_layout"]) == 1 and ex["image_layout"][0].complete
    peft_model = apply_moss(model, MossConfig(rank=4), local)
    assert torch.isfinite(adapter_loss(peft_model, local, local.collate([ex])).loss)


def test_local_checkpoint_loads_only_from_safetensors(tmp_path):
    spec = get_backbone("chameleon")
    spec.export_tiny(str(tmp_path), seed=0)
    state = spec.build(seed=0).state_dict()
    (tmp_path / "model.safetensors").unlink()
    torch.save(state, tmp_path / "pytorch_model.bin")  # a pickle: loading it could run code
    with pytest.raises(OSError, match="model.safetensors"):
        get_backbone("chameleon", checkpoint=str(tmp_path)).build()


@pytest.mark.parametrize("chunk", [1, 5, 64])
def test_chunked_loss_equals_the_whole_loss(spec, chunk):
    """train.loss_chunk_tokens: each chunk's logits recomputed in backward; same value and gradient."""
    from orchestrator.moss import MossConfig, apply_moss
    from tests.helpers import mixed_batch, randomize_adapter

    results = []
    for c in (None, chunk):
        model = apply_moss(spec.build(seed=0), MossConfig(variant="moss", rank=4), spec)
        randomize_adapter(model)
        out = adapter_loss(model, spec, mixed_batch(spec), chunk=c)
        out.loss.backward()
        grads = torch.cat([p.grad.flatten() for p in model.parameters() if p.requires_grad and p.grad is not None])
        results.append((out.loss.detach(), out.text_loss, out.image_loss, grads))
    (l0, t0, i0, g0), (l1, t1, i1, g1) = results
    assert torch.allclose(l0, l1, rtol=1e-5) and torch.allclose(t0, t1, rtol=1e-5) and torch.allclose(i0, i1, rtol=1e-5)
    assert (g0 - g1).abs().max() <= 1e-5 * g0.abs().max()  # float32 summation order, relative to the scale
