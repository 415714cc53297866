"""One cached decoding step of the MoSS layers: B tokens, one per sequence, each routed on its own.

A step's routing is computed once (``StepPlan``: which rows are image cells, the conv cache's write and
window rows) and read by every layer. Layers that read the same input tensor (an attention block's q/k/v,
an MLP's gate/up) form a *group*, found by identity during one recorded forward (the prefill): the group's
first layer computes the rank-space activations of all its layers in one matmul per branch, with the
image branch's weights concatenated once per decoding session (``GroupState``), and writes one conv-cache
buffer; the others take their slice. So a step costs a few ops per group, not per projection, and no
per-projection Python bookkeeping beyond an identity check.
"""

from __future__ import annotations

import torch

from .cache import ConvCache, Route


class StepPlan:
    """The routing of one batched incremental forward (``routes``: one per row), shared by every layer."""

    def __init__(self, routes: list[Route], cache: ConvCache, device):
        self.batch_size = len(routes)
        image = [b for b, r in enumerate(routes) if r.is_image]
        self.n_image = len(image)
        self.all_image = self.n_image == self.batch_size
        self.image_rows = torch.tensor(image, device=device) if 0 < self.n_image < self.batch_size else None
        self._text_weight = None
        if self.image_rows is not None:
            self._text_weight = torch.tensor([[0.0] if r.is_image else [1.0] for r in routes], device=device)
        self.conv_index = cache.plan(routes, device) if self.n_image else None
        self.cache = cache

    def text_weight(self, dtype) -> torch.Tensor:
        """(B, 1): 1 at text rows, 0 at image cells (mixed steps only)."""
        return self._text_weight.to(dtype)


class Group:
    """Layers that read one input tensor in a forward and hold the same adapters, in call order; ``state`` per
    adapter name."""

    def __init__(self, layer) -> None:
        self.layers = [layer]
        self.state: dict = {}
        self.x = None  # the input of the current step (set by the first layer)
        self.out: dict = {}  # adapter name -> per layer (z_text, z_image) of the current step


class StepGroups:
    """Which layers form groups (module docstring): recorded over one forward, then fixed for the model."""

    def __init__(self) -> None:
        self.of: dict[int, tuple[Group, int]] = {}  # id(layer) -> (its group, its index in the group)
        self.recording = False
        self._last: tuple[Group, torch.Tensor] | None = None

    def record(self, layer, x: torch.Tensor) -> None:
        if id(layer) in self.of:
            return
        if self._last is not None and self._last[1] is x and set(layer.lora_A) == set(self._last[0].layers[0].lora_A):
            group = self._last[0]
            group.layers.append(layer)
        else:
            group = Group(layer)
        self.of[id(layer)] = (group, len(group.layers) - 1)
        self._last = (group, x)

    def stop(self) -> None:
        self.recording, self._last = False, None

    def group_of(self, layer) -> tuple[Group, int]:
        found = self.of.get(id(layer))
        if found is None:  # a layer the recorded forward did not reach: a group of its own
            found = self.of[id(layer)] = (Group(layer), 0)
        return found

    def clear_state(self) -> None:
        """Drop the concatenated weights: a new decoding session reads the layers' current weights."""
        for group, _ in self.of.values():
            group.state.clear()
            group.x, group.out = None, {}


class GroupState:
    """A group's weights for one adapter, concatenated once per decoding session."""

    def __init__(self, group: Group, name: str, variant) -> None:
        layers = [layer for layer in group.layers if name in layer.lora_A]
        if len(layers) != len(group.layers):
            raise RuntimeError(f"adapter {name!r} wraps only some of the layers that share an input")
        self.a_text = torch.cat([layer.lora_A[name].weight.detach() for layer in layers])  # (sum r, d_in)
        self.text_sizes = [layer.lora_A[name].weight.shape[0] for layer in layers]
        self.image_sizes = [layer.lora_img_B[name].weight.shape[1] for layer in layers]
        self.image = variant.step_weights(layers, name)  # what variant.step_image reads
        self.key = (id(group), name)


def group_step(variant, group: Group, name: str, x: torch.Tensor, plan: StepPlan) -> None:
    """The first layer of ``group``: rank-space activations of every layer of the group for this step."""
    state = group.state.get(name)
    if state is None:
        state = group.state[name] = GroupState(group, name, variant)
    flat = x.reshape(plan.batch_size, -1)
    z_text = z_img = None
    if not plan.all_image:
        z_text = (flat @ state.a_text.t().to(flat.dtype)).split(state.text_sizes, dim=1)
    if plan.n_image:
        rows = flat if plan.image_rows is None else flat.index_select(0, plan.image_rows)
        conv = lambda inp, taps: plan.cache.conv(state.key, inp, taps.to(inp.dtype), plan.conv_index)  # noqa: E731
        z_img = variant.step_image(state.image, rows, conv).split(state.image_sizes, dim=1)
    n = len(group.layers)
    group.out[name] = [(None if z_text is None else z_text[i], None if z_img is None else z_img[i]) for i in range(n)]
