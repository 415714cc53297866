"""Search spaces: parsing, grid expansion with `when`, Tune objects, and bad spaces -> exit code 2."""

from pathlib import Path

import pytest
import yaml

from orchestrator.cli import main
from orchestrator.config import ConfigError
from orchestrator.sweeps.space import Space, derive_concurrency, is_space_file, load_space

REPO = Path(__file__).resolve().parents[3]


def write(tmp_path: Path, **fields) -> Path:
    space = {"name": "t", "params": {"adapter.rank": {"grid": [4, 8]}}, **fields}
    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump(space))
    return path


@pytest.mark.parametrize("name,trials", [("smoke", 12), ("paper_ablation", 32), ("paper_ablation_7b", 32),
                                         ("paper_ablation_emu3", 32), ("backbones", 8), ("paper_table2_7b", 18), ("paper_table2", 18),
                                         ("demo", 6)])
def test_shipped_spaces_parse(name, trials):
    space = load_space(REPO / "search_spaces" / f"{name}.yaml")
    assert space.num_trials() == trials
    assert is_space_file(REPO / "search_spaces" / f"{name}.yaml")
    assert not is_space_file(REPO / "jobs" / "configs" / "sample.yaml")


def test_when_drops_duplicate_trials():
    space = load_space(REPO / "search_spaces" / "smoke.yaml")
    points = space.grid_points()
    assert sum(p["adapter.variant"] == "lora" for p in points) == 3  # kernel does not multiply lora
    assert all(("adapter.kernel_size" in p) == (p["adapter.variant"] == "moss") for p in points)
    tree, applied = space.trial_tree({"adapter.variant": "lora", "adapter.rank": 4, "adapter.kernel_size": 1})
    assert applied == {"adapter.variant": "lora", "adapter.rank": 4}
    assert tree["adapter"]["kernel_size"] == 3  # the base's value, untouched


def test_when_sees_config_defaults(tmp_path):
    space = load_space(write(tmp_path, params={"adapter.rank": {"grid": [4, 8]},
                                               "train.grad_accum": {"grid": [2], "when": {"train.strategy": "ddp"}}}))
    assert all(p["train.grad_accum"] == 2 for p in space.grid_points())  # strategy is ddp by default


def test_section_valued_param_merges(tmp_path):
    base = tmp_path / "base.yaml"
    base.write_text(yaml.safe_dump({"backbone": {"name": "chameleon", "seed": 7}}))
    space = load_space(write(tmp_path, base="base.yaml", params={
        "backbone": {"grid": [{"name": "emu3", "checkpoint": "tiny"}, {"name": "janus"}]}}))
    tree, _ = space.trial_tree(space.grid_points()[0])
    assert tree["backbone"] == {"name": "emu3", "checkpoint": "tiny", "seed": 7}


def test_param_space_and_search(tmp_path):
    from ray import tune

    space = load_space(write(tmp_path, params={"adapter.rank": {"grid": [4, 8, 16]},
                                               "train.lr": {"loguniform": [1e-4, 1e-2]},
                                               "adapter.kernel_size": {"randint": [1, 6]}}))
    ps = space.param_space()
    assert sorted(p["adapter.rank"] for p in ps["grid"]["grid_search"]) == [4, 8, 16]
    assert isinstance(ps["sample"]["train.lr"], tune.search.sample.Float)
    alg, limit = space.search_alg(2)
    assert limit is None and alg.__class__.__name__ == "BasicVariantGenerator"
    rand = load_space(write(tmp_path, params={"adapter.rank": {"grid": [4, 8]}}, search={"algorithm": "random"},
                            num_samples=3))
    assert "grid" not in rand.param_space() and rand.num_trials() == 3
    optuna = load_space(write(tmp_path, search={"algorithm": "optuna", "seed": 1}))
    alg, limit = optuna.search_alg(2)
    assert limit == 2 and alg.__class__.__name__ == "OptunaSearch"


def test_state_round_trip_and_digest(tmp_path):
    space = load_space(write(tmp_path))
    again = Space.from_state(space.to_state())
    assert again.digest == space.digest and again.grid_points() == space.grid_points()
    assert load_space(write(tmp_path), ["train.lr=1e-3"]).digest != space.digest


def test_concurrency_from_cluster(tmp_path):
    space = load_space(write(tmp_path, resources={"workers": 2, "gpus_per_worker": 1}))
    base = space.base_config()
    assert base.scaling.use_gpu and derive_concurrency(space, base, {"GPU": 8, "CPU": 64}) == 4
    cpu = load_space(write(tmp_path, resources={"workers": 1, "cpus_per_worker": 0.5}))
    assert derive_concurrency(cpu, cpu.base_config(), {"CPU": 2}) == 2


