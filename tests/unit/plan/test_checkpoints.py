"""Checkpoint preflight: local folders of every kind, and hub ids through a model-info server on 127.0.0.1."""

from __future__ import annotations

import json

import pytest

from orchestrator.plan.checkpoints import check_checkpoint
from tests.helpers import spec_for
from tests.unit.plan.hub import fake_hub


@pytest.fixture(scope="module")
def tiny_export(tmp_path_factory):
    return spec_for("chameleon").export_tiny(str(tmp_path_factory.mktemp("cham")))


def folder(tmp_path, files: dict[str, str]) -> str:
    for name, text in files.items():
        p = tmp_path / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
    return str(tmp_path)


def test_an_exported_checkpoint_passes(tiny_export):
    check = check_checkpoint("chameleon", tiny_export)
    assert check.status == "ok" and "safetensors" in check.message


def test_meta_consolidated_format_names_the_conversion(tmp_path):
    path = folder(tmp_path, {"models/7b/consolidated.pth": "x", "tokenizer/text_tokenizer.json": "{}"})
    check = check_checkpoint("anole", path)
    assert check.status == "error"
    assert "not a transformers safetensors checkpoint" in check.message
    assert "leloy/Anole-7b-v0.1-hf" in check.message and "convert_chameleon_weights_to_hf" in check.message


def test_top_level_consolidated_pth_is_named(tmp_path):
    check = check_checkpoint("chameleon", folder(tmp_path, {"consolidated.pth": "x", "params.json": "{}"}))
    assert check.status == "error" and "consolidated.pth" in check.message


def test_pickled_weights_only_are_refused(tmp_path):
    path = folder(tmp_path, {"config.json": json.dumps({"model_type": "chameleon"}), "pytorch_model.bin": "x"})
    check = check_checkpoint("chameleon", path)
    assert check.status == "error" and "pickled weights only" in check.message and "pytorch_model.bin" in check.message


def test_safetensors_without_config(tmp_path):
    check = check_checkpoint("emu3", folder(tmp_path, {"model.safetensors": "x"}))
    assert check.status == "error" and "no config.json" in check.message


def test_a_checkpoint_of_another_family(tmp_path, tiny_export):
    check = check_checkpoint("emu3", tiny_export)
    assert check.status == "error" and "'chameleon'" in check.message and "emu3" in check.message


def test_emu2_needs_the_code_its_config_names(tmp_path):
    cfg = {"model_type": "Emu", "auto_map": {"AutoConfig": "configuration_emu.EmuConfig",
                                             "AutoModelForCausalLM": "modeling_emu.EmuForCausalLM"}}
    path = folder(tmp_path, {"config.json": json.dumps(cfg), "model.safetensors": "x", "configuration_emu.py": ""})
    check = check_checkpoint("emu2", path)
    assert check.status == "error" and "modeling_emu.py" in check.message
    (tmp_path / "modeling_emu.py").write_text("")
    check = check_checkpoint("emu2", path)  # complete, but its code runs only when the user opts in
    assert check.status == "error" and "backbone.trust_remote_code=true" in check.message
    assert check_checkpoint("emu2", path, trust_remote_code=True).status == "ok"


def test_a_missing_local_path(tmp_path, monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    check = check_checkpoint("chameleon", str(tmp_path / "nope"))
    assert check.status == "error" and "no such folder" in check.message
    monkeypatch.setenv("RAY_ADDRESS", "http://127.0.0.1:8265")  # a job on a cluster: maybe on the workers only
    assert check_checkpoint("chameleon", str(tmp_path / "nope")).status == "not verified"


def test_presets_need_no_check():
    assert check_checkpoint("janus", "tiny").status == "preset"


def test_hub_file_lists(monkeypatch, tmp_path):
    with fake_hub() as (endpoint, requests):
        monkeypatch.setenv("HF_ENDPOINT", endpoint)
        monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
        assert check_checkpoint("anole", "leloy/Anole-7b-v0.1-hf").status == "ok"
        assert check_checkpoint("emu3", "BAAI/Emu3-Gen-hf").status == "ok"
        refused = check_checkpoint("emu2", "BAAI/Emu2")  # its code would run: opt in, pinned
        assert refused.status == "error" and "trust_remote_code=true and backbone.revision=" in refused.message
        sha = "0123456789abcdef0123456789abcdef01234567"
        assert check_checkpoint("emu2", "BAAI/Emu2", revision=sha, trust_remote_code=True).status == "ok"
        bad = check_checkpoint("anole", "GAIR/Anole-7b-v0.1")
        assert bad.status == "error" and "Meta's consolidated.pth format" in bad.message
        assert "leloy/Anole-7b-v0.1-hf" in bad.message
        pickled = check_checkpoint("chameleon", "someone/pickled-chameleon")
        assert pickled.status == "error" and "pickled weights only" in pickled.message
        monkeypatch.delenv("HF_TOKEN", raising=False)
        monkeypatch.setenv("HF_HOME", str(tmp_path))  # no stored token either
        private = check_checkpoint("chameleon", "nobody/no-such-model")  # without a token: private or missing
        assert private.status == "not verified"
        monkeypatch.setenv("HF_TOKEN", "hf_" + "x" * 30)
        missing = check_checkpoint("chameleon", "nobody/no-such-model")
        assert missing.status == "error" and "no such model" in missing.message
    assert "/api/models/leloy/Anole-7b-v0.1-hf" in requests  # the checks went through the model-info API
    assert f"/api/models/BAAI/Emu2/revision/{sha}" in requests  # at the pinned revision


def test_offline_is_not_verified_unless_known_bad(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    check = check_checkpoint("anole", "leloy/Anole-7b-v0.1-hf")
    assert check.status == "not verified" and check.ok
    known = check_checkpoint("anole", "GAIR/Anole-7b-v0.1")  # published fact: refused even offline
    assert known.status == "error" and "consolidated.pth" in known.message


def test_an_unreachable_hub_is_not_verified(monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens on the discard port
    check = check_checkpoint("emu3", "BAAI/Emu3-Gen-hf")
    assert check.status == "not verified" and "not verified" in check.message
