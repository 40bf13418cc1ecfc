"""Per-embedder decision thresholds (cosine similarity).

Cosine similarities of different embedders are not comparable, so each has its own default. Precedence for a
run: an explicit ``--threshold`` > the value calibrated and stored in the gallery (``facegallery calibrate`` or
``benchmark --store-threshold``) > the defaults below.

Defaults and where they come from:
- dlib 0.925: measured here on LFW's official pairs with this project's pipeline (MTCNN box -> dlib 5-point chip
  -> L2-normalised 128-D): the 10-fold accuracy-maximising cut is about 0.902 and FAR 1e-3 is reached at 0.922.
  Identification against a gallery compares a face with every stored vector, so strangers score higher than in
  1:1 pairs: with 70 people (LFW seed-style protocol) FAR 1e-3 needs 0.9325 (no augmentation) or 0.9385 (4 copies).
  Run ``facegallery calibrate --store`` on a real gallery.
- facenet 0.40: the VGGFace2 model's usual Euclidean cut of about 1.1 on unit vectors (cos = 1 - d^2/2 = 0.395).
  Not measured here (the weights cannot be downloaded in this environment): calibrate on your data.
- resnet50 0.80: ImageNet features are not face features and all faces look alike to them; an uncalibrated
  guess. Calibrate before trusting it.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

from db import queries as q

DEFAULT_THRESHOLDS: dict[str, float] = {"dlib": 0.925, "facenet": 0.40, "resnet50": 0.80}
DEFAULT_MARGIN = 0.01
FALLBACK_THRESHOLD = 0.5


def setting_key(model: str) -> str:
    return f"threshold.{model}"


def stored_thresholds(gallery) -> dict[str, float]:
    with gallery.session() as s:
        raw = q.all_settings(s, "threshold.")
    return {k.split(".", 1)[1]: float(v) for k, v in raw.items()}


def store_thresholds(write, thresholds: Mapping[str, float]) -> None:
    """Store calibrated thresholds in a write (:meth:`gallery.store.Gallery.writing`)."""
    for model, value in thresholds.items():
        q.set_setting(write.session, setting_key(model), repr(float(value)))


def resolve_thresholds(
    gallery, models: Sequence[str], override: float | Mapping[str, float] | None = None
) -> dict[str, tuple[float, str]]:
    """model -> (threshold, where it came from: "option" | "calibrated" | "default")."""
    stored = stored_thresholds(gallery) if gallery is not None else {}
    out: dict[str, tuple[float, str]] = {}
    for m in models:
        if isinstance(override, Mapping) and m in override:
            out[m] = (float(override[m]), "option")
        elif isinstance(override, (int, float)):
            out[m] = (float(override), "option")
        elif m in stored:
            out[m] = (stored[m], "calibrated")
        else:
            out[m] = (DEFAULT_THRESHOLDS.get(m, FALLBACK_THRESHOLD), "default")
    return out
