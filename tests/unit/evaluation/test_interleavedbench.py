"""InterleavedBench: reading records, the OpenAI-compatible judge (against a real local HTTP server) and
`run_interleavedbench` end to end with a tiny Emu3 + MOSS model."""

from __future__ import annotations

import base64
import io
import json
import threading
import time
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import torch
from PIL import Image

from orchestrator.config import ConfigError, load_config
from orchestrator.evaluation.evaluate import run_interleavedbench
from orchestrator.evaluation.generate import Answer, GeneratedImage
from orchestrator.evaluation.interleavedbench import (
    BenchItem,
    answer_fields,
    prediction_images,
    read_bench,
    write_predictions,
)
from orchestrator.evaluation.judge import (
    ASPECTS,
    TEXT_ASPECTS,
    DEFAULT_MODEL,
    JudgeClient,
    average,
    interleaved_parts,
    parse_scores,
    skips_text_aspects,
)

COLORS = {"red": (255, 0, 0), "green": (0, 255, 0), "blue": (0, 0, 255)}
SCORES = {"text_quality": 1, "perceptual_quality": 4, "image_coherence": 3, "text_image_coherence": 1, "helpfulness": 5}
FULL_AVG, EDIT_AVG = 14 / 5, 12 / 3  # all five aspects / the three non-text ones


def png(path, color, size=(16, 12)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, COLORS[color]).save(path)
    return path


def record(rid, task="wikihow_next_step", context="Step one. <image> Step two. <image>",
           images=("imgs/a.png", "imgs/b.png"), **extra):
    return {"id": rid, "task_name": task, "instruction": "Continue the story.", "context": context,
            "image": list(images), **extra}


@pytest.fixture
def bench_dir(tmp_path):
    png(tmp_path / "imgs/a.png", "red")
    png(tmp_path / "imgs/b.png", "green", (10, 20))
    return tmp_path


# --------------------------------------------------------------------------------------- read_bench


def test_read_bench_issue_format_llava_style_and_rejects(bench_dir):
    recs = [
        record("wikihow_next_step_0_489157", extra_field=[1, 2]),
        {"id": 7, "task_name": "visual_story", "conversations": [{"from": "human", "value": "Once <image> upon"}],
         "image": ["imgs/b.png"]},
        record("few", context="only one <image>"),  # 1 placeholder, 2 images
        record(None),
        {"id": "no_task", "context": "x", "image": []},
        record("str_list", context="a <image>", images=()) | {"image": {"path": "imgs/a.png"}},
        record("no_context") | {"context": None},
        "not an object",
        record("last", context="no images at all", images=()),
    ]
    (bench_dir / "bench.json").write_text(json.dumps(recs))
    items, rejects = read_bench(bench_dir / "bench.json")

    assert [i.id for i in items] == ["wikihow_next_step_0_489157", "7", "last"]
    first, llava, last = items
    assert first.task_name == "wikihow_next_step" and first.instruction == "Continue the story."
    assert first.images == [str(bench_dir / "imgs/a.png"), str(bench_dir / "imgs/b.png")]
    assert first.raw == recs[0]  # the record itself, unknown fields included
    assert llava.context == "Once <image> upon" and llava.instruction == ""
    assert llava.images == [str(bench_dir / "imgs/b.png")]
    assert last.images == []

    by_index = {r["index"]: r for r in rejects}
    assert sorted(by_index) == [2, 3, 4, 5, 6, 7]
    assert by_index[2]["id"] == "few" and "1 <image> placeholder(s)" in by_index[2]["reason"]
    assert "but 2 image(s)" in by_index[2]["reason"]
    assert by_index[3]["id"] is None and "'id'" in by_index[3]["reason"]
    assert by_index[4]["id"] == "no_task" and "'task_name'" in by_index[4]["reason"]
    assert "'image' must be a list" in by_index[5]["reason"]
    assert "no 'context'" in by_index[6]["reason"]
    assert by_index[7]["id"] is None and "object" in by_index[7]["reason"]


