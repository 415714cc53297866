"""Image bytes in, checked PIL images out; and the perceptual hash used for within-record dedupe."""

from __future__ import annotations

import io
import os
import stat
import warnings

import numpy as np
from PIL import Image, UnidentifiedImageError


class ImageError(ValueError):
    """An image that cannot be used; the message is the reject reason."""


#: raster formats PIL may open (no EPS/PS, which PIL hands to Ghostscript, nor other exotic plugins)
FORMATS = ("PNG", "JPEG", "GIF", "WEBP", "BMP", "TIFF", "PPM")
_KINDS = ((stat.S_ISFIFO, "FIFO"), (stat.S_ISCHR, "character device"), (stat.S_ISBLK, "block device"),
          (stat.S_ISSOCK, "socket"), (stat.S_ISDIR, "directory"))


def read_image_bytes(ref: str | bytes, max_bytes: int) -> bytes:
    """The encoded bytes of an image reference (local path or fsspec URI); ImageError if unreadable."""
    if isinstance(ref, bytes):
        data = ref
    else:
        try:
            data = _read(ref, max_bytes)
        except FileNotFoundError:
            raise ImageError(f"missing file {ref}") from None
        except OSError as e:
            raise ImageError(f"cannot read {ref}: {e}") from None
    if len(data) == 0:
        raise ImageError(f"zero-size image {ref if isinstance(ref, str) else '(inline bytes)'}")
    if len(data) > max_bytes:
        raise ImageError(f"image of {len(data)} bytes exceeds max_image_bytes={max_bytes}")
    return data


def not_regular(mode: int) -> str | None:
    """What a file is when it is not a regular file (FIFO, device, socket, directory); None for a regular one."""
    if stat.S_ISREG(mode):
        return None
    return next((name for test, name in _KINDS if test(mode)), "special file")


def _read(ref: str, max_bytes: int) -> bytes:
    if "://" not in ref:
        kind = not_regular(os.stat(ref).st_mode)  # before opening: opening a FIFO blocks, a device may act
        if kind:
            raise ImageError(f"{ref}: not a regular file: {kind}")
        fd = os.open(ref, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)  # swapped for a FIFO since: no wait
        with os.fdopen(fd, "rb") as f:
            kind = not_regular(os.fstat(fd).st_mode)
            if kind:
                raise ImageError(f"{ref}: not a regular file: {kind}")
            return f.read(max_bytes + 1)
    import fsspec

    with fsspec.open(ref, "rb") as f:
        return f.read(max_bytes + 1)


def decode_image(data: bytes, max_pixels: int, name: str = "image") -> Image.Image:
    """Encoded bytes -> a fully decoded RGB image. Size is checked from the header before decoding."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(data), formats=FORMATS)
            w, h = im.size
            if w * h > max_pixels:
                raise ImageError(f"{name} is {w}x{h} px, more than max_image_pixels={max_pixels}")
            im.load()
    except ImageError:
        raise
    except UnidentifiedImageError:
        raise ImageError(f"{name} cannot be decoded: not a recognised image format") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ImageError(f"{name} cannot be decoded: {type(e).__name__}: {str(e)[:120]}") from None
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        kind = "truncated" if "truncated" in str(e) or isinstance(e, EOFError) else "corrupt"
        raise ImageError(f"{name} is {kind}: {type(e).__name__}: {str(e)[:120]}") from None
    if im.size[0] < 1 or im.size[1] < 1:
        raise ImageError(f"{name} has zero width or height")
    return im.convert("RGB")


_DCT_N = 32


def _dct_matrix(n: int) -> np.ndarray:
    k = np.arange(n)[:, None]
    return np.cos(np.pi * (2 * np.arange(n)[None, :] + 1) * k / (2 * n))


_DCT = _dct_matrix(_DCT_N)


def phash(image: Image.Image) -> int:
    """64-bit DCT perceptual hash (grey 32x32, low 8x8 frequencies without DC, above-median bits)."""
    grey = np.asarray(image.convert("L").resize((_DCT_N, _DCT_N), Image.BILINEAR), dtype=np.float64)
    freq = (_DCT @ grey @ _DCT.T)[:8, :8].flatten()[1:]  # 63 coefficients
    bits = freq > np.median(freq)
    return int(sum(1 << i for i, b in enumerate(bits) if b))


def hamming(a: int, b: int) -> int:
    return (a ^ b).bit_count()
