"""Checkpoint preflight: does ``backbone.checkpoint`` hold something ``from_pretrained`` can load?

A local folder must hold a transformers checkpoint of the family (config.json naming it, safetensors;
for Emu2 the remote-code files its config names). A hub id is checked through the hub's model-info API
(its file list; ``HF_ENDPOINT`` points it elsewhere); offline or refused, it is "not verified" and the
run goes on. Published checkpoints known to be in another format fail even offline.
"""

from __future__ import annotations

import fnmatch
import functools
import json
import os
from dataclasses import dataclass

from ..backbones import get_backbone

PICKLED = ("*.pth", "*.pt", "*.bin", "*.ckpt")
#: seconds the model-info call may take (a machine without internet fails fast or times out)
HUB_TIMEOUT = 10.0


@dataclass(frozen=True)
class CheckpointCheck:
    status: str  # ok | not verified | error | preset
    message: str

    @property
    def ok(self) -> bool:
        return self.status != "error"


def check_checkpoint(backbone: str, checkpoint: str, revision: str | None = None,
                     trust_remote_code: bool = False) -> CheckpointCheck:
    spec = get_backbone(backbone, checkpoint, revision=revision, trust_remote_code=trust_remote_code)
    if spec.is_random:
        return CheckpointCheck("preset", f"random-init preset {checkpoint!r}")
    if os.path.isdir(os.path.expanduser(checkpoint)):
        return _check_folder(spec, os.path.expanduser(checkpoint))
    if checkpoint.startswith((".", "/", "~")):  # a path, not a hub id (org/name)
        if os.environ.get("RAY_ADDRESS"):  # a job on a cluster: the path may exist on the workers only
            return CheckpointCheck("not verified", f"{checkpoint}: not on this node; the workers must have it")
        return CheckpointCheck("error", f"{checkpoint}: no such folder")
    return _check_hub(spec, checkpoint)


def _check_folder(spec, path: str) -> CheckpointCheck:
    files = _list_files(path)
    if os.path.isfile(os.path.join(path, "model_index.json")) and spec.pipeline_subfolder:
        sub = os.path.join(path, spec.pipeline_subfolder)  # a diffusers pipeline folder (Emu2-Gen)
        if not os.path.isdir(sub):
            return CheckpointCheck("error", f"{path}: a {spec.name} pipeline folder without {spec.pipeline_subfolder}/")
        return _check_files(spec, sub, _list_files(sub), _read_config(sub))
    return _check_files(spec, path, files, _read_config(path))


def _list_files(root: str, limit: int = 10_000) -> list[str]:
    """Relative paths of the files under ``root`` (as a hub repo lists them), at most ``limit``."""
    out = []
    for here, dirs, names in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        out += [os.path.relpath(os.path.join(here, n), root) for n in sorted(names)]
        if len(out) >= limit:
            break
    return out[:limit]


def _read_config(path: str) -> dict | None:
    p = os.path.join(path, "config.json")
    if not os.path.isfile(p):
        return None
    try:
        return json.loads(open(p).read())
    except (OSError, ValueError):
        return {}


def _check_files(spec, where: str, files: list[str], config: dict | None) -> CheckpointCheck:
    """The verdict on a checkpoint's file list (local folder or hub repo) and its config.json (None: absent;
    {}: unreadable)."""
    safetensors = [f for f in files if f.endswith(".safetensors")]
    if config is None or not safetensors:
        what = describe_format(files, config is not None, bool(safetensors))
        return CheckpointCheck("error", f"{where} is not a transformers safetensors checkpoint ({what}): {fix_for(spec)}")
    if not config:
        return CheckpointCheck("error", f"{where}: config.json is not valid JSON")
    model_type = config.get("model_type")
    if spec.model_types and model_type not in spec.model_types:
        return CheckpointCheck("error", f"{where}: config.json names model_type {model_type!r}, not "
                                        f"{' / '.join(spec.model_types)}: a checkpoint of another family?")
    if spec.remote_code and model_type != spec.standin_model_type and "auto_map" in config:
        code = sorted({v.split(".")[0] + ".py" for v in config["auto_map"].values() if isinstance(v, str)})
        missing = [f for f in code if f not in files]
        if missing:
            return CheckpointCheck("error", f"{where}: {spec.name} loads through its own code (config.json auto_map), but "
                                            f"{', '.join(missing)} are missing")
        if not spec.trust_remote_code:
            return CheckpointCheck("error", f"{where}: {spec.name} loads through its own code ({', '.join(code)}), which runs "
                                            "on every node: review it, then set backbone.trust_remote_code=true"
                                            + ("" if os.path.isdir(where) else " and backbone.revision=<commit SHA>"))
    return CheckpointCheck("ok", f"{where}: config.json ({model_type or 'model'}) + {len(safetensors)} safetensors file(s)")