def test_read_bench_json_lines_and_max_records(bench_dir):
    lines = [record("bad", context="no placeholder"), record("r1"), record("r2", images=["imgs/a.png", "imgs/a.png"]),
             record("r3")]
    path = bench_dir / "bench.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in lines) + "\n\n")
    items, rejects = read_bench(path)
    assert [i.id for i in items] == ["r1", "r2", "r3"]
    assert [r["id"] for r in rejects] == ["bad"]

    items, rejects = read_bench(path, max_records=2)
    assert [i.id for i in items] == ["r1", "r2"] and len(rejects) == 1
    items, _ = read_bench(path, max_records=1)
    assert [i.id for i in items] == ["r1"]


def test_read_bench_single_image_string_and_absolute_paths(bench_dir):
    absolute = str(bench_dir / "imgs/b.png")
    path = bench_dir / "b.json"
    path.write_text(json.dumps([record("s", context="<image>", images=()) | {"image": "imgs/a.png"},
                                record("abs", context="<image>", images=[absolute])]))
    items, rejects = read_bench(path)
    assert rejects == []
    assert items[0].images == [str(bench_dir / "imgs/a.png")] and items[1].images == [absolute]


def test_read_bench_missing_or_unparsable_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="not a file"):
        read_bench(tmp_path / "nope.json")
    with pytest.raises(ConfigError, match="not a file"):
        read_bench(tmp_path)
    (tmp_path / "broken.json").write_text('[{"id": 1,\n')
    with pytest.raises(ConfigError, match="neither a JSON list nor JSON lines"):
        read_bench(tmp_path / "broken.json")


def test_prompt_segments_in_order(bench_dir):
    (bench_dir / "b.json").write_text(json.dumps([record("p", context="<image> between <image>  end ")]))
    (item,), _ = read_bench(bench_dir / "b.json")
    seg = item.prompt()
    assert [type(s) for s in seg] == [str, Image.Image, str, Image.Image, str]
    assert seg[0] == "Continue the story." and seg[2] == "between" and seg[4] == "end"
    assert seg[1].mode == "RGB" and seg[1].size == (16, 12) and seg[1].getpixel((0, 0)) == COLORS["red"]
    assert seg[3].size == (10, 20) and seg[3].getpixel((0, 0)) == COLORS["green"]

    blank = BenchItem("x", "t", "   ", "just text", [])
    assert blank.prompt() == ["just text"]


def test_answer_fields_write_predictions_and_prediction_images(tmp_path):
    item = BenchItem("r0", "t", "i", "c", [], raw={"id": "r0", "task_name": "t", "keep": True})
    pixels = GeneratedImage(torch.zeros(2, 3, dtype=torch.long), Image.new("RGB", (8, 6), "blue"))
    answer = Answer(parts=["Look: ", pixels, " and ", GeneratedImage(torch.arange(6).view(2, 3), None)])
    out = answer_fields(answer, item, tmp_path)
    assert out == {"output": "Look: <image> and <image>", "output_image": ["images/r0_0.png", "images/r0_1.codes.json"]}
    assert Image.open(tmp_path / "images/r0_0.png").size == (8, 6)
    assert json.loads((tmp_path / "images/r0_1.codes.json").read_text()) == [[0, 1, 2], [3, 4, 5]]

    path = write_predictions([item], [out], tmp_path)
    assert json.loads(path.read_text()) == [{"id": "r0", "task_name": "t", "keep": True, **out}]
    # codes are not pixels and a vanished file is skipped: only the PNG comes back
    ims = prediction_images({"output_image": [*out["output_image"], "images/gone.png"]}, tmp_path)
    assert len(ims) == 1 and ims[0].getpixel((0, 0)) == COLORS["blue"]


# --------------------------------------------------------------------------------------- judge: pure parts


def test_parse_scores_accepts_json_in_prose_and_fences():
    assert parse_scores(json.dumps(SCORES)) == {k: float(v) for k, v in SCORES.items()}
    fenced = "Here is my evaluation:\n```json\n" + json.dumps({**SCORES, "helpfulness": 2.5}) + "\n```\nThanks."
    got = parse_scores(fenced)
    assert got["helpfulness"] == 2.5 and list(got) == list(ASPECTS)
    assert parse_scores(json.dumps({**SCORES, "comment": "fine"}))["text_quality"] == 1.0  # extra keys ignored


