"""The one image loader of facegallery.

Every photo, whether it comes from a folder scan, the CLI or a web upload, goes through :func:`load_image`: open
with Pillow (restricted to ordinary photo formats, so an EPS renamed ``.jpg`` never reaches Ghostscript), refuse
decompression bombs from the header before any pixel is decoded, force a full decode so truncated files fail here
and not deep inside a detector, apply the EXIF orientation, and convert whatever mode Pillow produced to RGB.
Every failure becomes an :class:`ImageLoadError` carrying the path and a short human reason.
"""
from __future__ import annotations

import hashlib
import io
import logging
import os
import re
import stat
import warnings
from typing import BinaryIO, Union

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

log = logging.getLogger(__name__)

#: Refuse images with more pixels than this (Pillow's own default warning limit, about 89.5 megapixels), so an
#: image we accept never triggers Pillow's DecompressionBombWarning.
MAX_PIXELS = 89_478_485
# Pillow warns (instead of failing) between its limit and twice that, inside Image.open, before our own size check
# can run. Make that warning an error so a bomb is always refused with a reason and never prints a warning.
warnings.filterwarnings("error", category=Image.DecompressionBombWarning)
#: Refuse images whose shorter side is below this: nothing useful can be detected or embedded in them.
MIN_SIDE = 16

# Suffix -> Pillow format. Only formats real photo collections use; Pillow can read many more (EPS, PSD, FITS..).
_EXTENSION_FORMATS = {
    ".jpg": "JPEG", ".jpeg": "JPEG", ".jpe": "JPEG", ".jfif": "JPEG", ".mpo": "MPO",
    ".png": "PNG", ".apng": "PNG", ".webp": "WEBP", ".bmp": "BMP", ".dib": "DIB", ".gif": "GIF",
    ".tif": "TIFF", ".tiff": "TIFF", ".pgm": "PPM", ".ppm": "PPM", ".pbm": "PPM", ".pnm": "PPM", ".pfm": "PPM",
    ".tga": "TGA", ".avif": "AVIF", ".jp2": "JPEG2000", ".j2k": "JPEG2000", ".jpx": "JPEG2000",
}
Image.init()
# Phone JPEGs often open as MPO, so it is always tried; formats this Pillow build lacks are left out.
_FORMATS = tuple(f for f in dict.fromkeys([*_EXTENSION_FORMATS.values()]) if f in Image.OPEN)
#: Lower-case file suffixes :func:`load_image` accepts (restricted to what this Pillow build can decode).
IMAGE_EXTENSIONS = frozenset(ext for ext, fmt in _EXTENSION_FORMATS.items() if fmt in _FORMATS)

Source = Union[str, os.PathLike, bytes, bytearray, memoryview, BinaryIO]


