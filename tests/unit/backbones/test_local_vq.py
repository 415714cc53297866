"""The tiny presets' image tokenizers give local codes, as a trained VQ-VAE's are: a flat region is one code
repeated, whatever its position (a randomly initialised VQ mixes in position and the whole image)."""

import pytest
import torch
from PIL import Image

from orchestrator.backbones.local_vq import localize
from orchestrator.backbones.vq import TINY_VQ_SEED
from tests.helpers import spec_for


def _halves(size=(64, 64)) -> Image.Image:
    im = Image.new("RGB", size, (220, 40, 40))
    im.paste((40, 70, 220), (0, size[1] // 2, size[0], size[1]))  # top red, bottom blue
    return im


@pytest.mark.parametrize("name", ["chameleon", "emu3", "janus"])
def test_a_flat_region_is_one_code_repeated(name):
    spec = spec_for(name)
    flat = spec.target_grid(None, Image.new("RGB", (64, 64), (40, 170, 60)))
    assert flat.unique().numel() == 1
    grid = spec.target_grid(None, _halves())
    h = grid.shape[0]
    top, bottom = grid[: h // 2 - 1], grid[h // 2 + 1 :]  # away from the edge between them
    assert top.unique().numel() == 1 and bottom.unique().numel() == 1 and top[0, 0] != bottom[0, 0]


def test_the_random_vq_it_replaces_is_not_local():
    """Why localize exists: the same class at the same seed, left as drawn, codes a flat image by position."""
    spec = spec_for("chameleon")
    torch.manual_seed(TINY_VQ_SEED)
    drawn = spec.vq_module(spec.model_class(spec.random_config())).eval()
    px, size = spec.preprocess(Image.new("RGB", (64, 64), (40, 170, 60)))
    spec.__dict__["vq"] = drawn  # the cached tokenizer of this spec instance only
    try:
        assert spec.image_codes(px, size).unique().numel() > 4
        localize(drawn)
        assert spec.image_codes(px, size).unique().numel() == 1
    finally:
        del spec.__dict__["vq"]
