"""Crop geometry shared by the embedders.

Every embedder turns a detected face box into its own square crop here, so enrolment, identification,
classifier heads and benchmarks all see exactly the same pixels. Boxes are ``(x1, y1, x2, y2)`` floats in
original image coordinates. Crops that reach past the image border are padded with black (PIL's ``crop``
does that) instead of being clamped, because clamping squeezes the face and changes its aspect ratio.
"""
from __future__ import annotations

import logging

from PIL import Image

logger = logging.getLogger(__name__)

Box = tuple[float, float, float, float]


def square_box(box: Box) -> Box:
    """The square with side ``max(w, h)`` centred on ``box``."""
    x1, y1, x2, y2 = box
    side = max(x2 - x1, y2 - y1)
    cx, cy = (x1 + x2) / 2.0, (y1 + y2) / 2.0
    return (cx - side / 2.0, cy - side / 2.0, cx + side / 2.0, cy + side / 2.0)


def inner_square_box(box: Box) -> Box:
    """The square with side ``min(w, h)`` centred on ``box`` (a centre crop, no padding)."""
    x1, y1, x2, y2 = box
    side = min(x2 - x1, y2 - y1)
    cx, cy = (x1 + x2) / 2.0, (y1 + y2) / 2.0
    return (cx - side / 2.0, cy - side / 2.0, cx + side / 2.0, cy + side / 2.0)


def expand_box(box: Box, fraction: float) -> Box:
    """Grow ``box`` by ``fraction`` of its width/height in total, half on each side."""
    x1, y1, x2, y2 = box
    dx, dy = (x2 - x1) * fraction / 2.0, (y2 - y1) * fraction / 2.0
    return (x1 - dx, y1 - dy, x2 + dx, y2 + dy)


def facenet_margin_box(box: Box, image_size: int = 160, margin: int = 20) -> Box:
    """Square box plus facenet-pytorch's margin.

    ``extract_face`` expresses the margin in pixels of the *output* crop: ``margin`` px at ``image_size``
    means ``margin * side / (image_size - margin)`` px in the source image, so the detected face fills
    ``image_size - margin`` output pixels whatever its resolution.
    """
    sq = square_box(box)
    side = sq[2] - sq[0]
    return expand_box(sq, margin / (image_size - margin)) if side > 0 else sq


def crop_square(img: Image.Image, box: Box, size: int) -> Image.Image:
    """Crop ``box`` (rounded to whole pixels, black outside the image) and resize to ``size`` x ``size`` RGB."""
    x1, y1, x2, y2 = (int(round(v)) for v in box)
    if x2 <= x1 or y2 <= y1:
        raise ValueError(f"empty crop box {box}")
    rgb = img if img.mode == "RGB" else img.convert("RGB")
    return rgb.crop((x1, y1, x2, y2)).resize((size, size), Image.BILINEAR)


def clamp_box_int(box: Box, width: int, height: int) -> tuple[int, int, int, int]:
    """``box`` rounded to integer pixels and clipped to the image (inclusive right/bottom, like dlib)."""
    x1, y1, x2, y2 = (int(round(v)) for v in box)
    x1, y1 = min(max(x1, 0), width - 1), min(max(y1, 0), height - 1)
    x2, y2 = min(max(x2, x1 + 1), width - 1), min(max(y2, y1 + 1), height - 1)
    return x1, y1, x2, y2
