"""`moss plan`: every shipped experiment passes; trials that cannot run exit 2 with the trial and the fix;
`moss train` / `moss sweep` refuse them before Ray starts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from orchestrator.cli import main
from orchestrator.config import load_config
from orchestrator.moss import MossConfig, apply_moss, expected_trainable_parameters
from orchestrator.plan.report import plan_configs
from orchestrator.plan.sizing import model_shape, trainable_parameters
from orchestrator.sweeps.space import load_space
from orchestrator.sweeps.tuner import trial_configs
from tests.helpers import spec_for
from tests.unit.plan.hub import fake_hub

REPO = Path(__file__).parents[3]
SHIPPED = sorted([*REPO.glob("search_spaces/*.yaml"), *REPO.glob("jobs/configs/*.yaml")])


@pytest.fixture
def hub(monkeypatch):
    with fake_hub() as (endpoint, requests):
        monkeypatch.setenv("HF_ENDPOINT", endpoint)
        monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
        yield requests


@pytest.fixture(autouse=True)
def in_repo(monkeypatch):
    monkeypatch.chdir(REPO)  # plan.cluster: cluster.yaml of the working directory


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_every_shipped_space_and_config_passes(path, hub, capsys):
    assert main(["plan", str(path.relative_to(REPO)), "--cluster", "cluster.yaml"]) == 0, capsys.readouterr().out
    out = capsys.readouterr().out
    assert "plan: OK" in out and "PROBLEM" not in out
    assert "not verified" not in out  # each hub checkpoint's file list was checked


def test_paper_cells_land_where_the_rules_put_them(hub):
    plan = _plan_space("search_spaces/paper_ablation_7b.yaml")
    by = {(r.variant, r.rank, r.kernel, r.conv_space): r for r in plan.rows}
    assert by[("lora", 32, None, None)].placement.startswith("gpu_1x") and by[("lora", 32, None, None)].workers == 1
    for key in [("lora", 256, None, None), ("moss", 256, 3, "full"), ("moss", 32, 5, "full")]:
        row = by[key]
        assert row.placement.startswith("gpu_8x") and row.workers == 8 and row.strategy == "fsdp", key
    assert {r.global_batch for r in plan.rows} == {32}  # every trial: 32 sequences per optimizer step
    assert all(r.fits for r in plan.rows)


def _plan_space(path, overrides=()):
    return plan_configs(path, trial_configs(load_space(path, overrides)))


def write_space(tmp_path: Path, **over) -> Path:
    space = {"name": "tight", "base": str(REPO / "jobs/configs/leafinstruct_gpu.yaml"),
             "set": {"train.strategy": "ddp", "train.grad_accum": 8, "scaling.placement_strategy": "PACK"},
             "params": {"adapter.variant": {"grid": ["lora", "moss"]}, "adapter.rank": {"grid": [32, 256]}},
             "metric": "val/image_loss", "resources": {"workers": 1, "gpus_per_worker": 1, "node_type": "gpu_1x"}}
    space.update(over)
    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump(space, sort_keys=False))
    return path


def test_a_cell_that_cannot_fit_exits_2_with_the_trial_and_the_fix(tmp_path, hub, capsys):
    path = write_space(tmp_path)
    assert main(["plan", str(path)]) == 2
    out = capsys.readouterr().out
    problems = [line for line in out.splitlines() if line.startswith("PROBLEM")]
    assert len(problems) == 1, out  # lora 32 / 256 and moss 32 fit one L40S; moss full at rank 256 does not
    assert "trial 4 (variant=moss, rank=256)" in problems[0] and "out of memory" in problems[0]
    assert "gpu_1x (1x L40S 45 GiB)" in problems[0]
    assert "FSDP over gpu_8x" in problems[0] and "scaling.num_workers=8 train.strategy=fsdp train.grad_accum=1" in problems[0]
    assert "adapter.rank <= " in problems[0]  # a rank cap is a fix too
    # ... and the fix the planner names makes the plan pass
    rule = {"when": {"adapter.rank": 256, "adapter.variant": "moss"}, "workers": 8, "node_type": "gpu_8x",
            "set": {"train.strategy": "fsdp", "train.grad_accum": 1, "scaling.placement_strategy": "STRICT_PACK"}}
    fixed = write_space(tmp_path, resources={"workers": 1, "gpus_per_worker": 1, "node_type": "gpu_1x", "per_cell": [rule]})
    assert main(["plan", str(fixed)]) == 0, capsys.readouterr().out


def test_json_gives_the_same_rows(tmp_path, hub, capsys):
    assert main(["plan", str(write_space(tmp_path)), "--json"]) == 2
    data = json.loads(capsys.readouterr().out)
    assert not data["ok"] and len(data["trials"]) == 4
    worst = max(data["trials"], key=lambda t: t["estimate_gib"]["total"])
    assert (worst["variant"], worst["rank"], worst["fits"]) == ("moss", 256, False)
    assert worst["placement"].startswith("gpu_1x") and worst["device_gib"] == 45.0
    assert set(worst["estimate_gib"]) == {"weights", "adapter", "activations", "logits", "margin", "total"}


def emu3_config(tmp_path, **extra) -> Path:
    tree = yaml.safe_load((REPO / "jobs/configs/leafinstruct_gpu.yaml").read_text())
    tree["backbone"] = {"name": "emu3", "checkpoint": "BAAI/Emu3-Gen-hf", **extra}
    path = tmp_path / "emu3.yaml"
    path.write_text(yaml.safe_dump(tree))
    return path


def test_emu3_images_that_cannot_fit_exit_2_with_the_size_fix(tmp_path, hub, capsys):
    path = emu3_config(tmp_path)  # Emu3's processor defaults: 512^2 .. 1024^2 px per image
    assert main(["plan", str(path)]) == 2
    out = capsys.readouterr().out
    problem = next(line for line in out.splitlines() if "answer image" in line)
    assert "one answer image takes up to 16523 tokens" in problem and "data.max_seq_len=4096" in problem
    assert "dropped at `truncate`" in problem
    fix = problem.split("Fix: ")[1]
    assert "backbone.image_min_pixels=" in fix and "backbone.image_max_pixels=" in fix
    assert "data.max_seq_len=16901" not in fix  # beyond Emu3's 9216 positions: not offered
    # the named size fits (one image per sequence, which the plan warns about)
    size = int(fix.split("backbone.image_max_pixels=")[1].split()[0])
    ok = emu3_config(tmp_path, image_min_pixels=size, image_max_pixels=size)
    main(["plan", str(ok)])
    out = capsys.readouterr().out
    assert "PROBLEM" not in out and "one 3" in out and "editing) will not fit" in out


def test_emu3_native_size_fits_a_longer_sequence(tmp_path, hub, capsys):
    path = emu3_config(tmp_path, image_min_pixels=512 * 512, image_max_pixels=512 * 512)
    main(["plan", str(path), "--set", "data.max_seq_len=9216", "--set", "train.micro_batch=1"])
    out = capsys.readouterr().out
    assert "answer image" not in out and "position limit" not in out
    assert main(["plan", str(path), "--set", "data.max_seq_len=10000"]) == 2
    assert "position limit (9216)" in capsys.readouterr().out


def test_a_checkpoint_in_the_wrong_format_exits_2(tmp_path, capsys):
    ckpt = tmp_path / "anole"
    (ckpt / "models/7b").mkdir(parents=True)
    (ckpt / "models/7b/consolidated.pth").write_bytes(b"x")
    for cmd in ("plan", "validate", "train", "preprocess"):
        assert main([cmd, "jobs/configs/sample.yaml", "--set", f"backbone.checkpoint={ckpt}"]) == 2
        err = capsys.readouterr()
        text = err.out + err.err
        assert "Meta's consolidated.pth format" in text and "leloy/Anole-7b-v0.1-hf" in text, cmd


def test_train_and_sweep_refuse_before_ray_starts(tmp_path, hub, capsys, monkeypatch):
    from orchestrator import runtime

    started = []
    monkeypatch.setattr(runtime, "init_ray", lambda *a, **k: started.append(1))  # cmd_* import it when called
    tight = write_space(tmp_path)
    assert main(["sweep", str(tight)]) == 2
    assert "out of memory" in capsys.readouterr().err
    cfg = emu3_config(tmp_path)
    assert main(["train", str(cfg)]) == 2
    assert "answer image" in capsys.readouterr().err
    assert not started
    # an expert override: the plan only warns, and the next check (no shards here) is what stops it
    assert main(["train", str(cfg), "--set", "plan.enforce=false", "--set", f"data.output={tmp_path}/none"]) == 2
    err = capsys.readouterr().err
    assert "plan.enforce=false: going on" in err and "no shards" in err
    assert not started


def test_trials_with_different_batches_are_refused(tmp_path, hub, capsys):
    rule = {"when": {"adapter.rank": 256}, "workers": 8, "node_type": "gpu_8x",
            "set": {"train.strategy": "fsdp", "scaling.placement_strategy": "STRICT_PACK"}}  # grad_accum left at 8
    path = write_space(tmp_path, resources={"workers": 1, "gpus_per_worker": 1, "node_type": "gpu_1x", "per_cell": [rule]})
    assert main(["plan", str(path)]) == 2
    out = capsys.readouterr().out
    assert "differ in sequences per optimizer step" in out and "32: trial 1, trial 3" in out and "256: trial 2, trial 4" in out


def test_unknown_gpu_memory_warns(tmp_path, hub, capsys):
    assert main(["plan", "jobs/configs/leafinstruct_gpu.yaml", "--cluster", str(tmp_path / "none.yaml")]) == 0
    assert "GPU memory unknown" in capsys.readouterr().out
    assert main(["plan", "jobs/configs/leafinstruct_gpu.yaml", "--cluster", str(tmp_path / "none.yaml"),
                 "--set", "scaling.gpu_memory_gb=16"]) == 2
    assert "out of memory" in capsys.readouterr().out


def test_a_node_type_the_cluster_lacks(hub, capsys):
    assert main(["plan", "jobs/configs/leafinstruct_gpu.yaml", "--set", "scaling.node_type=gpu_4x"]) == 2
    assert "scaling.node_type='gpu_4x' is not a node type of cluster.yaml" in capsys.readouterr().out


def test_chameleon_7b_warns_and_trains_its_image_rows_by_option(hub, capsys):
    base = ["plan", "jobs/configs/leafinstruct_gpu.yaml", "--set", "backbone.name=chameleon",
            "--set", "backbone.checkpoint=facebook/chameleon-7b"]
    main(base)
    assert "does not generate images" in capsys.readouterr().out
    main([*base, "--set", "adapter.train_image_head=true", "--json"])
    data = json.loads(capsys.readouterr().out)
    assert not any("does not generate images" in w for w in data["warnings"])
    without = trainable_parameters(model_shape("chameleon", "facebook/chameleon-7b"),
                                   MossConfig(variant="moss", rank=256, kernel_size=3))
    assert data["trials"][0]["trainable"] == without + 8192 * 4096  # + the 8192 image-code rows of lm_head
    assert main(["plan", "jobs/configs/sample.yaml", "--set", "backbone.name=janus",
                 "--set", "adapter.train_image_head=true"]) == 2
    assert "has no image-code rows" in capsys.readouterr().out


@pytest.mark.parametrize("name, checkpoint", [("chameleon", "tiny"), ("emu3", "small"), ("anole", "leloy/Anole-7b-v0.1-hf"),
                                               ("emu2", "BAAI/Emu2"), ("janus", "deepseek-community/Janus-Pro-7B")])
def test_planner_parameter_counts_equal_peft(name, checkpoint):
    """The closed form over the meta build's linears equals what PEFT wraps, head rows included."""
    import torch

    from orchestrator.backbones import get_backbone
    from orchestrator.plan.sizing import model_config

    spec = get_backbone(name, checkpoint)
    shape = model_shape(name, checkpoint)
    config, _ = model_config(spec)
    for cfg in (MossConfig(variant="lora", rank=64), MossConfig(variant="moss", rank=32, kernel_size=5),
                MossConfig(variant="moss", rank=16, conv_space="lowrank")):
        with torch.device("meta"):
            model = apply_moss(spec.model_class(config), cfg, spec)
        assert trainable_parameters(shape, cfg) == expected_trainable_parameters(model, cfg, spec) == sum(
            p.numel() for p in model.parameters() if p.requires_grad)
    base = sum(p.numel() for n, p in model.named_parameters() if ".lora_" not in n)
    assert shape.params == base


