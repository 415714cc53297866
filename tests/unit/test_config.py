"""RunConfig: defaults, YAML + --set overrides, errors that name the key, `moss validate` exit codes."""

import subprocess
import sys

import pytest

from orchestrator.cli import main
from pathlib import Path

from orchestrator.config import ConfigError, RunConfig, load_config

REPO = Path(__file__).resolve().parents[2]


def test_defaults_are_valid_and_hash_is_stable():
    a, b = load_config(), RunConfig()
    assert a == b and a.config_hash() == b.config_hash()
    assert a.adapter.to_moss_config().variant == "moss"


def test_overrides_parse_as_yaml_and_change_the_hash(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("backbone: {name: emu3}\ndata: {max_seq_len: 512}\n")
    cfg = load_config(path, ["data.filters.max_images=4", "adapter.rank=16", "data.source=[a.jsonl, b.jsonl]"])
    assert (cfg.backbone.name, cfg.data.max_seq_len, cfg.data.filters.max_images, cfg.adapter.rank) == ("emu3", 512, 4, 16)
    assert cfg.data.sources() == ["a.jsonl", "b.jsonl"]
    assert cfg.config_hash() != load_config(path).config_hash()
    assert cfg.config_hash("backbone") == load_config(path).config_hash("backbone")


@pytest.mark.parametrize(
    "override, words",
    [
        ("data.max_seq_len=4", "data.max_seq_len"),
        ("data.filtres.max_images=3", "data.filtres"),  # a typo is an error, not a silent default
        ("adapter.rank=0", "rank"),
        ("adapter.variant=dora", "adapter.variant"),
        ("backbone.name=llava", "backbone.name"),
        ("data.filters.min_images=20", "min_images"),
        ("data.val_fraction=1.5", "data.val_fraction"),
        ("novalue", "key.path=value"),
    ],
)
def test_bad_configs_name_the_key(override, words):
    with pytest.raises(ConfigError, match=words.replace(".", r"\.")):
        load_config(None, [override])


def test_bad_yaml_files(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")
    (tmp_path / "list.yaml").write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(tmp_path / "list.yaml")


def test_validate_exit_codes(tmp_path, capsys):
    (tmp_path / "d.jsonl").write_text("{}\n")
    assert main(["validate", "--set", f"data.source={tmp_path}/d.jsonl"]) == 0
    assert "valid; config hash" in capsys.readouterr().out
    assert main(["validate", "--set", "adapter.rank=-1"]) == 2
    assert "adapter.rank" in capsys.readouterr().err
    assert main(["validate", "--set", f"data.source={tmp_path}/nothing-here/*.jsonl"]) == 2
    assert "no .jsonl" in capsys.readouterr().err


def test_preprocess_with_bad_config_exits_2_before_ray():
    proc = subprocess.run([sys.executable, "-m", "orchestrator.cli", "preprocess", "--set", "data.max_seq_len=oops"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert "data.max_seq_len" in proc.stderr and "ray" not in proc.stderr.lower()


@pytest.mark.parametrize("override, key", [
    ("train.lr=-1", "train.lr"), ("train.max_steps=null", "train"), ("train.run_name=../escape", "train.run_name"),
    ("scaling.num_workers=0", "scaling.num_workers"), ("train.strategy=zero3", "train.strategy"),
    ("train.text_weight=0", "train"), ("tracking.experiment=", "tracking.experiment"), ("storage.bucket=x", "storage.bucket"),
])
def test_train_sections_reject_bad_values(override, key):
    extra = ["train.image_weight=0"] if override == "train.text_weight=0" else []
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config(None, [override, *extra])


def test_train_sections_defaults_and_resources():
    cfg = load_config(None, ["scaling.use_gpu=true", "scaling.resources_per_worker={TRAIN_DRIVER: 0.01}"])
    assert cfg.scaling.ray_resources() == {"CPU": 1.0, "GPU": 1.0, "TRAIN_DRIVER": 0.01}
    assert cfg.train.max_steps == 200 and cfg.train.max_epochs is None and cfg.train.run_name is None
    assert load_config(None, ["train.max_steps=null", "train.max_epochs=2"]).train.max_epochs == 2


def test_train_with_bad_config_or_missing_shards_exits_2_before_ray(tmp_path):
    for args, needle in ((["--set", "train.micro_batch=0"], "train.micro_batch"),
                         (["--set", f"data.output={tmp_path}"], "moss preprocess")):
        proc = subprocess.run([sys.executable, "-m", "orchestrator.cli", "train", *args], cwd=tmp_path,
                              capture_output=True, text=True, timeout=120)
        assert proc.returncode == 2, proc.stderr
        assert needle in proc.stderr and "ray" not in (proc.stderr + proc.stdout).lower()


def test_hashes_keep_their_values_across_added_keys():
    """Keys added later stay out of the hashes at their defaults: a run, its shards and a sweep started before
    them keep their identity (values recorded before the plan / image-area / head-rows keys existed)."""
    from orchestrator.sweeps.space import load_space

    cfg = load_config(REPO / "jobs/configs/sample.yaml")
    assert cfg.config_hash("backbone", "adapter") == "cf1de3d97cd29bb0"  # run identity
    assert cfg.config_hash("backbone", "data") == "faa8355b2cb50e93"  # shard identity
    assert cfg.config_hash() == "f43b00f2028f467d"
    assert load_space(REPO / "search_spaces/smoke.yaml").digest == "04584cbbe064a106"
    changed = load_config(REPO / "jobs/configs/sample.yaml", ["adapter.train_image_head=true"])
    assert changed.config_hash("backbone", "adapter") != "cf1de3d97cd29bb0"  # a set key still counts


def test_remote_code_is_opt_in_and_pinned_for_hub_ids(tmp_path):
    with pytest.raises(ConfigError, match="backbone.revision=<40-hex commit SHA>"):
        load_config(None, ["backbone.name=emu2", "backbone.checkpoint=BAAI/Emu2", "backbone.trust_remote_code=true"])
    with pytest.raises(ConfigError, match="got main"):  # a branch moves: only a commit pins the code
        load_config(None, ["backbone.name=emu2", "backbone.checkpoint=BAAI/Emu2", "backbone.trust_remote_code=true",
                           "backbone.revision=main"])
    sha = "0123456789abcdef0123456789abcdef01234567"
    cfg = load_config(None, ["backbone.name=emu2", "backbone.checkpoint=BAAI/Emu2", "backbone.trust_remote_code=true",
                             f"backbone.revision={sha}"])
    assert cfg.backbone.options() == {"revision": sha, "trust_remote_code": True}
    from orchestrator.backbones import backbone_from_config

    spec = backbone_from_config(cfg)
    assert spec.hub == {"revision": sha} and spec.trust_remote_code
    # a local folder is code on your disk: no revision to pin
    assert load_config(None, ["backbone.name=emu2", f"backbone.checkpoint={tmp_path}",
                              "backbone.trust_remote_code=true"]).backbone.trust_remote_code