def describe_format(files: list[str], has_config: bool, has_safetensors: bool) -> str:
    if not files:
        return "an empty folder"
    if any(f.endswith("consolidated.pth") for f in files):
        return "Meta's consolidated.pth format"
    pickled = [f for f in files if any(fnmatch.fnmatch(f.rsplit("/", 1)[-1], p) for p in PICKLED)]
    if pickled and not has_safetensors:
        return f"pickled weights only ({', '.join(pickled[:3])}); pickles can run code, so only safetensors load"
    return "no " + " and no ".join(n for n, ok in (("config.json", has_config), ("*.safetensors", has_safetensors))
                                    if not ok)


def fix_for(spec) -> str:
    """What to give instead: the family's transformers-format checkpoints."""
    good = [k for k, v in spec.hub_checkpoints.items() if v.error is None]
    conversion = f" or {spec.conversion_hint}" if spec.conversion_hint else ""
    return f"give a transformers checkpoint ({', '.join(good)}){conversion}"


def _check_hub(spec, repo: str) -> CheckpointCheck:
    """The hub's file list for ``repo`` (HF_ENDPOINT honoured, read at call time); offline: not verified,
    unless the repo is known to be in another format."""
    known = spec.hub_checkpoints.get(repo)
    try:
        files = hub_files(repo, spec.revision)
    except Exception as e:  # offline, no token for a gated repo, timeout, missing repo
        reason = _short(e)
        if known is not None and known.error:
            return CheckpointCheck("error", known.error)
        if "RepositoryNotFound" in type(e).__name__ and _have_token():
            return CheckpointCheck("error", f"{repo}: no such model on the hub, or not visible to this token ({reason})")
        return CheckpointCheck("not verified", f"{repo}: not verified ({reason}); the nodes download it at run time")
    where = repo
    sub = spec.pipeline_subfolder
    if sub and "model_index.json" in files:  # a pipeline (Emu2-Gen): the language model is one folder of it
        files = [f.removeprefix(f"{sub}/") for f in files if f.startswith(f"{sub}/")]
        where = f"{repo}/{sub}"
    # the file list, not the files: config.json's content (model_type, auto_map) is checked for local folders
    config = {"model_type": spec.model_types[0] if spec.model_types else None} if "config.json" in files else None
    code = [f for f in files if f.startswith("modeling_") and f.endswith(".py")]
    if config is not None and spec.remote_code and code:  # repos that load through the code they ship
        config["auto_map"] = {f"AutoModel{i}": f"{f[:-3]}.Model" for i, f in enumerate(code)}
    return _check_files(spec, where, files, config)


def hub_files(repo: str, revision: str | None = None) -> list[str]:
    """The repo's file names from the hub's model-info API (no download; asked once per process and endpoint)."""
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        raise ConnectionError("HF_HUB_OFFLINE is set")
    return list(_model_files(repo, os.environ.get("HF_ENDPOINT") or None, revision))


@functools.lru_cache(maxsize=64)
def _model_files(repo: str, endpoint: str | None, revision: str | None = None) -> tuple[str, ...]:
    from huggingface_hub import HfApi

    info = HfApi(endpoint=endpoint).model_info(repo, revision=revision, timeout=HUB_TIMEOUT)
    return tuple(s.rfilename for s in info.siblings or [])


def _have_token() -> bool:
    """Without a token the hub answers "not found" for private and gated repos too."""
    from huggingface_hub import get_token

    return get_token() is not None


def _short(e: Exception) -> str:
    text = str(e).splitlines()[0] if str(e) else ""
    return f"{type(e).__name__}: {text[:160]}".rstrip(": ")