@pytest.mark.parametrize("reply, words", [
    (json.dumps({**SCORES, "helpfulness": 6}), "helpfulness"),
    (json.dumps({**SCORES, "text_quality": -1}), "text_quality"),
    (json.dumps({k: v for k, v in SCORES.items() if k != "image_coherence"}), "image_coherence"),
    (json.dumps({**SCORES, "perceptual_quality": "4"}), "perceptual_quality"),
    (json.dumps({**SCORES, "perceptual_quality": True}), "perceptual_quality"),
    ("I would give it a four.", "no JSON object"),
    ("{text_quality: 4, oops}", "does not parse"),
])
def test_parse_scores_rejects_bad_replies(reply, words):
    with pytest.raises(ValueError, match=words):
        parse_scores(reply)


@pytest.mark.parametrize("task, skips", [
    ("image_editing", True), ("ImageEdit", True), ("subject_driven", True), ("multi_concept_Subject", True),
    ("wikihow_next_step", False), ("visual_story_telling", False), ("activitynet", False),
])
def test_average_skips_text_aspects_for_editing_and_subject_tasks(task, skips):
    scores = {k: float(v) for k, v in SCORES.items()}
    assert skips_text_aspects(task) is skips
    assert average(scores, task) == pytest.approx(EDIT_AVG if skips else FULL_AVG)


def test_from_env_reads_moss_judge_variables_with_openai_fallbacks():
    c = JudgeClient.from_env(environ={"MOSS_JUDGE_BASE_URL": "http://judge:8000/v1/", "MOSS_JUDGE_MODEL": "qwen-vl",
                                      "MOSS_JUDGE_API_KEY": "sk-moss", "OPENAI_BASE_URL": "http://other/v1",
                                      "OPENAI_API_KEY": "sk-openai"})
    assert (c.base_url, c.model, c.api_key) == ("http://judge:8000/v1", "qwen-vl", "sk-moss")
    c = JudgeClient.from_env(environ={"OPENAI_BASE_URL": "https://api.openai.com/v1", "OPENAI_API_KEY": "sk-o"})
    assert (c.base_url, c.model, c.api_key) == ("https://api.openai.com/v1", DEFAULT_MODEL, "sk-o")
    c = JudgeClient.from_env(environ={"MOSS_JUDGE_BASE_URL": "http://x/v1"})
    assert c.api_key is None
    for env in ({}, {"MOSS_JUDGE_MODEL": "m", "MOSS_JUDGE_API_KEY": "k"}, {"MOSS_JUDGE_BASE_URL": ""}):
        with pytest.raises(ConfigError, match="MOSS_JUDGE_BASE_URL"):
            JudgeClient.from_env(environ=env)


def test_interleaved_parts_order():
    parts = interleaved_parts("a <image> b <image>", [Image.new("RGB", (4, 4), "red"), Image.new("RGB", (4, 4))])
    assert [p["type"] for p in parts] == ["text", "image_url", "text", "image_url"]
    assert [p.get("text") for p in parts] == ["a", None, "b", None]


# --------------------------------------------------------------------------------------- judge: local server


class JudgeServer:
    """An OpenAI-compatible chat-completions endpoint on 127.0.0.1; ``reply(body, headers, n) -> (status, obj)``
    where ``obj`` is a dict (sent as JSON), bytes (sent as is) or None (connection closed without a reply)."""

    def __init__(self, reply):
        self.requests: list[dict] = []
        self.reply = reply
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802
                raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                body = json.loads(raw)
                server.requests.append({"path": self.path, "headers": dict(self.headers), "body": body,
                                        "time": time.monotonic()})
                if self.path != "/v1/chat/completions":
                    status, obj = 404, {"error": {"message": f"no route {self.path}"}}
                else:
                    status, obj = server.reply(body, self.headers, len(server.requests))
                if obj is None:
                    self.close_connection = True
                    return
                data = obj if isinstance(obj, bytes) else json.dumps(obj).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base_url = f"http://127.0.0.1:{self.httpd.server_port}/v1"

    def __enter__(self):
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


