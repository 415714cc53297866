"""The worker's model setup: activation checkpointing keeps gradients exact; bf16 keeps the adapter in fp32."""

import pytest
import torch

from orchestrator.config import load_config
from orchestrator.training.loop import setup_model
from orchestrator.training.objective import loss_module
from tests.helpers import mixed_batch, randomize_adapter, spec_for


def grads(checkpointing: bool, variant: str, name: str = "chameleon") -> dict:
    cfg = load_config(None, [f"train.activation_checkpointing={checkpointing}", f"adapter.variant={variant}"])
    spec = spec_for(name)
    model, restored = setup_model(cfg, spec, None, bf16=False)
    assert restored is None
    decoder = model.get_base_model().model.decoder.lm.model if name == "emu2" else model.get_base_model().model
    assert decoder.gradient_checkpointing == checkpointing
    randomize_adapter(model)
    model.train()
    loss_module(model, spec)(mixed_batch(spec)).loss.backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("variant, name", [("lora", "chameleon"), ("moss", "chameleon"), ("moss", "emu2")])
def test_activation_checkpointing_gives_the_same_gradients(variant, name):
    """emu2: Emu2's own class refuses checkpointing (as BAAI's does); the spec enables it on the inner LLaMA."""
    plain, ckpt = grads(False, variant, name), grads(True, variant, name)
    assert plain.keys() == ckpt.keys()
    for k in plain:
        torch.testing.assert_close(ckpt[k], plain[k], rtol=1e-4, atol=1e-6, msg=k)


def test_bf16_base_with_fp32_adapter_trains_under_autocast():
    cfg = load_config(None, ["train.precision=bf16"])
    spec = spec_for("chameleon")
    model, _ = setup_model(cfg, spec, None, bf16=True)
    trainable = {p.dtype for p in model.parameters() if p.requires_grad}
    frozen = {p.dtype for n, p in model.named_parameters() if not p.requires_grad and "layers" in n}
    assert trainable == {torch.float32} and frozen == {torch.bfloat16}
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = loss_module(model, spec)(mixed_batch(spec))
    out.loss.backward()
    assert torch.isfinite(out.loss) and all(p.grad is not None for p in model.parameters() if p.requires_grad)
