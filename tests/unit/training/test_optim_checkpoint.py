import math

import pytest
import torch

from orchestrator.config import load_config
from orchestrator.training import parallel
from orchestrator.training.checkpoint import TrainState, load_train_state, save_train_state
from orchestrator.training.optim import build_optimizer, lr_factor
from tests.helpers import mixed_batch, spec_for
from orchestrator.moss import MossConfig, apply_moss, load_adapter, save_adapter
from orchestrator.training.objective import loss_module


def test_lr_warmup_then_cosine_to_min_ratio():
    assert lr_factor(0, 4, 20, 0.1) == pytest.approx(0.25)
    assert lr_factor(3, 4, 20, 0.1) == pytest.approx(1.0)
    assert lr_factor(4, 4, 20, 0.1) == pytest.approx(1.0)
    assert lr_factor(12, 4, 20, 0.1) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert lr_factor(20, 4, 20, 0.1) == pytest.approx(0.1)
    assert lr_factor(50, 4, 20, 0.1) == pytest.approx(0.1)
    assert lr_factor(0, 0, 10, 0.0) == pytest.approx(1.0)


def _setup(seed: int = 0, adapter_dir=None):
    torch.manual_seed(seed)
    spec = spec_for("chameleon")
    if adapter_dir is None:
        model = apply_moss(spec.build(seed=0), MossConfig(rank=4), spec)
    else:
        model = load_adapter(spec.build(seed=0), adapter_dir, spec, is_trainable=True)
    module = parallel.wrap(loss_module(model, spec), "ddp", spec.decoder_layers(model.get_base_model()), torch.device("cpu"))
    train = load_config(None, ["train.weight_decay=0.01", "train.warmup_steps=2"]).train
    opt, sched = build_optimizer(module, train, total_steps=10)
    return spec, model, module, opt, sched


def _step(spec, module, opt, sched):
    module(mixed_batch(spec)).loss.backward()
    opt.step()
    sched.step()
    opt.zero_grad()


def test_checkpoint_restores_optimizer_and_scheduler_exactly(tmp_path):
    """Two steps, checkpoint, one more step == restore into a fresh setup, one more step."""
    spec, model, module, opt, sched = _setup()
    for _ in range(2):
        _step(spec, module, opt, sched)
    save_adapter(model, tmp_path / "adapter", state_dict=parallel.adapter_state(module))
    save_train_state(tmp_path, parallel.optimizer_state(module, opt), sched.state_dict(), TrainState(step=2, epoch=1, batch_in_epoch=3))
    _step(spec, module, opt, sched)
    expected = parallel.adapter_state(module)

    # another seed: the adapter, optimizer and scheduler must all come from the files
    spec, model2, module2, opt2, sched2 = _setup(seed=1, adapter_dir=tmp_path / "adapter")
    osd, sched_state, state = load_train_state(tmp_path)
    parallel.load_optimizer_state(module2, opt2, osd)
    sched2.load_state_dict({**sched_state, "lr_lambdas": [None] * len(opt2.param_groups)})
    assert (state.step, state.epoch, state.batch_in_epoch) == (2, 1, 3)
    assert sched2.last_epoch == 2 and sched2.get_last_lr()[0] == pytest.approx(lr_factor(2, 2, 10, 0.1) * 2e-4)
    _step(spec, module2, opt2, sched2)
    got = parallel.adapter_state(module2)
    assert got.keys() == expected.keys()
    for k in expected:
        torch.testing.assert_close(got[k], expected[k], rtol=0, atol=1e-6, msg=k)


def test_checkpoint_files_are_safetensors_and_json(tmp_path):
    spec, model, module, opt, sched = _setup()
    _step(spec, module, opt, sched)
    save_train_state(tmp_path, parallel.optimizer_state(module, opt), sched.state_dict(), TrainState(step=1))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["optimizer.safetensors", "trainer_state.json"]