def completion(content: str) -> dict:
    return {"id": "chatcmpl-1", "object": "chat.completion",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}]}


def scores_reply(body, headers, n):
    return 200, completion("```json\n" + json.dumps(SCORES) + "\n```")


@contextmanager
def judge_server(reply=scores_reply):
    with JudgeServer(reply) as s:
        yield s


def image_urls(content: list) -> list[str]:
    return [p["image_url"]["url"] for p in content if p["type"] == "image_url"]


def decode_data_url(url: str) -> Image.Image:
    prefix = "data:image/png;base64,"
    assert url.startswith(prefix)
    return Image.open(io.BytesIO(base64.b64decode(url[len(prefix):])))


def client_for(server, **kw) -> JudgeClient:
    return JudgeClient.from_env(environ={"MOSS_JUDGE_BASE_URL": server.base_url, "MOSS_JUDGE_MODEL": "judge-vl",
                                         "MOSS_JUDGE_API_KEY": "sk-test-123", **kw})


def test_judge_client_sends_an_openai_request_with_images_and_returns_scores():
    def reply(body, headers, n):
        # the server itself refuses what a real endpoint would refuse
        if headers.get("Authorization") != "Bearer sk-test-123":
            return 401, {"error": {"message": "bad key"}}
        if body.get("model") != "judge-vl" or not isinstance(body.get("messages"), list):
            return 400, {"error": {"message": "bad body"}}
        return scores_reply(body, headers, n)

    red, green, blue = (Image.new("RGB", (6, 4), COLORS[c]) for c in ("red", "green", "blue"))
    with judge_server(reply) as server:
        client = client_for(server)
        result = client.score("wikihow_next_step", "Continue.", "Step <image> then <image>", [red, green],
                              "Next: <image> done", [blue])
        edit = client.score("image_editing", "Make it blue.", "<image>", [red], "<image>", [blue])

    assert set(result) == {*ASPECTS, "average"}
    assert result == {**{k: float(v) for k, v in SCORES.items()}, "average": pytest.approx(FULL_AVG)}
    assert edit["average"] == pytest.approx(EDIT_AVG) and edit["text_quality"] == 1.0

    assert len(server.requests) == 2
    req = server.requests[0]
    assert req["path"] == "/v1/chat/completions"
    assert req["headers"]["Authorization"] == "Bearer sk-test-123"
    assert req["headers"]["Content-Type"] == "application/json"
    body = req["body"]
    assert body["model"] == "judge-vl" and body["temperature"] == 0
    system, user = body["messages"]
    assert system["role"] == "system" and all(a in system["content"] for a in ASPECTS)
    assert user["role"] == "user"
    texts = [p["text"] for p in user["content"] if p["type"] == "text"]
    assert "TASK: wikihow_next_step" in texts[0] and "INSTRUCTION: Continue." in texts[0]
    assert texts[1:] == ["Step", "then", "OUTPUT:", "Next:", "done"]
    urls = image_urls(user["content"])
    assert len(urls) == 3  # two input images, one output image, in reading order
    assert [decode_data_url(u).getpixel((0, 0)) for u in urls] == [COLORS["red"], COLORS["green"], COLORS["blue"]]
    assert decode_data_url(urls[0]).size == (6, 4)
    # the OUTPUT marker comes after the input images and before the output image
    kinds = [p.get("text") or "IMG" for p in user["content"][1:]]
    assert kinds == ["Step", "IMG", "then", "IMG", "OUTPUT:", "Next:", "IMG", "done"]


