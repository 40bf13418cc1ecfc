"""Per-embedder decision thresholds (cosine similarity).

Cosine similarities of different embedders are not comparable, so each has its own default. Precedence for a
run: an explicit ``--threshold`` > the value calibrated and stored in the gallery (``facegallery calibrate`` or
``benchmark --store-threshold``) > the gallery-size model below (identify) > the fixed defaults below.

**Identification thresholds follow the gallery (issue 13).** identify compares a face with every enrolled person,
so the chance that a stranger clears a fixed threshold grows with the number of people N: if each person's
impostor score has an exponential upper tail, P(max of N > t) ~ N exp(-(t - mu) / beta), and the threshold that
keeps a target open-set false-positive identification rate (FPIR, the fraction of strangers named) is linear in
ln N and in ln FPIR. A person's centroid made of more photos also sits closer to everyone (the mean of m unit
vectors is shorter, so cosines to it are larger), hence a photos-per-person term. The model is::

    threshold = a + b ln(people) + c ln(min(photos per person, photos_cap)) - d ln(target FPIR)

``people``: enrolled people with vectors of the embedder; ``photos per person``: their mean number of enrolled
photos (augmented copies do not count: the centroid ignores them). a, b, c, d are fitted per embedder and per
aggregation on LFW ``peopleDevTrain.txt`` (never on the test split) by ``python -m benchmarks.open_set fit``:
stranger top-1 scores in galleries of 10-2000 people and of 1-8 photos per person, at FPIR 0.5-5 %. The fitted
numbers ship in ``open_set_thresholds.json`` next to this file, with their provenance. Photos per person are capped
at the largest value fitted (the term saturates: a centroid of many photos barely moves). An embedder without a
fitted model (facenet, resnet50: no real weights here) keeps its fixed default.

Fixed defaults (1:1 verification, and identification without a fitted model) and where they come from:
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

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from db import queries as q
from gallery.config import DEFAULT_TARGET_FPIR
from gallery.errors import InvalidInputError

DEFAULT_THRESHOLDS: dict[str, float] = {"dlib": 0.925, "facenet": 0.40, "resnet50": 0.80}
DEFAULT_MARGIN = 0.01
FALLBACK_THRESHOLD = 0.5
SIZE_MODEL_FILE = Path(__file__).with_name("open_set_thresholds.json")


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
    values = override.values() if isinstance(override, Mapping) else [] if override is None else [override]
    for v in values:
        if not isinstance(v, (int, float)) or not math.isfinite(v) or not -1.0 <= v <= 1.0:
            raise InvalidInputError(f"threshold {v!r} is not a cosine similarity: give a number from -1 to 1")
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


@dataclass(frozen=True)
class SizeModel:
    """The gallery-size threshold model of the module docstring, for one embedder and aggregation."""

    embedder: str
    aggregate: str
    a: float
    b: float
    c: float
    d: float
    photos_cap: float = 8.0
    flip: bool = True  # fitted on flip-averaged query descriptors (identify's default)
    weights_sha256: str | None = None  # the weights it was fitted with; other weights get the fixed default

    def threshold(self, people: int, photos_per_person: float, target_fpir: float = DEFAULT_TARGET_FPIR) -> float:
        if not 0.0 < target_fpir < 1.0:
            raise ValueError(f"target FPIR must be between 0 and 1, got {target_fpir}")
        n = max(1, int(people))
        m = min(max(1.0, float(photos_per_person)), self.photos_cap)
        t = self.a + self.b * math.log(n) + self.c * math.log(m) - self.d * math.log(target_fpir)
        return min(1.0, max(-1.0, t))

    def formula(self) -> str:
        return (f"{self.a:.4f} + {self.b:.4f} ln N + {self.c:.4f} ln min(m, {self.photos_cap:g}) "
                f"- {self.d:.4f} ln FPIR")

    def to_dict(self) -> dict:
        return {k: getattr(self, k) for k in ("embedder", "aggregate", "a", "b", "c", "d", "photos_cap", "flip")}


@lru_cache(maxsize=4)
def size_models(path: Path = SIZE_MODEL_FILE) -> dict[tuple[str, str], SizeModel]:
    """(embedder, aggregate) -> the shipped :class:`SizeModel` (empty when the file is missing)."""
    try:
        doc = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    fields = ("embedder", "aggregate", "a", "b", "c", "d", "photos_cap", "flip")
    return {(m["embedder"], m["aggregate"]): SizeModel(**{k: m[k] for k in fields},
                                                       weights_sha256=doc.get("weights_sha256"))
            for m in doc["models"]}


@dataclass(frozen=True)
class ThresholdChoice:
    """The threshold identify used for one embedder, and why: ``source`` is ``option`` (--threshold),
    ``calibrated`` (stored by calibrate), ``gallery size`` (the size model) or ``default`` (fixed)."""

    value: float
    source: str
    target_fpir: float | None = None
    people: int | None = None
    photos_per_person: float | None = None
    formula: str | None = None

    def reason(self) -> str:
        if self.source == "gallery size":
            return (f"gallery size: {self.people} people x {self.photos_per_person:.1f} photos, "
                    f"target FPIR {self.target_fpir:g}")
        return {"option": "--threshold", "calibrated": "calibrated (facegallery calibrate)",
                "default": "fixed default (no gallery-size model for this embedder and its weights)"
                }.get(self.source, self.source)

    def to_dict(self) -> dict:
        d = {"value": self.value, "source": self.source, "reason": self.reason()}
        if self.source == "gallery size":
            d.update(target_fpir=self.target_fpir, people=self.people,
                     photos_per_person=round(self.photos_per_person, 3), formula=self.formula)
        return d


def identify_thresholds(gallery, models: Sequence[str], override: float | Mapping[str, float] | None = None, *,
                        target_fpir: float = DEFAULT_TARGET_FPIR, aggregate: str = "centroid",
                        shapes: Mapping[str, tuple[int, float]] | None = None) -> dict[str, ThresholdChoice]:
    """model -> the identify threshold: ``override`` > calibrated > the gallery-size model > fixed default.

    ``shapes``: model -> (people, mean photos per person); read from the gallery when not given.
    """
    base = resolve_thresholds(gallery, models, override)
    out = {}
    for m in models:
        value, source = base[m]
        model = size_models().get((m, aggregate))
        if source != "default" or model is None or not _same_weights(gallery, m, model):
            out[m] = ThresholdChoice(value, source)
            continue
        people, photos = (shapes or {}).get(m) or gallery_shape(gallery, m)
        out[m] = ThresholdChoice(model.threshold(people, photos, target_fpir), "gallery size", target_fpir,
                                 people, photos, model.formula())
    return out


def _same_weights(gallery, model: str, size_model: SizeModel) -> bool:
    if size_model.weights_sha256 is None:
        return True
    with gallery.session() as s:
        return q.stored_weights(s, model) in (None, size_model.weights_sha256)


def gallery_shape(gallery, model: str) -> tuple[int, float]:
    """(people with vectors of ``model``, their mean number of enrolled photos)."""
    with gallery.session() as s:
        people, photos = q.people_and_photos(s, model)
    return people, (photos / people if people else 1.0)
