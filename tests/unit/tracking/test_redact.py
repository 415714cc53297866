from orchestrator.tracking.mlflow import flatten, tracking_uri
from orchestrator.tracking.redact import MASK, is_secret_name, redact, redact_text, secret_env_values


def test_secret_names():
    for name in ("HF_TOKEN", "MLFLOW_TRACKING_PASSWORD", "AWS_SECRET_ACCESS_KEY", "OPENAI_API_KEY", "api-key",
                 "DB_PWD", "GOOGLE_APPLICATION_CREDENTIALS", "auth", "X-Amz-Signature", "key", "AccountKey"):
        assert is_secret_name(name), name
    for name in ("PWD", "OLDPWD", "RAY_AUTH_MODE", "tokenize_actors", "author", "n_tokens_max", "PATH"):
        assert not is_secret_name(name), name


def test_env_secret_values_are_masked_inside_any_string():
    env = {"HF_TOKEN": "hf_abcdef123456", "PWD": "/home/me", "RAY_AUTH_MODE": "disabled", "SHORT_TOKEN": "1"}
    secrets = secret_env_values(env)
    assert secrets == ["hf_abcdef123456"]
    assert redact_text("pass hf_abcdef123456 to /home/me (disabled)", secrets) == f"pass {MASK} to /home/me (disabled)"


def test_urls_lose_passwords_and_secret_query_parameters():
    text = "http://alice:s3cr3t@mlflow.internal:5000/x?token=abc&page=2 s3://b/k?X-Amz-Signature=ff&X-Amz-Date=1"
    assert redact_text(text, []) == (f"http://alice:{MASK}@mlflow.internal:5000/x?token={MASK}&page=2 "
                                     f"s3://b/k?X-Amz-Signature={MASK}&X-Amz-Date=1")
    assert redact_text("sqlite:////tmp/x/mlflow.db", []) == "sqlite:////tmp/x/mlflow.db"
    assert redact_text("https://ghp_abc123@github.com/o/r.git", []) == f"https://{MASK}@github.com/o/r.git"
    assert redact_text("https://maps.example/api?key=AIzaXYZ#access_token=t0k", []) == (
        f"https://maps.example/api?key={MASK}#access_token={MASK}")
    assert redact_text("DefaultEndpointsProtocol=https;AccountName=acct;AccountKey=c2VjcmV0;EndpointSuffix=x", []) == (
        f"DefaultEndpointsProtocol=https;AccountName=acct;AccountKey={MASK};EndpointSuffix=x")


def test_tree_values_under_secret_keys_are_masked_and_others_kept():
    tree = {"tracking": {"tags": {"hf_token": "abc", "note": "ok"}}, "data": {"tokenize_actors": 2, "source": ["a"]}}
    assert redact(tree, []) == {"tracking": {"tags": {"hf_token": MASK, "note": "ok"}},
                                "data": {"tokenize_actors": 2, "source": ["a"]}}


def test_flatten_dotted_keys():
    assert flatten({"a": {"b": 1, "c": {"d": None}}, "e": [1, 2], "f": {}, "g": "x"}) == {
        "a.b": "1", "a.c.d": "null", "e": "[1, 2]", "f": "{}", "g": "x"}


def test_tracking_uri_precedence(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert tracking_uri(None) == f"sqlite:///{tmp_path.resolve()}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    assert tracking_uri(None) == "http://127.0.0.1:5000"
    assert tracking_uri("sqlite:///rel.db") == f"sqlite:///{tmp_path.resolve()}/rel.db"  # absolute for Ray workers


def test_environment_record_masks_secrets_and_keeps_the_rest():
    from orchestrator.tracking.mlflow import environment

    env = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": "ab" * 32, "MLFLOW_TRACKING_USERNAME": "moss",
           "MLFLOW_TRACKING_PASSWORD": "pw-0123456789", "MLFLOW_TRACKING_URI": "http://moss:pw-0123456789@10.0.0.5:5000",
           "AWS_SECRET_ACCESS_KEY": "aws/secret+key", "MOSS_MLFLOW_ADDRESS": "10.0.0.5:5000", "HOME": "/root",
           "CUDA_VISIBLE_DEVICES": "0,1"}
    rec = environment(env)
    assert rec == {"AWS_SECRET_ACCESS_KEY": MASK, "CUDA_VISIBLE_DEVICES": "0,1", "MLFLOW_TRACKING_PASSWORD": MASK,
                   "MLFLOW_TRACKING_URI": f"http://moss:{MASK}@10.0.0.5:5000", "MLFLOW_TRACKING_USERNAME": "moss",
                   "MOSS_MLFLOW_ADDRESS": "10.0.0.5:5000", "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": MASK}


