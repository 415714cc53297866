"""Inference cost of an evaluation: time per generated image token and per text token, over every answer it
generated (editing and InterleavedBench), on the device it ran on: a row's latency per token in its batch
(generate.Answer), so a property of the machine and of ``evaluate.batch_size`` as much as of the adapter:
compare adapters measured on the same machine at the same batch size."""

from __future__ import annotations

from dataclasses import dataclass


def device_name(model) -> str:
    import torch

    device = next(model.parameters()).device
    return torch.cuda.get_device_name(device) if device.type == "cuda" else device.type


@dataclass
class InferenceCost:
    image_seconds: float = 0.0
    image_tokens: int = 0
    text_seconds: float = 0.0
    text_tokens: int = 0
    retried: int = 0  # answers decoded again by themselves after a batched step failed (generate.Generator)

    def add(self, answer) -> None:
        """Count one generated answer (generate.Answer's per-token times)."""
        self.image_seconds += sum(answer.image_token_seconds)
        self.image_tokens += len(answer.image_token_seconds)
        self.text_seconds += sum(answer.text_token_seconds)
        self.text_tokens += len(answer.text_token_seconds)

    def summary(self, device: str) -> dict:
        """{"device", "image_tokens", "text_tokens", "retried_alone", "ms_per_image_token", "ms_per_text_token"}
        (a rate is left out when no token of that kind was generated)."""
        out = {"device": device, "image_tokens": self.image_tokens, "text_tokens": self.text_tokens,
               "retried_alone": self.retried}
        if self.image_tokens:
            out["ms_per_image_token"] = 1000 * self.image_seconds / self.image_tokens
        if self.text_tokens:
            out["ms_per_text_token"] = 1000 * self.text_seconds / self.text_tokens
        return out