def test_judge_client_without_key_sends_no_authorization_and_marks_empty_output():
    with judge_server() as server:
        client = JudgeClient.from_env(environ={"MOSS_JUDGE_BASE_URL": server.base_url})
        client.score("t", "i", "text only", [], "", [])
    req = server.requests[0]
    assert "Authorization" not in req["headers"] and req["body"]["model"] == DEFAULT_MODEL
    assert req["body"]["messages"][1]["content"][-1] == {"type": "text", "text": "(empty)"}


def test_judge_client_retries_a_503_then_succeeds():
    def reply(body, headers, n):
        return (503, {"error": {"message": "overloaded"}}) if n == 1 else scores_reply(body, headers, n)

    with judge_server(reply) as server:
        result = client_for(server).score("story", "i", "c", [], "out", [])
    assert len(server.requests) == 2
    assert server.requests[1]["time"] - server.requests[0]["time"] >= 0.9  # backed off before the retry
    assert server.requests[0]["body"] == server.requests[1]["body"]
    assert result["average"] == pytest.approx(FULL_AVG)


def test_judge_client_retries_a_dropped_connection():
    def reply(body, headers, n):
        return (200, None) if n == 1 else scores_reply(body, headers, n)

    with judge_server(reply) as server:
        result = client_for(server).score("story", "i", "c", [], "out", [])
    assert len(server.requests) == 2 and result["helpfulness"] == 5.0


def test_judge_client_gives_up_after_its_retries():
    with judge_server(lambda b, h, n: (500, {"error": {"message": "boom"}})) as server:
        client = client_for(server)
        client.retries = 1
        with pytest.raises(RuntimeError, match="HTTP 500"):
            client.score("story", "i", "c", [], "out", [])
    assert len(server.requests) == 2


def test_judge_client_does_not_retry_a_401():
    with judge_server(lambda b, h, n: (401, {"error": {"message": "invalid api key"}})) as server:
        t0 = time.monotonic()
        with pytest.raises(RuntimeError, match="HTTP 401.*invalid api key"):
            client_for(server).score("story", "i", "c", [], "out", [])
        assert time.monotonic() - t0 < 0.9  # no back-off sleep
    assert len(server.requests) == 1


def test_judge_client_unreachable_endpoint_is_a_runtime_error():
    with judge_server() as server:
        url = server.base_url
    client = JudgeClient(url, "m", None, timeout_s=2, retries=0)
    with pytest.raises(RuntimeError, match="unreachable"):
        client.complete([])


@pytest.mark.parametrize("status, obj, words", [
    (200, completion("The output is quite good, I'd say 4 out of 5."), "no JSON object"),
    (200, completion('{"text_quality": 9, "perceptual_quality": 1}'), "text_quality"),
    (200, b"<html>gateway</html>", "Expecting value"),
    (200, {"error": {"message": "content filtered"}}, "not a chat completion"),
    (200, {"choices": [{"message": {"role": "assistant", "content": None, "refusal": "no"}}]}, "not a chat completion"),
    (200, {"choices": []}, "not a chat completion"),
])
def test_judge_client_bad_replies_are_value_errors(status, obj, words):
    with judge_server(lambda b, h, n: (status, obj)) as server:
        with pytest.raises(ValueError, match=words):
            client_for(server).score("story", "i", "c", [], "out", [])
    assert len(server.requests) == 1  # a bad answer is not retried


# --------------------------------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def tiny_model():
    from orchestrator.wrappers import unwrap
    from orchestrator.moss import apply_moss
    from tests.helpers import ADAPTERS, randomize_adapter, spec_for

    spec = spec_for("emu3")
    model = apply_moss(spec.build(seed=0), ADAPTERS["moss-full"], spec)
    randomize_adapter(model)
    model.eval()
    # steer the (random) model to open an image whenever it may, so that answers do hold images
    open_id = spec.image_frame(*spec.generation_grid(None)).open_id

    def favour_images(module, inputs, out):
        out = out.clone()
        out[..., open_id] += 1e4
        return out

    handle = unwrap(model).lm_head.register_forward_hook(favour_images)
    yield model, spec
    handle.remove()


def bench_config(path, *extra):
    return load_config(None, [f"interleavedbench.path={path}", "generate.max_new_tokens=4", "generate.max_images=1",
                              "generate.image_size=[2,3]", *extra])


