"""The training objective: a backbone's loss, with the batch's image layout handed to the adapter first.

The backbone computes the loss; the adapter (orchestrator.moss) routes each token by the layout. Neither
knows the other: whoever runs the forward (training, held-out evaluation, benchmarks) gives the layout to
the adapter through its own entry point, ``orchestrator.moss.set_layout``, here.
"""

from __future__ import annotations

import contextlib

from torch import nn

from ..backbones import BackboneSpec, LossOutput
from ..backbones.loss import LossWeights
from ..moss import set_layout


@contextlib.contextmanager
def routed(model: nn.Module, layout):
    """Hand ``layout`` to the adapter for the next forward; withdrawn again if the block fails before it ran."""
    set_layout(model, layout)
    try:
        yield
    except BaseException:
        set_layout(model, None)
        raise


def loss_weights(train, spec: BackboneSpec) -> LossWeights:
    """The run's ``train.text_weight`` / ``image_weight`` / ``loss_normalization`` (auto resolved for ``spec``)."""
    return LossWeights(train.text_weight, train.image_weight, train.normalization_for(spec.image_loss_is_ce))


def adapter_loss(model: nn.Module, spec: BackboneSpec, batch: dict, weights: tuple[float, float] = (1.0, 1.0),
                 chunk: int | None = None, per_row: bool = False) -> LossOutput:
    """``spec.loss`` of a collated batch, routed by ``batch["image_layout"]`` (a no-op for plain LoRA);
    ``per_row``: with each row's sums (LossOutput.rows)."""
    with routed(model, batch["image_layout"]):
        return spec.loss(model, batch, weights, chunk, per_row)


class LossModule(nn.Module):
    """``module(batch) -> LossOutput``: the loss as a module forward, for DDP / FSDP wrappers."""

    def __init__(self, model: nn.Module, spec: BackboneSpec, weights: tuple[float, float] = (1.0, 1.0),
                 chunk: int | None = None):
        super().__init__()
        self.model, self.spec, self.weights, self.chunk = model, spec, LossWeights(*weights), chunk

    def forward(self, batch: dict) -> LossOutput:
        return adapter_loss(self.model, self.spec, batch, self.weights, self.chunk)


def loss_module(model: nn.Module, spec: BackboneSpec, weights: tuple[float, float] = (1.0, 1.0),
                chunk: int | None = None) -> LossModule:
    """The module to wrap in DDP / FSDP (``spec.loss`` itself would bypass the wrapper's forward)."""
    return LossModule(model, spec, weights, chunk)


def adapter_hidden_states(model: nn.Module, spec: BackboneSpec, batch: dict):
    """``spec.hidden_states`` of a batch, routed by ``batch["image_layout"]``."""
    with routed(model, batch["image_layout"]):
        return spec.hidden_states(model, batch)