def test_tracking_uri_without_a_host_is_a_config_error(monkeypatch):
    import pytest

    from orchestrator.config import ConfigError

    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://")  # runtime_env.yaml on a node without MOSS_MLFLOW_ADDRESS
    with pytest.raises(ConfigError, match="MOSS_MLFLOW_ADDRESS"):
        tracking_uri(None)


def test_everything_under_a_secret_key_is_masked_whatever_its_shape():
    tree = {"creds": {"api_key": 12345678, "aws_credentials": {"user": "u", "pass": "p4ssw0rd"},
                      "tokens_list": ["a"], "hf_token": ["hf_x", "hf_y"], "enabled_secret": True, "no_key": None}}
    out = redact(tree, [])["creds"]
    assert out["api_key"] == out["aws_credentials"] == out["hf_token"] == MASK
    assert out["tokens_list"] == ["a"] and out["enabled_secret"] is True and out["no_key"] is None


def test_yaml_and_json_documents_are_redacted_as_trees():
    from orchestrator.tracking.redact import redact_document

    space = "name: s\nbase:\n  tracking:\n    tags:\n      mlflow_password:\n        nested: p4ssw0rd-xyz\n"
    out = redact_document(space, "space.yaml", [])
    assert "p4ssw0rd-xyz" not in out and MASK in out
    assert "p4ssw0rd-xyz" not in redact_document('{"secret": {"v": "p4ssw0rd-xyz"}}', "a.json", [])
    # text that is not YAML / JSON by name keeps its shape; known secret values still go
    assert redact_document("RuntimeError: boom hf_abcdef123456", "error.txt", ["hf_abcdef123456"]) == (
        f"RuntimeError: boom {MASK}")


def test_the_mlflow_client_redacts_every_write(tmp_path, monkeypatch):
    from mlflow.entities import Param, RunTag

    from orchestrator.tracking.mlflow import client

    canary = "sk-canary-77c1e0d9b3"
    monkeypatch.setenv("MOSS_JUDGE_API_KEY", canary)
    mlc = client(f"sqlite:///{tmp_path / 'm.db'}")
    exp = mlc.create_experiment("e", artifact_location=(tmp_path / "art").as_uri())
    run = mlc.create_run(exp, tags={"note": f"key {canary}", "hf_token": "abc"}).info.run_id
    mlc.log_batch(run, params=[Param("judge.api_key", "plain"), Param("url", f"http://u:{canary}@h/")],
                  tags=[RunTag("t", canary)])
    mlc.set_tag(run, "x", f"see {canary}")
    mlc.log_text(run, f"a:\n  secret_token:\n    - {canary}\n", "c.yaml")
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "r.json").write_text(f'{{"v": "{canary}"}}')
    (tmp_path / "d" / "w.bin").write_bytes(b"\x00weights")
    mlc.log_artifacts(run, str(tmp_path / "d"), "out")
    got = mlc.get_run(run).data
    texts = [*got.params.values(), *got.tags.values()]
    dest = tmp_path / "dl"
    mlc.download_artifacts(run, "", str(dest))
    texts += [p.read_text(errors="replace") for p in dest.rglob("*") if p.suffix in (".yaml", ".json")]
    assert not [t for t in texts if canary in t]
    assert got.params["judge.api_key"] == MASK and got.tags["hf_token"] == MASK
    assert (dest / "out" / "w.bin").read_bytes() == b"\x00weights"
