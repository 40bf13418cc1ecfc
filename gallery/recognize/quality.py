"""Faces too poor to name: tiny or blurred faces get the ``low_quality`` status, not a name.

Three measurements of a detected face, none of them embedder-specific:

- ``face_px``: the shorter side of the detection box, in pixels of the photo;
- ``blur``: the no-reference blur measure of Crete-Roffet et al. ("The Blur Effect", SPIE 2007) on the face box
  resized to ``BLUR_SIZE`` pixels square in grey: how little the box's neighbour-pixel differences drop when it is
  blurred again (0: sharp, 1: already blurred); small faces blown up to that size count as blurred too;
- ``det_prob``: MTCNN's probability (not for whole-image fallback faces, which have none).

The cut-offs are measured on LFW ``peopleDevTrain`` photos, never on the test split
(``python -m benchmarks.open_set quality``): 460 probes (genuine ones of a 70-person gallery and strangers) downscaled
to 12-50 % of their size or blurred (Gaussian sigma 1.5-4), searched with identify's scoring and gallery-size
threshold. Faces under 24 px were named correctly at most 77 % of the time (97 % clean) and named wrongly up to 2 %
(never when clean); faces of 40 px or more with blur over 0.75 were named correctly 30-62 % of the time and wrongly
0.8-1.6 %, while under 0.75 the rate stays above 83 %. No clean LFW face is under 24 px and under 2 % have blur over
0.60. A detection-probability cut was measured too and is NOT used by default: after the two cuts above, 11 of
~2,170 degraded faces remain under 0.99 and none of them was named wrongly (3 of their 6 genuine faces were named
right), so it would only hide answers (0.3 % of clean LFW faces). Weakly detected faces are already left out by
identify's own floor, ``Settings.min_face_prob`` (0.90).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageFilter

BLUR_SIZE = 112


@dataclass(frozen=True)
class QualityRule:
    """A face is low quality when it is smaller, blurrier or less surely detected than these cut-offs."""

    min_face_px: float = 24.0
    max_blur: float = 0.75
    min_det_prob: float = 0.0  # measured, not useful beyond Settings.min_face_prob (module docstring)

    def problems(self, face_px: float, blur: float, det_prob: float | None) -> tuple[str, ...]:
        out = []
        if face_px < self.min_face_px:
            out.append(f"small face ({face_px:.0f} px < {self.min_face_px:g})")
        if blur > self.max_blur:
            out.append(f"blurred (blur {blur:.2f} > {self.max_blur:g})")
        if det_prob is not None and det_prob < self.min_det_prob:
            out.append(f"weak detection (p={det_prob:.3f} < {self.min_det_prob:g})")
        return tuple(out)


#: identify's rule (measured; see the module docstring). ``QualityRule(0, 1, 0)`` flags nothing.
DEFAULT_RULE = QualityRule()


def face_blur(img: Image.Image, box: tuple[float, float, float, float]) -> float:
    """Blur of the face box in [0, 1]: 0 sharp, 1 blurred (see the module docstring)."""
    x1, y1, x2, y2 = (int(round(v)) for v in box)
    grey = img.crop((x1, y1, max(x2, x1 + 1), max(y2, y1 + 1))).convert("L").resize((BLUR_SIZE, BLUR_SIZE),
                                                                                      Image.BILINEAR)
    sharp = np.asarray(grey, np.float32)
    again = np.asarray(grey.filter(ImageFilter.BoxBlur(4)), np.float32)
    blur = 0.0
    for axis in (0, 1):
        d_sharp = np.abs(np.diff(sharp, axis=axis))
        d_again = np.abs(np.diff(again, axis=axis))
        total = float(d_sharp.sum())
        lost = float(np.maximum(0.0, d_sharp - d_again).sum())
        blur = max(blur, (total - lost) / max(total, 1e-6))
    return blur
