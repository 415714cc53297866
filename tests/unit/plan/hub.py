"""A stand-in for the Hugging Face hub's model-info API on 127.0.0.1 (these machines cannot reach the hub).

It answers GET /api/models/<org>/<name> with the repo's file list, as huggingface_hub's HfApi.model_info
reads it, and 404 with the hub's error header for repos it does not hold.
"""

from __future__ import annotations

import json
import threading
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

#: file lists as the hub showed them for the checkpoints the shipped configs use (shared/notes/real_runs.md)
REPOS = {
    "leloy/Anole-7b-v0.1-hf": ["config.json", "generation_config.json", "model-00001-of-00003.safetensors",
                               "model-00002-of-00003.safetensors", "model-00003-of-00003.safetensors",
                               "model.safetensors.index.json", "preprocessor_config.json", "processor_config.json",
                               "special_tokens_map.json", "tokenizer.json", "tokenizer_config.json"],
    "GAIR/Anole-7b-v0.1": ["README.md", "models/7b/consolidated.pth", "models/7b/params.json",
                           "tokenizer/text_tokenizer.json", "tokenizer/vqgan.ckpt", "tokenizer/vqgan.yaml"],
    "BAAI/Emu3-Gen-hf": ["config.json", "model-00001-of-00004.safetensors", "model-00004-of-00004.safetensors",
                         "model.safetensors.index.json", "preprocessor_config.json", "tokenizer.json"],
    "BAAI/Emu2": ["config.json", "configuration_emu.py", "modeling_emu.py", "model-00001-of-00015.safetensors",
                  "model.safetensors.index.json", "tokenizer.model"],
    "someone/pickled-chameleon": ["config.json", "pytorch_model.bin", "tokenizer.json"],
}


class _Handler(BaseHTTPRequestHandler):
    repos: dict[str, list[str]] = {}
    requests: list[str] = []

    def do_GET(self):  # noqa: N802
        self.requests.append(self.path)
        repo = self.path.split("?")[0].removeprefix("/api/models/").split("/revision/")[0]
        files = self.repos.get(repo)
        if files is None:
            body = json.dumps({"error": "Repository not found"}).encode()
            self.send_response(404)
            self.send_header("X-Error-Code", "RepoNotFound")
        else:
            body = json.dumps({"id": repo, "modelId": repo, "sha": "0" * 40, "private": False,
                               "siblings": [{"rfilename": f} for f in files]}).encode()
            self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@contextmanager
def fake_hub(repos: dict[str, list[str]] | None = None):
    """-> (endpoint URL, list of request paths); serves ``repos`` (default REPOS) until the block ends."""
    handler = type("Handler", (_Handler,), {"repos": dict(repos or REPOS), "requests": []})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", handler.requests
    finally:
        server.shutdown()
        server.server_close()
