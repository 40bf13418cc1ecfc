"""Deterministic augmentation of face crops.

Detection runs once per photo; augmentation only ever sees the crop. Copy ``i`` of ``augment(crop, k, seed)`` draws
its parameters from its own generator seeded with ``(seed, i)``, so results never depend on the global RNG, on
``k``, or on what else ran before: ``augment(c, 5, s)[:3] == augment(c, 3, s)``. Use :func:`aug_seed` to derive a
per-photo seed from a run seed and the photo's sha256, so a photo gets the same copies in every run.

Chosen policy (the seed system's set, with rotation narrowed from +-20 to +-15 degrees): faces reaching us are
MTCNN crops of mostly upright heads; in-plane roll in real photos seldom exceeds ~15 degrees, and larger angles
mostly teach the embedding gallery views it will never be queried with, while bringing more synthetic border into
a tight crop. Rotation fills the corners by mirroring the crop (``reflect``) instead of black wedges, which an
embedder would otherwise learn as a cue.
"""
from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass

import numpy as np
from PIL import Image

_FILL_MODES = ("reflect", "edge", "constant")


@dataclass(frozen=True)
class AugmentConfig:
    """Probabilities and ranges of each augmentation; jitter factors are drawn like torchvision's ColorJitter."""

    flip_p: float = 0.5
    rotation_degrees: float = 15.0
    rotation_fill: str = "reflect"  # "reflect", "edge" or "constant" (black)
    brightness: float = 0.3
    contrast: float = 0.3
    saturation: float = 0.3
    hue: float = 0.05
    grayscale_p: float = 0.1
    blur_p: float = 0.2
    blur_kernel: tuple[int, int] = (3, 5)  # odd kernel sizes in this range, inclusive
    blur_sigma: tuple[float, float] = (0.1, 1.5)

    def __post_init__(self) -> None:
        for name in ("flip_p", "grayscale_p", "blur_p"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be a probability, got {getattr(self, name)}")
        if self.rotation_degrees < 0 or min(self.brightness, self.contrast, self.saturation) < 0:
            raise ValueError("rotation_degrees, brightness, contrast and saturation must be >= 0")
        if not 0.0 <= self.hue <= 0.5:
            raise ValueError(f"hue must be in [0, 0.5], got {self.hue}")
        if self.rotation_fill not in _FILL_MODES:
            raise ValueError(f"rotation_fill must be one of {_FILL_MODES}, got {self.rotation_fill!r}")
        low, high = self.blur_kernel
        if low < 1 or high < low or not any(k % 2 for k in range(low, high + 1)):
            raise ValueError(f"blur_kernel must be a range holding an odd size >= 1, got {self.blur_kernel}")
        if not 0.0 < self.blur_sigma[0] <= self.blur_sigma[1]:
            raise ValueError(f"blur_sigma must be 0 < low <= high, got {self.blur_sigma}")


@dataclass(frozen=True)
class _Params:
    flip: bool
    angle: float
    jitter_order: tuple[int, ...]  # indices into (brightness, contrast, saturation, hue)
    jitter: tuple[float, float, float, float]  # brightness, contrast, saturation factors and hue shift
    grayscale: bool
    blur_kernel: int | None
    blur_sigma: float


def aug_seed(base_seed: int, key: str) -> int:
    """A stable 63-bit seed from a run seed and a key such as a photo's sha256 (hashlib, not ``hash()``)."""
    digest = hashlib.sha256(f"{int(base_seed)}:{key}".encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") & ((1 << 63) - 1)


def augment(crop: Image.Image, k: int, seed: int, config: AugmentConfig = AugmentConfig()) -> list[Image.Image]:
    """``k`` augmented copies of an RGB or L face crop (never the original), same size and mode, deterministic."""
    if crop.mode not in ("RGB", "L"):
        raise ValueError(f"augment() expects an RGB or L crop, got mode {crop.mode}")
    if k < 0 or seed < 0:
        raise ValueError(f"k and seed must be >= 0, got k={k}, seed={seed}")
    return [_apply(crop, _sample(np.random.default_rng([seed, i]), config), config) for i in range(k)]


def _sample(rng: np.random.Generator, cfg: AugmentConfig) -> _Params:
    """Draw every parameter, used or not, in a fixed order so each copy's stream is stable."""
    flip = rng.random() < cfg.flip_p
    angle = float(rng.uniform(-cfg.rotation_degrees, cfg.rotation_degrees))
    order = tuple(int(i) for i in rng.permutation(4))
    factors = tuple(float(rng.uniform(max(0.0, 1 - a), 1 + a)) for a in (cfg.brightness, cfg.contrast, cfg.saturation))
    hue = float(rng.uniform(-cfg.hue, cfg.hue))
    grayscale = rng.random() < cfg.grayscale_p
    blur = rng.random() < cfg.blur_p
    kernels = [size for size in range(cfg.blur_kernel[0], cfg.blur_kernel[1] + 1) if size % 2]
    kernel = int(rng.choice(kernels))
    sigma = float(rng.uniform(*cfg.blur_sigma))
    return _Params(flip, angle, order, (*factors, hue), grayscale, kernel if blur else None, sigma)


def _apply(img: Image.Image, p: _Params, cfg: AugmentConfig) -> Image.Image:
    # Imported here: torchvision costs ~1.2 s of start-up (it imports torch._dynamo), which enroll --augment 0,
    # scan and identify never need.
    import torchvision.transforms.v2.functional as F

    out = F.horizontal_flip(img) if p.flip else img
    out = _rotate(out, p.angle, cfg.rotation_fill)
    ops = (F.adjust_brightness, F.adjust_contrast, F.adjust_saturation, F.adjust_hue)
    identity = (1.0, 1.0, 1.0, 0.0)  # skipping these keeps a disabled op exact (hue goes through lossy HSV)
    for index in p.jitter_order:
        if p.jitter[index] != identity[index] and (index < 2 or img.mode == "RGB"):  # no colour on grey
            out = ops[index](out, p.jitter[index])
    if p.grayscale:
        out = F.rgb_to_grayscale(out, num_output_channels=3 if img.mode == "RGB" else 1)
    if p.blur_kernel is not None:
        out = F.gaussian_blur(out, [p.blur_kernel, p.blur_kernel], [p.blur_sigma, p.blur_sigma])
    return out if out.mode == img.mode else out.convert(img.mode)


def _rotate(img: Image.Image, angle: float, fill: str) -> Image.Image:
    """Rotate about the centre (counter-clockwise degrees), same size; corners filled per ``fill``."""
    if angle == 0.0:
        return img.copy()
    if fill == "constant":
        return img.rotate(angle, resample=Image.Resampling.BILINEAR)
    width, height = img.size
    sine = abs(math.sin(math.radians(angle)))
    # A corner of the output reaches (h/2)*sin outside the source horizontally and (w/2)*sin vertically.
    pad_x, pad_y = math.ceil(height / 2 * sine) + 2, math.ceil(width / 2 * sine) + 2
    arr = np.asarray(img)
    pads = ((pad_y, pad_y), (pad_x, pad_x)) + ((0, 0),) * (arr.ndim - 2)
    padded = Image.fromarray(np.pad(arr, pads, mode=fill))
    turned = padded.rotate(angle, resample=Image.Resampling.BILINEAR)
    return turned.crop((pad_x, pad_y, pad_x + width, pad_y + height))
