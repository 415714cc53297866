"""An InterleavedBench-style judge over any OpenAI-compatible chat-completions endpoint.

Configured from the environment only (never the config file, so no key reaches MLflow or git):
``MOSS_JUDGE_BASE_URL`` (e.g. https://api.openai.com/v1, or a local vLLM server), ``MOSS_JUDGE_MODEL``
(default gpt-4o, InterleavedBench's judge) and ``MOSS_JUDGE_API_KEY`` (``OPENAI_*`` as fallbacks).
The judge scores five aspects 0-5; for image-editing and subject-driven tasks the two text aspects
are not applicable and are left out of the average, as InterleavedBench prescribes.
"""

from __future__ import annotations

import base64
import http.client
import io
import json
import os
import re
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field

from PIL import Image

from ..config import ConfigError

ASPECTS = ("text_quality", "perceptual_quality", "image_coherence", "text_image_coherence", "helpfulness")
TEXT_ASPECTS = ("text_quality", "text_image_coherence")
DEFAULT_MODEL = "gpt-4o"

SYSTEM = (
    "You are a strict evaluator of interleaved text-and-image generation. Score the assistant's OUTPUT "
    "for the given task on five aspects, each an integer from 0 (worst) to 5 (best): "
    "text_quality (clarity, fluency, correctness of the text), perceptual_quality (how natural and "
    "artifact-free the generated images look), image_coherence (consistency of style and content among the "
    "images, and with the input images), text_image_coherence (whether each image matches its text), "
    "helpfulness (whether the output fulfils the instruction). Give 0 for text aspects when the output has "
    "no text, and 0 for image aspects when it has no image. Reply with one JSON object with exactly these "
    "five keys and integer values, nothing else."
)


def skips_text_aspects(task_name: str) -> bool:
    """Image editing and subject-driven generation: text aspects are not scored."""
    name = task_name.lower()
    return "edit" in name or "subject" in name


def average(scores: dict[str, float], task_name: str) -> float:
    keys = [a for a in ASPECTS if not (skips_text_aspects(task_name) and a in TEXT_ASPECTS)]
    return sum(scores[a] for a in keys) / len(keys)


def parse_scores(content: str) -> dict[str, float]:
    """The judge's reply -> {aspect: score}; ValueError when it is not five scores in 0..5."""
    match = re.search(r"\{.*\}", content, re.S)
    if match is None:
        raise ValueError(f"no JSON object in the judge's reply: {content[:200]!r}")
    try:
        obj = json.loads(match.group(0))
    except json.JSONDecodeError as e:
        raise ValueError(f"the judge's JSON does not parse ({e.msg}): {content[:200]!r}") from None
    scores = {}
    for a in ASPECTS:
        v = obj.get(a)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v <= 5:
            raise ValueError(f"aspect {a!r}: expected a score 0-5, got {v!r}")
        scores[a] = float(v)
    return scores


def image_part(image: Image.Image) -> dict:
    buf = io.BytesIO()
    image.convert("RGB").save(buf, format="PNG")
    return {"type": "image_url", "image_url": {"url": "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()}}


def interleaved_parts(text: str, images: list[Image.Image]) -> list[dict]:
    """Text with <image> placeholders + images -> chat content parts in reading order."""
    from .generate import interleave

    return [{"type": "text", "text": s} if isinstance(s, str) else image_part(s) for s in interleave(text, images)]


@dataclass
class JudgeClient:
    base_url: str
    model: str
    api_key: str | None = field(repr=False)
    timeout_s: float = 120.0
    retries: int = 3

    @classmethod
    def from_env(cls, environ=None) -> JudgeClient:
        env = os.environ if environ is None else environ
        base = env.get("MOSS_JUDGE_BASE_URL") or env.get("OPENAI_BASE_URL")
        if not base:
            raise ConfigError("interleavedbench.judge is on but MOSS_JUDGE_BASE_URL (or OPENAI_BASE_URL) is not set: "
                              "the judge is any OpenAI-compatible endpoint, e.g. https://api.openai.com/v1")
        return cls(base.rstrip("/"), env.get("MOSS_JUDGE_MODEL", DEFAULT_MODEL),
                   env.get("MOSS_JUDGE_API_KEY") or env.get("OPENAI_API_KEY"))

    def messages(self, task_name: str, instruction: str, context: str, context_images: list[Image.Image],
                 output: str, output_images: list[Image.Image]) -> list[dict]:
        user = [{"type": "text", "text": f"TASK: {task_name}\nINSTRUCTION: {instruction}\nINPUT CONTEXT:"}]
        user += interleaved_parts(context, context_images)
        user.append({"type": "text", "text": "OUTPUT:"})
        user += interleaved_parts(output, output_images) or [{"type": "text", "text": "(empty)"}]
        return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": user}]

    def complete(self, messages: list[dict]) -> str:
        body = json.dumps({"model": self.model, "messages": messages, "temperature": 0}).encode()
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        for attempt in range(self.retries + 1):
            req = urllib.request.Request(f"{self.base_url}/chat/completions", data=body, headers=headers)
            try:
                with urllib.request.urlopen(req, timeout=self.timeout_s) as resp:
                    payload = json.loads(resp.read())
            except urllib.error.HTTPError as e:
                if e.code not in (408, 429, 500, 502, 503, 504) or attempt == self.retries:
                    raise RuntimeError(f"judge endpoint answered HTTP {e.code}: {e.read()[:200]!r}") from None
            except (OSError, http.client.HTTPException) as e:  # URLError, timeouts, dropped connections
                if attempt == self.retries:
                    raise RuntimeError(f"judge endpoint unreachable: {e}") from None
            else:
                try:
                    content = payload["choices"][0]["message"]["content"]
                except (KeyError, IndexError, TypeError):
                    content = None
                if not isinstance(content, str):
                    raise ValueError(f"the judge endpoint's reply is not a chat completion: {str(payload)[:200]!r}")
                return content
            time.sleep(min(2**attempt, 30))
        raise AssertionError("unreachable")

    def score(self, task_name: str, instruction: str, context: str, context_images, output: str,
              output_images) -> dict:
        scores = parse_scores(self.complete(self.messages(task_name, instruction, context, context_images, output,
                                                          output_images)))
        return {**scores, "average": average(scores, task_name)}