def e2e_bench(bench_dir):
    recs = [
        record("story_0", task="visual_story_telling", source="vist"),
        {"id": "edit_0", "task_name": "image_editing", "instruction": "Make the sky blue.",
         "conversations": [{"from": "human", "value": "<image>"}], "image": ["imgs/a.png"]},
        record("gone_0", images=["imgs/a.png", "imgs/missing.png"]),
        record("bad_0", context="no placeholders"),
        record("howto_0", task="wikihow_next_step", context="Fold the paper. <image>", images=["imgs/b.png"]),
    ]
    path = bench_dir / "interleaved_bench.json"
    path.write_text(json.dumps(recs))
    return path, recs


def test_run_interleavedbench_end_to_end_with_judge(tiny_model, bench_dir, tmp_path, monkeypatch):
    model, spec = tiny_model
    path, recs = e2e_bench(bench_dir)
    out_dir = tmp_path / "eval"
    with judge_server() as server:
        monkeypatch.setenv("MOSS_JUDGE_BASE_URL", server.base_url)
        monkeypatch.setenv("MOSS_JUDGE_MODEL", "judge-vl")
        monkeypatch.setenv("MOSS_JUDGE_API_KEY", "sk-e2e")
        result = run_interleavedbench(model, spec, bench_config(path), out_dir, judge=True)

    bench = out_dir / "interleavedbench"
    assert result["records"] == 4
    assert [(r["index"], r["id"]) for r in result["rejected"]] == [(3, "bad_0")]
    assert [f["id"] for f in result["generation_failures"]] == ["gone_0"]
    assert "ImageError" in result["generation_failures"][0]["reason"]
    assert "missing.png" in result["generation_failures"][0]["reason"]
    assert result["predictions"] == "interleavedbench/predictions.json"

    preds = json.loads((out_dir / result["predictions"]).read_text())
    kept = [r for r in recs if r["id"] != "bad_0"]
    assert [p["id"] for p in preds] == [r["id"] for r in kept]
    for pred, rec in zip(preds, kept):
        assert {k: pred[k] for k in rec} == rec  # every field of the record survives
        assert isinstance(pred["output"], str) and isinstance(pred["output_image"], list)
    by_id = {p["id"]: p for p in preds}
    assert by_id["gone_0"]["output"] == "" and by_id["gone_0"]["output_image"] == [] and by_id["gone_0"]["error"]
    for rid in ("story_0", "edit_0", "howto_0"):
        pred = by_id[rid]
        assert "error" not in pred
        assert len(pred["output_image"]) == 1 and pred["output"].count("<image>") == 1
        f = bench / pred["output_image"][0]
        assert f.is_file() and f.suffix == ".png"
        assert Image.open(f).size[0] > 0

    # the judge saw three answers (not the failed one), each with its input and output images
    assert len(server.requests) == 3
    assert all(r["headers"]["Authorization"] == "Bearer sk-e2e" and r["body"]["model"] == "judge-vl"
               for r in server.requests)
    tasks = [r["body"]["messages"][1]["content"][0]["text"].splitlines()[0] for r in server.requests]
    assert tasks == ["TASK: visual_story_telling", "TASK: image_editing", "TASK: wikihow_next_step"]
    n_urls = [len(image_urls(r["body"]["messages"][1]["content"])) for r in server.requests]
    assert n_urls == [2 + 1, 1 + 1, 1 + 1]
    first = image_urls(server.requests[0]["body"]["messages"][1]["content"])
    assert decode_data_url(first[0]).getpixel((0, 0)) == COLORS["red"]
    assert decode_data_url(first[1]).getpixel((0, 0)) == COLORS["green"]
    produced = Image.open(bench / by_id["story_0"]["output_image"][0]).convert("RGB")
    assert decode_data_url(first[2]).convert("RGB").tobytes() == produced.tobytes()

    judge = result["judge"]
    assert judge["scored"] == 3 and judge["failed"] == 0 and result["judge_failures"] == []
    # gone_0 failed to generate: it counts, with 0 on every aspect (text aspects: story, howto, gone; the others
    # also edit), so every adapter is averaged over the same records
    assert judge["zero_scored"] == 1 and judge["generation_failure_rate"] == pytest.approx(1 / 4)
    expected = {a: SCORES[a] * (2 / 3 if a in TEXT_ASPECTS else 3 / 4) for a in ASPECTS}
    for a in ASPECTS:
        assert judge[a] == pytest.approx(expected[a])
    assert judge["average"] == pytest.approx(sum(expected.values()) / 5)  # the mean of the aspect means
    scores = {s["id"]: s for s in json.loads((bench / "judge_scores.json").read_text())}
    assert set(scores) == {"story_0", "edit_0", "howto_0", "gone_0"}
    assert scores["gone_0"]["generation_failed"] and scores["gone_0"]["average"] == 0
    assert scores["edit_0"]["average"] == pytest.approx(EDIT_AVG)
    assert scores["story_0"]["average"] == pytest.approx(FULL_AVG)
    assert scores["edit_0"]["task_name"] == "image_editing"