BAD = {
    "unknown key": ({"params": {"adapter.rnak": {"grid": [4]}}}, "rnak"),
    "unknown section": ({"params": {"optimizer.lr": {"grid": [1]}}}, "optimizer"),
    "bad value": ({"params": {"adapter.variant": {"grid": ["lora", "dora"]}}}, "variant"),
    "empty grid": ({"params": {"adapter.rank": {"grid": []}}}, "empty grid"),
    "two distributions": ({"params": {"adapter.rank": {"grid": [4], "choice": [8]}}}, "exactly one"),
    "unknown distribution": ({"params": {"adapter.rank": {"normal": [4, 8]}}}, "normal"),
    "loguniform at 0": ({"params": {"train.lr": {"loguniform": [0, 1e-2]}}}, "must be > 0"),
    "low above high": ({"params": {"train.lr": {"uniform": [1e-2, 1e-4]}}}, "below high"),
    "bound out of range": ({"params": {"train.lr": {"uniform": [-1e-2, 1e-2]}}}, "train.lr"),
    "no params": ({"params": {}}, "params is empty"),
    "unknown metric": ({"metric": "val/accuracy"}, "val/accuracy"),
    "unknown field": ({"schedular": {"type": "asha"}}, "schedular"),
    "bad scheduler": ({"scheduler": {"type": "pbt"}}, "scheduler.type"),
    "grace beyond max_t": ({"scheduler": {"type": "asha", "grace_period": 500}}, "grace_period"),
    "chained when": ({"params": {"adapter.rank": {"grid": [4], "when": {"adapter.variant": "moss"}},
                                 "adapter.alpha": {"grid": [8.0], "when": {"adapter.rank": 4}}}}, "own"),
    "ckpt not a multiple of eval": ({"set": {"train.eval_every": 3, "train.ckpt_every": 10}}, "multiple"),
    "missing base": ({"base": "nowhere.yaml"}, "not found"),
    "float range on an int key": ({"params": {"adapter.rank": {"uniform": [4, 16]}}}, "adapter.rank"),
    "per-cell rule on an unknown key": ({"resources": {"per_cell": [{"when": {"adapter.rnak": 4}, "workers": 2}]}},
                                        "adapter.rnak"),
    "per-cell rule without when": ({"resources": {"per_cell": [{"workers": 2}]}}, "when"),
    "per-cell rule setting a bad value": ({"resources": {"per_cell": [{"when": {"adapter.rank": 8},
                                                                        "set": {"train.strategy": "zero3"}}]}},
                                          "train.strategy"),
    "grid when on a sampled key": ({"params": {"adapter.variant": {"choice": ["lora", "moss"]},
                                               "adapter.kernel_size": {"grid": [1, 3], "when": {"adapter.variant": "moss"}}}},
                                   "sampled"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_spaces_are_config_errors_and_exit_2(tmp_path, capsys, case):
    fields, message = BAD[case]
    path = write(tmp_path, **fields)
    with pytest.raises(ConfigError, match=message):
        load_space(path)
    assert main(["validate", str(path)]) == 2
    assert main(["sweep", str(path)]) == 2
    assert message in capsys.readouterr().err


def test_sweep_plan_checks_shards_names_and_resume(tmp_path, capsys, monkeypatch):
    from orchestrator.config import load_config
    from orchestrator.data.pipeline import preprocess
    from orchestrator.data.sample import write_sample
    from orchestrator.sweeps.tuner import MARKER, plan_sweep

    base = {"data": {"source": str(tmp_path / "sample"), "output": str(tmp_path / "shards")},
            "storage": {"path": str(tmp_path / "runs")}, "train": {"max_steps": 4, "eval_every": 2, "ckpt_every": 2},
            "tracking": {"tracking_uri": f"sqlite:///{tmp_path / 'mlflow.db'}"}}
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(base))
    path = write(tmp_path, base="base.yaml")
    assert main(["sweep", str(path)]) == 2 and "run `moss preprocess`" in capsys.readouterr().err
    assert main(["sweep", str(path), "--resume"]) == 2 and "no sweep of space 't'" in capsys.readouterr().err

    write_sample(tmp_path / "sample", per_domain=2)
    preprocess(load_config(tmp_path / "base.yaml"), engine="local")
    plan = plan_sweep(str(path))
    assert plan.name.startswith("t-") and plan.steps == {"chameleon": 4} and plan.parent_run_id is None
    (tmp_path / "runs" / "fixed").mkdir(parents=True)
    (tmp_path / "runs" / "fixed" / MARKER).write_text(
        '{"space": "t", "digest": "other", "parent_run_id": "p1", "created": "2026-01-01"}')
    with pytest.raises(ConfigError, match="already exists"):
        plan_sweep(str(path), name="fixed")
    with pytest.raises(ConfigError, match="another space"):
        plan_sweep(str(path), resume=True)  # the latest sweep of space t
    (tmp_path / "runs" / "fixed" / MARKER).write_text(
        f'{{"space": "t", "digest": "{plan.space.digest}", "parent_run_id": "p1", "created": "2026-01-01"}}')
    assert plan_sweep(str(path), name="fixed", resume=True).parent_run_id == "p1"
    # --resume-or-start (a RayJob's retries run one command): resumes what exists, starts what does not
    assert plan_sweep(str(path), name="fixed", or_start=True).parent_run_id == "p1"
    fresh = plan_sweep(str(path), name="new-one", or_start=True)
    assert fresh.name == "new-one" and fresh.parent_run_id is None
    with pytest.raises(ConfigError, match="needs --name"):
        plan_sweep(str(path), or_start=True)
    # one writer per sweep: a --resume while another --resume of it is live exits 2, before Ray
    import subprocess
    import sys

    from orchestrator import runtime
    from tests.unit.test_lease import HOLD

    started = []  # the suite may share one Ray cluster, so watch for the call rather than Ray's state
    monkeypatch.setattr(runtime, "init_ray", lambda *a, **k: started.append(a))

    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path / "runs" / "fixed")], stdout=subprocess.PIPE,
                              text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        assert main(["sweep", str(path), "--name", "fixed", "--resume"]) == 2
    finally:
        holder.kill()
        holder.wait()
    assert "is live elsewhere" in capsys.readouterr().err and not started
    (tmp_path / "runs" / "fixed" / MARKER).write_text('{"space": "t", "dig')  # torn
    assert main(["sweep", str(path), "--name", "fixed", "--resume"]) == 2
    assert "moss_sweep.json is damaged" in capsys.readouterr().err


