"""Image loading rejects missing / zero-size / corrupt / truncated / huge files; pHash behaves."""

import io

import numpy as np
import pytest
from PIL import Image, ImageDraw

from orchestrator.data.images import ImageError, decode_image, hamming, phash, read_image_bytes


def png(im: Image.Image) -> bytes:
    buf = io.BytesIO()
    im.save(buf, "PNG")
    return buf.getvalue()


def noise(seed=0, size=(64, 64)) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 255, (*size[::-1], 3), dtype=np.uint8))


def test_good_image_round_trip(tmp_path):
    (tmp_path / "a.png").write_bytes(png(noise()))
    im = decode_image(read_image_bytes(str(tmp_path / "a.png"), 10**6), 10**6)
    assert im.size == (64, 64) and im.mode == "RGB"


@pytest.mark.parametrize(
    "data, words",
    [
        (b"", "zero-size"),
        (b"not an image at all", "cannot be decoded"),
        (png(noise())[:2000], "truncated"),
        (png(Image.new("RGB", (3000, 2000))), "more than max_image_pixels"),
    ],
)
def test_bad_images(tmp_path, data, words):
    path = tmp_path / "x.png"
    path.write_bytes(data)
    with pytest.raises(ImageError, match=words):
        decode_image(read_image_bytes(str(path), 10**7), max_pixels=10**6)


def test_missing_and_oversized_files(tmp_path):
    with pytest.raises(ImageError, match="missing file"):
        read_image_bytes(str(tmp_path / "nope.png"), 100)
    (tmp_path / "big.png").write_bytes(png(noise()))
    with pytest.raises(ImageError, match="max_image_bytes"):
        read_image_bytes(str(tmp_path / "big.png"), 100)


def test_phash_separates_duplicates_from_different_pictures():
    a = Image.new("RGB", (64, 64), "white")
    ImageDraw.Draw(a).ellipse((10, 10, 40, 40), fill="red")
    resized = a.resize((48, 48))
    b = Image.new("RGB", (64, 64), "white")
    ImageDraw.Draw(b).rectangle((30, 5, 60, 60), fill="blue")
    assert hamming(phash(a), phash(a.copy())) == 0
    assert hamming(phash(a), phash(resized)) <= 4
    assert hamming(phash(a), phash(b)) > 10
    assert hamming(phash(noise(0)), phash(noise(1))) > 10


def test_pixel_bombs_are_refused_from_the_header():
    from orchestrator.data.fuzz import declared_png

    huge = declared_png(100_000, 100_000)  # 30 GB of pixels declared in 300 bytes
    assert len(huge) < 1000
    with pytest.raises(ImageError, match="DecompressionBomb"):
        decode_image(huge, max_pixels=10**6)
    with pytest.raises(ImageError, match="3000x3000 px, more than max_image_pixels=1000000"):
        decode_image(declared_png(3000, 3000, rows=4), max_pixels=10**6)
    assert decode_image(declared_png(20, 10, rows=10), max_pixels=10**6).size == (20, 10)


def test_only_raster_formats_are_opened():
    """EPS would go to Ghostscript: not a format we open."""
    eps = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n"
    with pytest.raises(ImageError, match="not a recognised image format"):
        decode_image(eps, max_pixels=10**6)