def test_image_head_rows_count_as_trainable():
    spec = spec_for("chameleon")
    shape = model_shape("chameleon", "tiny")
    cfg = MossConfig(variant="lora", rank=4, train_image_head=True)
    model = apply_moss(spec.build(), cfg, spec)
    assert trainable_parameters(shape, cfg) == sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert shape.image_head_rows == 256 and trainable_parameters(shape, cfg) - trainable_parameters(
        shape, MossConfig(variant="lora", rank=4)) == 256 * 64


def test_load_config_knows_the_plan_section():
    cfg = load_config(REPO / "jobs/configs/sample.yaml", ["plan.prompt_tokens=64", "plan.enforce=false"])
    assert cfg.plan.prompt_tokens == 64 and not cfg.plan.enforce


def test_sampled_ranges_are_planned_at_their_bounds(tmp_path, hub, capsys):
    """A randint rank is planned at its low and high ends: the high end that cannot fit one L40S is found."""
    path = write_space(tmp_path, params={"adapter.variant": {"grid": ["moss"]}, "adapter.rank": {"randint": [8, 257]},
                                         "train.lr": {"loguniform": [1.0e-5, 1.0e-3]}},
                       search={"algorithm": "random", "seed": 0})
    plan = _plan_space(str(path))
    assert sorted({(r.rank, r.params["train.lr"]) for r in plan.rows}) == [(8, 1e-5), (8, 1e-3), (256, 1e-5), (256, 1e-3)]
    assert {r.rank: r.fits for r in plan.rows} == {8: True, 256: False}
    assert main(["plan", str(path)]) == 2
    problems = [line for line in capsys.readouterr().out.splitlines() if line.startswith("PROBLEM")]
    high = [r.trial.removeprefix("trial ") for r in plan.rows if r.rank == 256]
    assert len(problems) == 1 and problems[0].startswith(f"PROBLEM: trials {', '.join(high)}: out of memory")


