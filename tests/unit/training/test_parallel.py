"""DDP and FSDP2 (2 ranks, gloo on CPU) take the same optimizer step: parity of the gathered adapter."""

from functools import partial

import pytest
import torch

from orchestrator.config import load_config
from orchestrator.moss import MossConfig, apply_moss
from orchestrator.training import parallel
from orchestrator.training.optim import build_optimizer
from orchestrator.training.objective import loss_module
from tests.helpers import mixed_batch, randomize_adapter, run_gloo_ranks, spec_for, text_batch

pytestmark = pytest.mark.slow  # 2 gloo rank processes per test (~15 s each): in `make test`, not `make test-fast`


def _one_step(name: str, strategy: str, rank: int) -> tuple[dict, float]:
    spec = spec_for(name)
    model = apply_moss(spec.build(seed=0), MossConfig(rank=4), spec)
    randomize_adapter(model)
    module = parallel.wrap(loss_module(model, spec), strategy, spec.decoder_layers(model.get_base_model()),
                           torch.device("cpu"))
    opt, _ = build_optimizer(module, load_config(None, ["train.lr=1e-2"]).train, total_steps=10)
    # two micro-batches per step, different data on each rank, the first without gradient sync; rank 1
    # sees no image in the whole step, so its image branch has no gradient to reduce
    batches = [mixed_batch(spec), text_batch(spec)] if rank == 0 else [text_batch(spec), text_batch(spec)]
    for i, batch in enumerate(batches):
        with parallel.no_sync(module, i == 0):
            (module(batch).loss / 2).backward()
    norm = torch.nn.utils.clip_grad_norm_([p for p in module.parameters() if p.requires_grad], 1.0)
    opt.step()
    return {k: v.tolist() for k, v in parallel.adapter_state(module).items()}, float(norm.full_tensor() if hasattr(norm, "full_tensor") else norm)


def _both_strategies(name: str, rank: int) -> dict:
    return {s: _one_step(name, s, rank) for s in ("ddp", "fsdp")}


@pytest.mark.parametrize("name", ["chameleon", "emu2"])  # emu2: rank 1 has no image, so never runs the vision tower
def test_ddp_and_fsdp_take_the_same_step(name):
    got = run_gloo_ranks(partial(_both_strategies, name))
    (ddp, ddp_norm), (fsdp, fsdp_norm) = got[0]["ddp"], got[0]["fsdp"]
    assert got[1]["ddp"][0] == got[1]["fsdp"][0] == {}  # gathered to rank 0 only
    assert got[1]["ddp"][1] == ddp_norm  # the replicas' gradients were all-reduced
    assert abs(ddp_norm - fsdp_norm) < 1e-4 * ddp_norm
    assert ddp.keys() == fsdp.keys() and len(ddp) == 56
    for k in ddp:
        torch.testing.assert_close(torch.tensor(fsdp[k]), torch.tensor(ddp[k]), rtol=1e-4, atol=1e-5, msg=k)
