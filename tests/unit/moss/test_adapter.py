"""MoSS adapters on every tiny backbone x variant x conv_space: identity, causality, gradients, I/O."""

from __future__ import annotations

import json

import pytest
import torch
from peft import PeftModel

from orchestrator.moss import (
    AdapterLoadError,
    MossConfig,
    apply_moss,
    expected_trainable_parameters,
    load_adapter,
    save_adapter,
    trainable_parameters,
)
from orchestrator.training.objective import adapter_hidden_states, adapter_loss
from tests.helpers import image_embeds, mixed_batch, randomize_adapter, spec_for, text_batch, two_image_example


def hidden(spec, model, batch):
    with torch.no_grad():
        return adapter_hidden_states(model, spec, batch)


def test_fresh_adapter_leaves_outputs_unchanged(spec, adapter):
    batch = mixed_batch(spec)
    base_h = hidden(spec, spec.build(seed=0), batch)
    base_loss = adapter_loss(spec.build(seed=0), spec, batch).loss
    model = apply_moss(spec.build(seed=0), adapter, spec)
    assert torch.equal(hidden(spec, model, batch), base_h)
    assert torch.equal(adapter_loss(model, spec, batch).loss, base_loss)


def _other_token(spec, token: int, is_image: bool) -> int:
    if not is_image:
        return 16 + (token - 16 + 7) % 256  # another byte of the tiny tokenizer
    if spec.name == "janus":
        return spec.text_vocab + (token - spec.text_vocab + 5) % 256
    ids = spec.image_token_ids
    return int(ids[(int((ids == token).nonzero()) + 5) % len(ids)])