def test_target_modules_narrow_the_count_and_the_estimate(hub):
    narrow = r"model\.layers\.\d+\.self_attn\.q_proj"
    shape = model_shape("chameleon", "tiny", (), narrow)
    cfg = MossConfig(variant="lora", rank=4, target_modules=narrow)
    spec = spec_for("chameleon")
    model = apply_moss(spec.build(), cfg, spec)
    assert trainable_parameters(shape, cfg) == sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert len(shape.targets) == 2 and model_shape("chameleon", "tiny").targets != shape.targets


def test_a_pinned_node_type_must_offer_its_resource(tmp_path, hub, capsys):
    text = (REPO / "cluster.yaml").read_text().replace("resources: {gpu_8x: 1}", "resources: {}")
    (tmp_path / "cluster.yaml").write_text(text)
    assert main(["plan", "jobs/configs/leafinstruct_gpu.yaml", "--cluster", str(tmp_path / "cluster.yaml")]) == 2
    assert "does not offer the custom resource 'gpu_8x'" in capsys.readouterr().out


def test_an_unknown_gpu_instance_type_is_refused(tmp_path, hub, capsys):
    text = (REPO / "cluster.yaml").read_text().replace("InstanceType: g6e.4xlarge", "InstanceType: g7.4xlarge")
    (tmp_path / "cluster.yaml").write_text(text)
    assert main(["plan", "jobs/configs/leafinstruct_gpu.yaml", "--cluster", str(tmp_path / "cluster.yaml")]) == 2
    out = capsys.readouterr().out
    assert "PROBLEM" in out and "g7.4xlarge" in out and "add it to INSTANCE_GPUS" in out