def test_run_interleavedbench_judge_failures_do_not_end_the_run(tiny_model, bench_dir, tmp_path, monkeypatch):
    model, spec = tiny_model
    path, _ = e2e_bench(bench_dir)

    def reply(body, headers, n):
        task = body["messages"][1]["content"][0]["text"]
        if "image_editing" in task:
            return 200, completion("I cannot score this.")
        if "wikihow" in task:
            return 200, {"error": {"message": "upstream"}}
        return scores_reply(body, headers, n)

    with judge_server(reply) as server:
        monkeypatch.setenv("MOSS_JUDGE_BASE_URL", server.base_url)
        monkeypatch.delenv("MOSS_JUDGE_API_KEY", raising=False)
        monkeypatch.delenv("OPENAI_API_KEY", raising=False)
        result = run_interleavedbench(model, spec, bench_config(path), tmp_path / "eval", judge=True)
    assert result["records"] == 4 and [f["id"] for f in result["generation_failures"]] == ["gone_0"]
    assert result["judge"]["scored"] == 1 and result["judge"]["failed"] == 2
    assert result["judge"]["average"] == pytest.approx(FULL_AVG / 2)  # story_0 and gone_0 (zeros)
    failures = {f["id"]: f["reason"] for f in result["judge_failures"]}
    assert set(failures) == {"edit_0", "howto_0"}
    assert "no JSON object" in failures["edit_0"] and "not a chat completion" in failures["howto_0"]
    assert all("Authorization" not in r["headers"] for r in server.requests)
    assert len(server.requests) == 3  # gone_0 failed to generate and is not sent


