"""The hostile set (orchestrator.data.hostile.write_hostile) through `moss preprocess`: every bad record rejected at
its stage with its reason, every good one kept, nothing outside the roots opened, no request to the canary.

The local engine runs in a subprocess under a memory limit, with an audit hook that records every file it
opens. The limit is RLIMIT_DATA (heap and private anonymous mappings: what reading a bomb whole would
allocate), not RLIMIT_AS: torch's libraries and thread arenas reserve gigabytes of address space, by machine.
"""

import json
import os
import subprocess
import sys
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pyarrow.dataset as pads
import pytest

from orchestrator.config import load_config
from orchestrator.data.hostile import HOSTILE_KINDS, HOSTILE_LIMITS, write_hostile
from orchestrator.data.pipeline import preprocess

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]
MEMORY = 3 * 2**30  # the local run needs ~1.6 GiB of it (torch, tokenizer, VQ); the gzip bomb unpacks to 8 GiB

BOOT = """
import atexit, json, os, resource, sys
limit, log = int(sys.argv[1]), sys.argv[2]
resource.setrlimit(resource.RLIMIT_DATA, (limit, limit))
seen = []
def hook(event, args):
    if event == "open" and isinstance(args[0], (str, bytes)):
        seen.append(os.fsdecode(args[0]))
    elif event == "socket.connect":
        seen.append("connect " + repr(args[1]))
sys.addaudithook(hook)
atexit.register(lambda: open(log, "w").write(json.dumps(seen)))
from orchestrator.cli import main
sys.exit(main(sys.argv[3:]))
"""


class Canary(ThreadingHTTPServer):
    """An HTTP server on 127.0.0.1 that counts every connection it accepts."""

    def __init__(self):
        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802
                self.send_response(404)
                self.end_headers()

            def log_message(self, *args):
                pass

        super().__init__(("127.0.0.1", 0), Handler)
        self.hits = 0
        self.url = f"http://127.0.0.1:{self.server_port}"

    def process_request(self, request, client_address):
        self.hits += 1
        super().process_request(request, client_address)


@pytest.fixture(scope="module")
def hostile(tmp_path_factory):
    canary = Canary()
    threading.Thread(target=canary.serve_forever, daemon=True).start()
    root = tmp_path_factory.mktemp("hostile")
    data, expect = write_hostile(root, canary.url)
    yield root, data, expect, canary
    canary.shutdown()
    canary.server_close()


def check_outcome(out: Path, expect: list[dict], manifest: dict) -> None:
    rejects = [json.loads(x) for x in (out / "rejects.jsonl").read_text().splitlines()]
    got = {(Path(r["file"]).name, r["line"]): r for r in rejects}
    rows = pads.dataset(out, format="parquet", partitioning="hive", exclude_invalid_files=True).to_table(
        columns=["file", "line", "id", "split"]).to_pylist()
    kept = {(Path(r["file"]).name, r["line"]): r for r in rows}
    assert len(got) == len(rejects) and len(kept) == len(rows) and not set(got) & set(kept)
    wrong = []
    for e in expect:
        key = (e["file"], e["line"])
        if e["stage"]:
            r = got.get(key)
            if r is None or r["stage"] != e["stage"] or e["words"] not in r["reason"]:
                wrong.append((e["kind"], key, e["stage"], e["words"], r and (r["stage"], r["reason"][:300])))
        elif key not in kept or (e["id"] is not None and kept[key]["id"] != e["id"]):
            wrong.append((e["kind"], key, "lost", got.get(key)))
    assert not wrong, wrong
    assert len(got) + len(kept) == len(expect) == manifest["inputs"]["records"]
    by_stage = Counter(e["stage"] for e in expect if e["stage"])
    assert {s["stage"]: s["rejected"] for s in manifest["stages"] if s["rejected"]} == dict(by_stage)


def test_hostile_set_local_engine_bounded_and_confined(hostile, tmp_path):
    root, data, expect, canary = hostile
    assert len({e["kind"] for e in expect if e["stage"]}) >= 25 and len(HOSTILE_KINDS) >= 30
    assert {f.rsplit(".", 1)[-1] for f in {e["file"] for e in expect}} >= {"jsonl", "gz", "json", "parquet"}
    log, out = tmp_path / "opened.json", tmp_path / "out"
    sets = [x for kv in [f"data.source={data}", f"data.output={out}", *HOSTILE_LIMITS] for x in ("--set", kv)]
    env = {**os.environ, "MALLOC_ARENA_MAX": "2", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", BOOT, str(MEMORY), str(log), "preprocess", "--local", *sets],
                          capture_output=True, text=True, timeout=600, cwd=ROOT, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"preprocess: {len(expect)} records from 8 file(s)" in proc.stdout
    manifest = json.loads((out / "chameleon" / "manifest.json").read_text())
    check_outcome(out / "chameleon", expect, manifest)
    assert canary.hits == 0

    opened = json.loads(log.read_text())
    assert any(p.endswith("hostile.jsonl") for p in opened)  # the hook did see the run's opens
    real = {os.path.realpath(p) for p in opened if not p.startswith("connect ")}
    outside = os.path.realpath(root / "outside") + "/"
    assert not [p for p in real if p.startswith(outside)]
    bad = data / "images" / "hostile-bad"
    never = {os.path.realpath(bad / n) for n in ("many.png", "pipe.png", "sock.png", "folder.png")} | {"/dev/zero"}
    assert not real & never, real & never  # 5,000 references to many.png: none read, in either pass
    assert not [c for c in opened if c.startswith("connect ") and str(canary.server_port) in c]


def test_hostile_set_ray_engine(ray_cluster, hostile, tmp_path):
    root, data, expect, canary = hostile
    cfg = load_config(None, [f"data.source={data}", f"data.output={tmp_path}", *HOSTILE_LIMITS])
    manifest = preprocess(cfg, engine="ray")
    check_outcome(tmp_path / "chameleon", expect, manifest)
    assert canary.hits == 0
