"""Shared test helpers: tiny backbones, PIL-drawn images, encoded interleaved batches, gloo process groups."""

from __future__ import annotations

import torch
from PIL import Image, ImageDraw

from orchestrator.backbones import families, get_backbone, spec_class
from orchestrator.moss import MossConfig
from orchestrator.moss.variants import all_forms

BACKBONE_NAMES = families()  # one per registered spec class: chameleon, emu2, emu3, janus
#: images as VQ code ids (emu2's are continuous embeddings)
VQ_BACKBONES = tuple(n for n in BACKBONE_NAMES if not spec_class(n).continuous_images)
#: every registered variant's forms (lora, moe_lora, moss-full, moss-lowrank), rank 4, kernel 3
ADAPTERS = {slug: MossConfig(rank=4, alpha=8, kernel_size=3, **kw) for slug, kw in all_forms().items()}


def draw(color: str, size=(32, 32), shape: str = "square") -> Image.Image:
    im = Image.new("RGB", size, "white")
    d = ImageDraw.Draw(im)
    box = [size[0] // 5, size[1] // 5, size[0] * 4 // 5, size[1] * 4 // 5]
    (d.ellipse if shape == "circle" else d.rectangle)(box, fill=color)
    return im


_SPECS = {}


def spec_for(name: str):
    if name not in _SPECS:
        _SPECS[name] = get_backbone(name)
    return _SPECS[name]


def two_image_example(spec):
    """Prompt text + prompt image + answer text + answer image (different aspect ratio) + text."""
    return spec.encode(
        ["Draw a red square.", draw("red"), "Now a blue circle:", draw("blue", (40, 24), "circle"), "Done."],
        targets=[False, False, True, True, True],
    )


def mixed_batch(spec):
    """Two sequences: two images + text, and one image + text (padded)."""
    return spec.collate([two_image_example(spec), spec.encode(["A green one:", draw("green")])])


def text_batch(spec):
    return spec.collate([spec.encode(["Only words here."]), spec.encode(["And here, too, no images."])])


def image_embeds(spec, model, example) -> torch.Tensor | None:
    """Continuous-image backbones: the (n_images, n_query, d) visual embeddings of an encoded example's images."""
    if not spec.continuous_images or not example.get("images"):
        return None
    return spec.visual_embeddings(model, torch.stack([spec.normalize(im) for im in example["images"]]))


def randomize_adapter(model, seed: int = 0, std: float = 0.1) -> None:
    """Give zero-initialised B matrices random values so that adapters change the outputs."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_" in name and p.requires_grad:
                p.copy_(torch.randn(p.shape, generator=g) * std)


def run_gloo_ranks(body, world: int = 2, timeout: float = 180) -> dict:
    """Run ``body(rank)`` in ``world`` spawned processes joined by a gloo process group on 127.0.0.1.

    -> {rank: what body returned} (plain data: tensors shared with a dead process are gone).
    ``body`` must be a module-level function (spawn pickles it by name).
    """
    import multiprocessing as mp
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_gloo_rank, args=(body, r, world, port, queue)) for r in range(world)]
    for p in procs:
        p.start()
    got = dict(queue.get(timeout=timeout) for _ in procs)
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    return got


def _gloo_rank(body, rank: int, world: int, port: int, queue) -> None:
    import os

    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.set_num_threads(1)
    queue.put((rank, body(rank)))
    dist.barrier()
    dist.destroy_process_group()