def test_run_interleavedbench_without_judge_endpoint_fails_before_generating(tiny_model, bench_dir, tmp_path,
                                                                             monkeypatch):
    model, spec = tiny_model
    path, _ = e2e_bench(bench_dir)
    monkeypatch.delenv("MOSS_JUDGE_BASE_URL", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    out_dir = tmp_path / "eval"
    with pytest.raises(ConfigError, match="MOSS_JUDGE_BASE_URL"):
        run_interleavedbench(model, spec, bench_config(path), out_dir, judge=True)
    assert not (out_dir / "interleavedbench").exists()

    result = run_interleavedbench(model, spec, bench_config(path, "interleavedbench.max_records=1"), out_dir,
                                  judge=False)
    assert "judge" not in result and result["records"] == 1
    assert (out_dir / "interleavedbench/predictions.json").is_file()


def test_ids_become_safe_unique_file_names(tmp_path):
    from orchestrator.evaluation.interleavedbench import read_bench

    Image.new("RGB", (8, 8), "red").save(tmp_path / "a.png")
    rec = {"task_name": "t", "instruction": "i", "context": "c <image>", "image": ["a.png"]}
    path = tmp_path / "bench.json"
    path.write_text(json.dumps([{**rec, "id": "x/1"}, {**rec, "id": "x_1"}, {**rec, "id": "y"}]))
    items, rejects = read_bench(path)
    assert [i.id for i in items] == ["x/1", "y"]
    assert rejects[0]["id"] == "x_1" and "repeats" in rejects[0]["reason"]


def test_aspect_means_leave_text_aspects_out_where_they_do_not_apply():
    from orchestrator.evaluation.evaluate import aspect_means

    story = {"task_name": "storytelling", "text_quality": 4.0, "perceptual_quality": 2.0, "image_coherence": 2.0,
             "text_image_coherence": 4.0, "helpfulness": 2.0, "average": 2.8}
    edit = {"task_name": "image_editing", "text_quality": 0.0, "perceptual_quality": 4.0, "image_coherence": 4.0,
            "text_image_coherence": 0.0, "helpfulness": 4.0, "average": 4.0}
    means = aspect_means([story, edit])
    assert means["text_quality"] == 4.0 and means["text_image_coherence"] == 4.0  # the editing zeros left out
    assert means["perceptual_quality"] == 3.0 and means["average"] == pytest.approx(3.4)


# --------------------------------------------------------------------------------------- image confinement


def confined_bench(bench_dir):
    """bench_dir/sub/bench.json, whose folder holds ok.png, a FIFO and a symlink out; the rest of bench_dir
    (imgs/, secret.png) is outside its root."""
    import os

    sub = bench_dir / "sub"
    png(sub / "ok.png", "blue")
    png(bench_dir / "secret.png", "green", (9, 9))
    os.symlink(bench_dir / "secret.png", sub / "link.png")
    os.mkfifo(sub / "pipe.png")
    one = dict(context="<image>")
    recs = [record("ok", **one, images=["ok.png"]), record("up", **one, images=["../secret.png"]),
            record("abs", **one, images=[str(bench_dir / "secret.png")]), record("link", **one, images=["link.png"]),
            record("http", **one, images=["http://127.0.0.1:9/x.png"]),
            record("chain", **one, images=["simplecache::file:///etc/hostname"]),
            record("fifo", **one, images=["pipe.png"])]
    (sub / "bench.json").write_text(json.dumps(recs))
    return sub / "bench.json"


def test_read_bench_confines_images_to_the_bench_folder(bench_dir):
    from orchestrator.data.images import ImageError

    items, rejects = read_bench(confined_bench(bench_dir))
    assert [i.id for i in items] == ["ok", "fifo"]
    reasons = {r["id"]: r["reason"] for r in rejects}
    assert set(reasons) == {"up", "abs", "link", "http", "chain"}
    assert all("resolves outside the data file's folder" in reasons[k] for k in ("up", "abs", "link"))
    assert "URI scheme 'http' is not allowed" in reasons["http"] and "fsspec chains" in reasons["chain"]
    with pytest.raises(ImageError, match="not a regular file: FIFO"):  # refused from stat, never opened
        items[1].prompt()


def test_run_interleavedbench_never_sends_an_image_from_outside(tiny_model, bench_dir, tmp_path, monkeypatch):
    model, spec = tiny_model
    path = confined_bench(bench_dir)
    with judge_server() as server:
        monkeypatch.setenv("MOSS_JUDGE_BASE_URL", server.base_url)
        result = run_interleavedbench(model, spec, bench_config(path), tmp_path / "eval", judge=True)
    assert result["records"] == 2 and len(result["rejected"]) == 5
    assert [f["id"] for f in result["generation_failures"]] == ["fifo"]
    assert len(server.requests) == 1
    sent = [decode_data_url(u).convert("RGB") for r in server.requests
            for u in image_urls(r["body"]["messages"][1]["content"])]
    assert sent[0].getpixel((0, 0)) == COLORS["blue"]
    # the secret never goes out (a generated image may be any colour: the tiny VQ decodes flat cells to
    # saturated ones, pure green among them, so only the secret's own size and pixels identify it)
    secret = Image.open(bench_dir / "secret.png").convert("RGB")
    assert all(im.size != secret.size or im.tobytes() != secret.tobytes() for im in sent)