def _probe_positions(example) -> list[int]:
    """A text position, and image cells: first, mid-row, row end, next row start, last present."""
    segs = example["image_layout"]
    picks = [segs[0].offset - 3]
    for seg in segs:
        pos = seg.positions()
        w = seg.width
        picks += [int(pos[0]), int(pos[w // 2 + w]), int(pos[w - 1]), int(pos[w]), int(pos[-1])]
    return picks


def _perturbed(spec, batch, t: int, cells: dict) -> dict:
    """The batch with position t changed: another token, or (Emu2 image cells) another visual embedding."""
    if t in cells and spec.continuous_images:
        embeds = batch["image_embeds"].clone()
        embeds[cells[t]] += 1.0
        return {**batch, "image_embeds": embeds}
    ids = batch["input_ids"].clone()
    ids[0, t] = _other_token(spec, int(ids[0, t]), t in cells)
    return {**batch, "input_ids": ids}


def _check_causal(spec, model, example):
    batch = spec.collate([example])
    with torch.no_grad():
        batch["image_embeds"] = image_embeds(spec, model, example)
    h0 = hidden(spec, model, batch)
    cells = {int(p): (k, c) for k, seg in enumerate(example["image_layout"]) for c, p in enumerate(seg.positions())}
    for t in _probe_positions(example):
        h1 = hidden(spec, model, _perturbed(spec, batch, t, cells))
        assert torch.allclose(h1[:, :t], h0[:, :t], atol=1e-6, rtol=0), f"position {t} changed an earlier output"
        assert (h1[:, t:] - h0[:, t:]).abs().max() > 1e-4, f"perturbing position {t} changed nothing"


def test_no_output_depends_on_a_later_token(spec, adapter):
    model = apply_moss(spec.build(seed=0), adapter, spec)
    randomize_adapter(model)
    _check_causal(spec, model, two_image_example(spec))


def test_causal_with_truncated_last_image(spec, adapter):
    full = two_image_example(spec)
    last = full["image_layout"][-1]
    cut = last.offset + last.row_stride * (last.height // 2) + 2  # mid-row of the second image
    ids, labels = full["input_ids"][:cut], full["labels"][:cut]
    layout = spec.image_layout(ids[None], labels[None]).segments[0]
    assert not layout[-1].complete and layout[-1].n_cells == last.width * (last.height // 2) + 2
    model = apply_moss(spec.build(seed=0), adapter, spec)
    randomize_adapter(model)
    images = {"images": full["images"]} if spec.continuous_images else {}
    _check_causal(spec, model, {"input_ids": ids, "labels": labels, "image_layout": layout, **images})


def _grads(model, key: str) -> list[torch.Tensor]:
    return [p.grad for n, p in model.named_parameters() if key in n and p.requires_grad]


def _image_branch_grad_norm(model) -> float:
    return sum(float(g.abs().sum()) for g in _grads(model, "lora_img_") if g is not None)


def test_image_branch_untouched_by_text_only_batch(spec, adapter):
    model = apply_moss(spec.build(seed=0), adapter, spec)
    if adapter.variant == "lora":
        assert not _grads(model, "lora_img_")
        return
    randomize_adapter(model)
    adapter_loss(model, spec, text_batch(spec)).loss.backward()
    assert _image_branch_grad_norm(model) == 0.0
    assert sum(float(g.abs().sum()) for g in _grads(model, "lora_A")) > 0


def test_image_branch_untouched_by_loss_before_first_image(spec, adapter):
    if adapter.variant == "lora":
        pytest.skip("plain LoRA has no image branch")
    batch = mixed_batch(spec)
    first = min(seg.offset for segs in batch["image_layout"].segments for seg in segs)
    model = apply_moss(spec.build(seed=0), adapter, spec)
    randomize_adapter(model)
    adapter_hidden_states(model, spec, batch)[:, :first].pow(2).sum().backward()
    assert _image_branch_grad_norm(model) == 0.0
    model.zero_grad()
    adapter_hidden_states(model, spec, batch)[:, first:].pow(2).sum().backward()  # the same check can fail
    assert _image_branch_grad_norm(model) > 0


def test_save_load_round_trip_is_exact(spec, adapter, tmp_path):
    batch = mixed_batch(spec)
    model = apply_moss(spec.build(seed=0), adapter, spec)
    randomize_adapter(model, seed=3)
    expected = hidden(spec, model, batch)
    save_adapter(model, tmp_path)
    assert (tmp_path / "adapter_model.safetensors").is_file() and (tmp_path / "moss_config.json").is_file()
    restored = load_adapter(spec.build(seed=0), tmp_path, spec)
    assert torch.equal(hidden(spec, restored, batch), expected)
    assert trainable_parameters(restored) == 0
    trainable = load_adapter(spec.build(seed=0), tmp_path, spec, is_trainable=True)
    assert trainable_parameters(trainable) == trainable_parameters(model)


def test_trainable_count_matches_formula(spec, adapter):
    model = apply_moss(spec.build(seed=0), adapter, spec)
    assert trainable_parameters(model) == expected_trainable_parameters(model, adapter, spec) > 0


@pytest.mark.parametrize(
    "saved, read_as",
    [
        ("moss", dict(variant="lora")),  # PEFT alone would silently drop every lora_img_* tensor
        ("moss", dict(conv_space="lowrank")),
        ("lora", dict(variant="moss")),
        ("moe_lora", dict(variant="moss")),
    ],
)
def test_load_refuses_mismatched_adapter(saved, read_as, tmp_path):
    from tests.helpers import spec_for

    spec = spec_for("chameleon")
    cfg = MossConfig(variant=saved, rank=4)
    save_adapter(apply_moss(spec.build(seed=0), cfg, spec), tmp_path)
    meta = json.loads((tmp_path / "moss_config.json").read_text())
    meta["moss"].update(read_as)  # the directory now claims another adapter than its tensors hold
    (tmp_path / "moss_config.json").write_text(json.dumps(meta))
    with pytest.raises(AdapterLoadError, match="does not match|do not fit"):
        load_adapter(spec.build(seed=0), tmp_path, spec)


@pytest.mark.parametrize("field, value, match", [("backbone", "emu3", "not 'chameleon'"), ("format_version", 99, "format")])
def test_load_refuses_other_backbone_or_format(field, value, match, tmp_path):
    from tests.helpers import spec_for

    spec = spec_for("chameleon")
    save_adapter(apply_moss(spec.build(seed=0), MossConfig(rank=4), spec), tmp_path)
    meta = json.loads((tmp_path / "moss_config.json").read_text())
    meta[field] = value
    (tmp_path / "moss_config.json").write_text(json.dumps(meta))
    with pytest.raises(AdapterLoadError, match=match):
        load_adapter(spec.build(seed=0), tmp_path, spec)


def test_plain_peft_loader_drops_the_image_branch_silently(tmp_path):
    """Why load_adapter exists: PEFT without the registered MoSS class loads a MoSS adapter as LoRA."""
    from tests.helpers import spec_for

    spec = spec_for("chameleon")
    batch = mixed_batch(spec)
    model = apply_moss(spec.build(seed=0), MossConfig(rank=4), spec)
    randomize_adapter(model)
    save_adapter(model, tmp_path)
    plain = PeftModel.from_pretrained(spec.build(seed=0), tmp_path)
    assert not any("lora_img" in n for n, _ in plain.named_parameters())
    assert not torch.allclose(hidden(spec, plain, batch), hidden(spec, model, batch), atol=1e-3)


def test_merge_only_for_plain_lora(spec):
    batch = mixed_batch(spec)
    lora = apply_moss(spec.build(seed=0), MossConfig(variant="lora", rank=4), spec)
    randomize_adapter(lora)
    before = hidden(spec, lora, batch)
    merged = lora.merge_and_unload()
    assert not isinstance(merged, PeftModel)
    assert torch.allclose(hidden(spec, merged, batch), before, atol=1e-4)
    for variant in ("moe_lora", "moss"):
        model = apply_moss(spec.build(seed=0), MossConfig(variant=variant, rank=4), spec)
        with pytest.raises(RuntimeError, match="cannot be merged"):
            model.merge_and_unload()


def test_activation_checkpointing_keeps_the_layout(tmp_path):
    from tests.helpers import spec_for

    spec = spec_for("chameleon")
    batch = mixed_batch(spec)
    grads = []
    for checkpointing in (False, True):
        model = apply_moss(spec.build(seed=0), MossConfig(variant="moss", rank=4), spec)
        randomize_adapter(model)
        model.train()
        if checkpointing:
            model.get_base_model().activation_checkpointing_enable({"use_reentrant": False})
        adapter_loss(model, spec, batch).loss.backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad})
    for name, g in grads[0].items():
        assert torch.allclose(grads[1][name], g, atol=1e-6), name


def test_moss_with_1x1_kernel_equals_moe_lora(spec):
    """k = 1 reduces the conv branch to a per-token linear map: moss == moe_lora with the same weights."""
    batch = mixed_batch(spec)
    moe = apply_moss(spec.build(seed=0), MossConfig(variant="moe_lora", rank=4), spec)
    randomize_adapter(moe)
    moss = apply_moss(spec.build(seed=0), MossConfig(variant="moss", rank=4, kernel_size=1), spec)
    src = dict(moe.named_parameters())
    with torch.no_grad():
        for name, p in moss.named_parameters():
            if "lora_img_conv" in name:
                p.copy_(src[name.replace("lora_img_conv", "lora_img_A")].view_as(p))
            elif ".lora_" in name:
                p.copy_(src[name])
    assert torch.allclose(hidden(spec, moss, batch), hidden(spec, moe, batch), atol=1e-5)


def test_pickled_adapter_weights_are_never_loaded(tmp_path):
    """Only adapter_model.safetensors is read; a pickle (which can run code on load) is refused, not tried."""
    from tests.helpers import spec_for

    spec = spec_for("chameleon")
    model = apply_moss(spec.build(seed=0), MossConfig(rank=4), spec)
    save_adapter(model, tmp_path)
    weights = tmp_path / "adapter_model.safetensors"
    torch.save({"boom": torch.zeros(1)}, tmp_path / "adapter_model.bin")
    weights.unlink()
    with pytest.raises(AdapterLoadError, match="only from safetensors"):
        load_adapter(spec.build(seed=0), tmp_path, spec)


@pytest.mark.parametrize("name", ["chameleon", "emu3"])
def test_train_image_head_trains_exactly_the_image_rows(name, tmp_path):
    """adapter.train_image_head: PEFT trainable tokens on lm_head's image-code rows; text rows stay frozen,
    the rows learn, and they save and load with the adapter."""
    from orchestrator.moss import load_adapter, save_adapter
    from tests.helpers import mixed_batch

    spec = spec_for(name)
    cfg = MossConfig(variant="moss", rank=4, alpha=8, train_image_head=True)
    model = apply_moss(spec.build(seed=0), cfg, spec)
    head = model.get_base_model().lm_head
    before = head.weight.detach().clone()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    batch = mixed_batch(spec)
    for _ in range(3):
        adapter_loss(model, spec, batch).loss.backward()
        opt.step()
        opt.zero_grad()
    after = head.weight.detach()
    rows = spec.image_token_ids
    text = torch.ones(after.shape[0], dtype=torch.bool)
    text[rows] = False
    assert not torch.equal(after[rows], before[rows])  # the image-code rows moved
    assert torch.equal(after[text], before[text])  # no other row did
    model.eval()
    with torch.no_grad():
        ref = adapter_loss(model, spec, batch).loss
    save_adapter(model, tmp_path)
    restored = load_adapter(spec.build(seed=0), tmp_path, spec)
    with torch.no_grad():
        assert torch.equal(adapter_loss(restored, spec, batch).loss, ref)


def test_train_image_head_refused_where_the_head_has_no_image_rows():
    spec = spec_for("janus")
    with pytest.raises(ValueError, match="head of its own"):
        apply_moss(spec.build(), MossConfig(train_image_head=True), spec)


def test_conv_activation_changes_only_what_follows_an_image():
    """Conv-LoRA's GELU on the low-rank conv: same weights, other outputs from the first image cell on."""
    spec = spec_for("chameleon")
    batch = mixed_batch(spec)
    first = min(seg.offset for segs in batch["image_layout"].segments for seg in segs)
    linear = apply_moss(spec.build(seed=0), MossConfig(rank=4, conv_space="lowrank"), spec)
    randomize_adapter(linear, seed=3)
    gelu = apply_moss(spec.build(seed=0), MossConfig(rank=4, conv_space="lowrank", conv_activation="gelu"), spec)
    gelu.load_state_dict(linear.state_dict())
    a, b = hidden(spec, linear, batch), hidden(spec, gelu, batch)
    assert torch.equal(a[:, :first], b[:, :first])
    assert not torch.allclose(a[:, first:], b[:, first:], atol=1e-4)
    with pytest.raises(ValueError, match="needs a conv variant with conv_space=lowrank"):
        MossConfig(conv_activation="gelu")
    with pytest.raises(ValueError, match="needs a conv variant"):
        MossConfig(variant="moe_lora", conv_space="lowrank", conv_activation="gelu")
    with pytest.raises(ValueError, match="is not one of"):
        MossConfig(conv_space="lowrank", conv_activation="relu")
