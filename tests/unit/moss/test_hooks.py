"""How layouts reach the layers: explicit vs derived, stale layouts, KV-cache steps, autocast, DDP."""

from __future__ import annotations

import pytest
import torch

from orchestrator.moss import MossConfig, apply_moss, set_layout
from orchestrator.training.objective import adapter_hidden_states, adapter_loss, loss_module
from tests.helpers import ADAPTERS, draw, mixed_batch, randomize_adapter, run_gloo_ranks, spec_for, text_batch


def test_forward_with_input_ids_derives_the_same_layout_as_the_batch(spec):
    """A plain PeftModel forward (the hook path) routes exactly like spec.hidden_states (explicit path)."""
    batch = mixed_batch(spec)
    model = apply_moss(spec.build(seed=0), MossConfig(rank=4), spec)
    randomize_adapter(model)
    with torch.no_grad():
        explicit = adapter_hidden_states(model, spec, batch)
        if spec.name == "janus":  # codes live outside the text vocabulary: embeddings built by the spec
            set_layout(model, batch["image_layout"])
            lm = model.get_base_model().model.language_model
            derived = lm(inputs_embeds=spec.embed(model, batch["input_ids"]), attention_mask=batch["attention_mask"])
        elif spec.continuous_images:  # Emu2 always feeds inputs_embeds: no ids to derive a layout from
            emb = spec.embed(model, batch["input_ids"], batch["image_layout"], spec.batch_visual(model, batch))
            with pytest.raises(RuntimeError, match="set_layout"):
                spec.lm(model).model(inputs_embeds=emb, attention_mask=batch["attention_mask"])
            return
        else:
            derived = model.get_base_model().model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    assert torch.equal(derived.last_hidden_state, explicit)


def test_a_stale_explicit_layout_is_refused():
    spec = spec_for("chameleon")
    model = apply_moss(spec.build(seed=0), MossConfig(rank=4), spec)
    set_layout(model, text_batch(spec)["image_layout"])  # set, but that forward never happened
    with pytest.raises(RuntimeError, match="very next forward"):
        model(input_ids=mixed_batch(spec)["input_ids"])


def test_image_inputs_off_needs_an_explicit_layout():
    spec = spec_for("chameleon")
    batch = mixed_batch(spec)
    model = apply_moss(spec.build(seed=0), MossConfig(rank=4, image_inputs=False), spec)
    with pytest.raises(RuntimeError, match="image_inputs=False"):
        model(input_ids=batch["input_ids"])
    assert torch.isfinite(adapter_loss(model, spec, batch).loss)  # the batch's layout knows its prompt images


def test_processor_placeholders_count_as_image_cells():
    """transformers' processors put '<image>' placeholders where the codes go; route them as images."""
    spec = spec_for("chameleon")
    ex = spec.encode(["look:", draw("red")])
    ids = ex["input_ids"].clone()
    seg = ex["image_layout"][0]
    ids[seg.positions()] = spec.token_id("<image>")
    assert spec.image_layout(ids[None]).segments[0] == (seg,)


@pytest.mark.parametrize("name", ["chameleon", "emu3"])
def test_kv_cache_steps_refuse_image_tokens_but_decode_text(name):
    spec = spec_for(name)
    model = apply_moss(spec.build(seed=0), MossConfig(rank=4), spec)
    ids = spec.encode(["Say hi:"])["input_ids"][None]
    # text only: the untrained base may well prefer an image token, which the next assertion is about
    text = model.generate(input_ids=ids, max_new_tokens=3, do_sample=False, use_cache=True,
                          min_new_tokens=3, suppress_tokens=spec.text_banned_ids())
    assert text.shape[1] == ids.shape[1] + 3
    out = model(input_ids=ids, use_cache=True)
    step = spec.image_token_ids[:1][None]
    with pytest.raises(RuntimeError, match="conv cache"):
        model(input_ids=step, cache=out.cache, use_cache=True)


@pytest.mark.parametrize("label", list(ADAPTERS))
def test_bf16_autocast_forward_backward(label):
    spec = spec_for("chameleon")
    model = apply_moss(spec.build(seed=0), ADAPTERS[label], spec)
    randomize_adapter(model)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = adapter_loss(model, spec, mixed_batch(spec))
    out.loss.backward()
    assert torch.isfinite(out.loss)
    assert all(p.grad is not None for n, p in model.named_parameters() if p.requires_grad and "lora_A" in n)


def _ddp_rank(rank: int) -> list[float]:
    spec = spec_for("chameleon")
    model = apply_moss(spec.build(seed=0), MossConfig(rank=4), spec)
    randomize_adapter(model)
    ddp = torch.nn.parallel.DistributedDataParallel(loss_module(model, spec), find_unused_parameters=True)
    with pytest.raises(TypeError, match="loss_module"):
        adapter_loss(ddp, spec, mixed_batch(spec))
    batch = mixed_batch(spec) if rank == 0 else text_batch(spec)  # different data per rank
    ddp(batch).loss.backward()
    return torch.cat([p.grad.flatten() for p in model.parameters() if p.requires_grad and p.grad is not None]).tolist()


@pytest.mark.slow  # 2 gloo rank processes (~15 s): in `make test`, not `make test-fast`
def test_ddp_all_reduces_gradients_through_the_loss_module():
    got = run_gloo_ranks(_ddp_rank)
    assert got[0] == got[1] and any(g != 0 for g in got[0])