def test_asha_never_ranks_emu2_regression_against_code_cross_entropy(tmp_path):
    mixed = {"backbone.name": {"grid": ["chameleon", "emu2"]}}
    asha = {"type": "asha", "grace_period": 2, "max_t": 8}
    with pytest.raises(ConfigError, match=r"chameleon \(cross-entropy\), emu2 \(mse\)"):
        load_space(write(tmp_path, params=mixed, metric="val/image_loss", scheduler=asha))
    with pytest.raises(ConfigError, match=r"emu2 \(cosine\), emu2 \(mse\)"):
        load_space(write(tmp_path, set={"backbone.name": "emu2"}, metric="val/loss", scheduler=asha,
                         params={"backbone.image_regression": {"grid": ["mse", "cosine"]}}))
    assert load_space(write(tmp_path, params=mixed, metric="val/image_loss", scheduler={"type": "fifo"})).num_trials() == 2
    emu2_only = load_space(write(tmp_path, set={"backbone.name": "emu2"}, metric="val/image_loss", scheduler=asha))
    assert emu2_only.num_trials() == 2
    with pytest.raises(ConfigError, match="no perplexity"):
        load_space(write(tmp_path, set={"backbone.name": "emu2"}, metric="val/image_ppl"))
    paper = load_space(REPO / "search_spaces" / "paper_ablation.yaml").base_config()  # Emu2: 37B, FSDP over 8 GPUs
    assert (paper.backbone.name, paper.data.max_seq_len, paper.train.strategy) == ("emu2", 2048, "fsdp")


def test_per_cell_resources_first_match_wins(tmp_path):
    rules = [{"when": {"adapter.rank": 8, "adapter.variant": "moss"}, "workers": 4, "node_type": "gpu_8x",
              "set": {"train.strategy": "fsdp"}},
             {"when": {"adapter.rank": [8, 16]}, "workers": 2, "set": {"train.grad_accum": 3}}]
    path = write(tmp_path, params={"adapter.rank": {"grid": [4, 8, 16]}, "adapter.variant": {"grid": ["lora", "moss"]}},
                 resources={"workers": 1, "per_cell": rules})
    space = load_space(path)
    got = {}
    for point in space.grid_points():
        tree, _ = space.trial_tree(point)
        cfg = space.base_config().model_validate(tree)
        got[(point["adapter.rank"], point["adapter.variant"])] = (
            cfg.scaling.num_workers, cfg.scaling.node_type, cfg.train.strategy, cfg.train.grad_accum)
    assert got[(4, "lora")] == got[(4, "moss")] == (1, None, "ddp", 1)  # no rule: the space's resources
    assert got[(8, "moss")] == (4, "gpu_8x", "fsdp", 1)  # the first rule, alone
    assert got[(8, "lora")] == got[(16, "moss")] == (2, None, "ddp", 3)
    assert space.digest != load_space(write(tmp_path, params={"adapter.rank": {"grid": [4, 8, 16]},
                                                              "adapter.variant": {"grid": ["lora", "moss"]}})).digest


def test_num_seeds_repeats_every_configuration_over_train_seed(tmp_path):
    space = load_space(write(tmp_path, num_seeds=3))
    assert space.num_trials() == 6
    assert sorted((p["adapter.rank"], p["train.seed"]) for p in space.grid_points()) == [
        (r, s) for r in (4, 8) for s in range(3)]
    again = Space.from_state(space.to_state())  # what each trial rebuilds
    assert again.num_trials() == 6 and again.digest == space.digest
    with pytest.raises(ConfigError, match="num_seeds"):
        load_space(write(tmp_path, num_seeds=2, set={"train.seed": 1}))
    with pytest.raises(ConfigError, match="every param must be a grid"):
        load_space(write(tmp_path, num_seeds=2, params={"adapter.rank": {"grid": [4]}, "train.lr": {"loguniform": [1e-4, 1e-2]}}))
    with pytest.raises(ConfigError, match="search.algorithm grid"):
        load_space(write(tmp_path, num_seeds=2, search={"algorithm": "random"}))