class ImageLoadError(Exception):
    """An image could not be loaded; ``path`` says which and ``reason`` why."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason

    def __reduce__(self):
        return type(self), (self.path, self.reason)


def load_image(source: Source, *, max_pixels: int = MAX_PIXELS, min_side: int = MIN_SIDE,
               name: str | None = None) -> Image.Image:
    """Load ``source`` (path, bytes or binary file object) as a fully decoded, upright RGB image.

    ``name`` labels the image in errors (e.g. an upload's file name). Raises :class:`ImageLoadError` for every
    failure; a ``TypeError`` only for a source of the wrong type (a programming error, not a bad file).
    """
    label = _label(source, name)
    if isinstance(source, (str, os.PathLike)):
        with _open_path(source, label) as fh:
            return _load_from(fh, label, max_pixels, min_side)
    if isinstance(source, (bytes, bytearray, memoryview)):
        if len(source) == 0:
            raise ImageLoadError(label, "empty file")
        return _load_from(io.BytesIO(source), label, max_pixels, min_side)
    if hasattr(source, "read"):
        return _load_from(_seekable(source, label), label, max_pixels, min_side)
    raise TypeError(f"load_image() needs a path, bytes or a binary file object, not {type(source).__name__}")


def _label(source: object, name: str | None) -> str:
    if name is not None:
        return str(name)
    if isinstance(source, (str, os.PathLike)):
        return os.fspath(source)
    if isinstance(source, (bytes, bytearray, memoryview)):
        return "<bytes>"
    file_name = getattr(source, "name", None)
    return file_name if isinstance(file_name, str) else "<stream>"


def _open_path(path: str | os.PathLike, label: str) -> BinaryIO:
    try:
        st = os.stat(path)
        if stat.S_ISDIR(st.st_mode):
            raise ImageLoadError(label, "is a directory")
        if not stat.S_ISREG(st.st_mode):  # a FIFO or device would block or never end
            raise ImageLoadError(label, "not a regular file")
        if st.st_size == 0:
            raise ImageLoadError(label, "empty file")
        return open(path, "rb")
    except ImageLoadError:
        raise
    except (FileNotFoundError, NotADirectoryError):
        raise ImageLoadError(label, "no such file") from None
    except PermissionError:
        raise ImageLoadError(label, "permission denied") from None
    except IsADirectoryError:
        raise ImageLoadError(label, "is a directory") from None
    except (OSError, ValueError) as exc:  # ValueError: embedded NUL byte in the path
        raise ImageLoadError(label, _short(exc)) from None


def _seekable(fp: BinaryIO, label: str) -> BinaryIO:
    """Pillow needs seek(); copy a pure stream into memory. Also detect empty input before Pillow guesses."""
    try:
        if not (hasattr(fp, "seek") and getattr(fp, "seekable", lambda: True)()):
            fp = io.BytesIO(fp.read())
        pos = fp.tell()
        first = fp.read(1)
        fp.seek(pos)
    except (OSError, ValueError) as exc:  # closed file, unreadable stream
        raise ImageLoadError(label, f"unreadable stream ({_short(exc)})") from None
    if not first:
        raise ImageLoadError(label, "empty file")
    return fp


def _load_from(fp: BinaryIO, label: str, max_pixels: int, min_side: int) -> Image.Image:
    try:
        with Image.open(fp, formats=_FORMATS) as im:
            _check_size(im.size, label, max_pixels, min_side)
            im.load()  # force the full decode of frame 0 (multi-frame files open on their first frame)
            upright = _exif_transpose(im, label)
        return to_rgb(upright)
    except ImageLoadError:
        raise
    except Exception as exc:  # Pillow and its codecs raise many types; callers get exactly one.
        raise ImageLoadError(label, _reason(exc, max_pixels)) from exc


def _check_size(size: tuple[int, int], label: str, max_pixels: int, min_side: int) -> None:
    width, height = size
    if width * height > max_pixels:
        raise ImageLoadError(label, f"decompression bomb: {width * height} pixels > limit {max_pixels}")
    if min(width, height) < min_side:
        raise ImageLoadError(label, f"image too small ({width}x{height})")


def _exif_transpose(im: Image.Image, label: str) -> Image.Image:
    try:
        return ImageOps.exif_transpose(im)
    except Exception as exc:  # a damaged EXIF block should not lose an otherwise good photo
        log.warning("%s: ignoring unreadable EXIF orientation (%s)", label, _short(exc))
        return im.copy()


_BOMB_MESSAGE = re.compile(r"\((\d+) pixels\) exceeds limit of (\d+)")


def _reason(exc: Exception, max_pixels: int) -> str:
    """A short human reason for an exception raised while opening or decoding."""
    message = str(exc)
    lowered = message.lower()
    if isinstance(exc, UnidentifiedImageError):
        return "not an image"
    if isinstance(exc, (Image.DecompressionBombError, Image.DecompressionBombWarning)):
        # Pillow's guard fires inside Image.open, before ours; report the smaller (binding) limit.
        found = _BOMB_MESSAGE.search(message)
        if not found:
            return "decompression bomb"
        return f"decompression bomb: {found[1]} pixels > limit {min(int(found[2]), max_pixels)}"
    if isinstance(exc, EOFError) or "truncated" in lowered or "broken data stream" in lowered:
        return "truncated file"
    if isinstance(exc, MemoryError):
        return "out of memory while decoding"
    return f"corrupt image ({_short(exc)})"


def _short(exc: BaseException, limit: int = 100) -> str:
    text = str(exc) or type(exc).__name__
    if isinstance(exc, OSError) and exc.strerror:
        text = exc.strerror
    return text if len(text) <= limit else text[: limit - 3] + "..."


def to_rgb(img: Image.Image) -> Image.Image:
    """Convert any Pillow mode to RGB: transparency composited on white, 16-bit/float data scaled to 8 bits."""
    if img.mode in ("I", "F") or img.mode.startswith("I;16"):
        return Image.fromarray(_wide_to_uint8(img)).convert("RGB")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La") or img.has_transparency_data:
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return img if img.mode == "RGB" else img.convert("RGB")


def _wide_to_uint8(img: Image.Image) -> np.ndarray:
    """Scale 16-bit, 32-bit integer or float grey to 0..255 by its nominal range, min-max only as a last resort.

    Integer data is scaled by the range its values actually use: values in 0..255 are kept (a 16-bit file that
    holds 8-bit values would otherwise load black), others by the smallest bit depth that holds them (12-bit
    data 0..4095 is divided by 4095 / 255, full 16-bit by 257). Float data in 0..1 is taken as normalised;
    anything else (negative values, beyond 16 bits) is min-max stretched.
    """
    data = np.asarray(img).astype(np.float64)
    low, high = (float(data.min()), float(data.max())) if data.size else (0.0, 0.0)
    if img.mode == "F" and low >= 0.0 and high <= 1.0:
        scaled = data * 255.0
    elif low >= 0.0 and high <= 255.0:
        scaled = data
    elif low >= 0.0 and high <= 65535.0:
        ceiling = float(2 ** int(np.ceil(np.log2(high + 1.0))) - 1)  # 511, 1023, ... 65535
        scaled = data * (255.0 / ceiling)
    else:
        scaled = (data - low) * (255.0 / (high - low)) if high > low else np.zeros_like(data)
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def downscale(img: Image.Image, max_side: int) -> tuple[Image.Image, float]:
    """Shrink ``img`` so its longer side is ``max_side``; returns ``(resized, scale)`` with original = resized / scale.

    Returns the image itself and ``1.0`` when it is already small enough.
    """
    if max_side <= 0:
        raise ValueError(f"max_side must be positive, got {max_side}")
    width, height = img.size
    longest = max(width, height)
    if longest <= max_side:
        return img, 1.0
    scale = max_side / longest
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return img.resize(size, Image.Resampling.LANCZOS), scale


def check_image_file(path: str | os.PathLike, label: str | None = None) -> int:
    """Size of ``path`` when it is a non-empty regular file we may open, else the :class:`ImageLoadError` that
    :func:`load_image` would raise. Callers that read a file before decoding it (enroll hashes every photo) call
    this first, so a FIFO or a device named ``x.jpg`` is refused instead of blocking or never ending."""
    with _open_path(path, os.fspath(path) if label is None else label) as fh:
        return os.fstat(fh.fileno()).st_size


def file_sha256(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file's bytes, read in ``chunk``-sized pieces."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()
